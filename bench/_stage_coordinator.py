"""The coordinator of ``bench/mediated.py --stages``: ``python -m bench._stage_coordinator coordinator run ...``.

It runs ``trustbus coordinator run`` unchanged but for a note of when each
bench envelope's group started being mediated and when its forward was
published: one JSON line ``[phase, index, stored_ns, group_ns, forward_ns]``
per envelope (``stored_ns``: the server's store time of the outbox copy), in
``$BENCH_STAGES_OUT/coordinator-<pid>.jsonl``, written and flushed before the
forward is published (so it is there once B has the envelope). Envelopes whose
payload is not a bench payload are not noted. The note costs a few
microseconds of the coordinator's time per envelope.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from trustbus.agents import _coordinator, _forwarding
from trustbus.cli import main

STAGES_ENV = "BENCH_STAGES_OUT"


class StageNotes:
    """When each bench envelope's group started, until its forward is published and its line written."""

    def __init__(self, out: Path) -> None:
        self._file = out.open("a", encoding="utf-8")
        self._started: dict[str, tuple[str, int, int, int]] = {}  # envelope id -> phase, index, stored, group

    def group_started(self, deliveries: list[Any]) -> None:
        now = time.time_ns()
        for delivery in deliveries:
            fields = _bench_fields(delivery.envelope.payload)
            if fields is not None:
                self._started[delivery.envelope.id] = (*fields, delivery.stored_ns, now)

    def forwarding(self, envelope_id: str) -> None:
        started = self._started.pop(envelope_id, None)
        if started is not None:
            self._file.write(json.dumps([*started, time.time_ns()]) + "\n")
            self._file.flush()


def _bench_fields(payload: bytes) -> tuple[str, int] | None:
    """The phase and index of a bench payload (bench._records.make_payload), or None."""
    try:
        fields = json.loads(payload)
        return str(fields["p"]), int(fields["i"])
    except (ValueError, KeyError, TypeError):
        return None


def wrap(notes: StageNotes) -> None:
    """Note group starts and forwards around the coordinator's own methods."""
    group_once: Callable[..., Awaitable[Any]] = _coordinator.Coordinator._start_group
    start: Callable[..., Awaitable[Any]] = _forwarding.Forwarder.start

    @functools.wraps(group_once)
    async def noted_group(self: Any, group: list[Any]) -> Any:
        notes.group_started(group)
        return await group_once(self, group)

    @functools.wraps(start)
    async def noted_start(self: Any, envelope: Any, *args: Any, **kwargs: Any) -> Any:
        notes.forwarding(envelope.id)
        return await start(self, envelope, *args, **kwargs)

    _coordinator.Coordinator._start_group = noted_group  # type: ignore[method-assign]
    _forwarding.Forwarder.start = noted_start  # type: ignore[method-assign]


if __name__ == "__main__":
    wrap(StageNotes(Path(os.environ[STAGES_ENV]) / f"coordinator-{os.getpid()}.jsonl"))
    sys.exit(main())
