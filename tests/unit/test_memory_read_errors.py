"""A memory read that fails in transport is a transient error (the delivery is retried), not a handler bug."""

from __future__ import annotations

import nats.errors
import pytest

from trustbus.agents._memory import Memory
from trustbus.bus import TransientError
from trustbus.bus._bucket import NatsBucket


class _Unreachable:
    """Stands in for a JetStream context whose server is away (the only behaviour under test)."""

    async def get_last_msg(self, *args: object, **kwargs: object) -> None:
        raise nats.errors.TimeoutError


async def test_a_read_the_server_did_not_answer_is_retried_not_quarantined() -> None:
    async def send(*args: object, **kwargs: object) -> None:
        raise AssertionError("a read sends nothing")

    memory = Memory(NatsBucket(_Unreachable(), "tb_mem_acme", direct=True), "alice", send, keys=None)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="cannot read memory key 'notes'"):
        await memory.get("notes")
