"""Agent memory: one namespace per agent in the tenant's KV bucket, written only by the coordinator.

An agent proposes a write with a ``memory_write`` envelope addressed to itself
whose JSON payload is :class:`MemoryWrite`; the coordinator audits it (taint,
namespace, revision) and applies it with compare-and-set. Every stored value
is a :class:`MemoryValue`: the value, and the envelope, writer and effective
taint it came from.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from trustbus.bus import Envelope, TransientError, decode_json, subjects
from trustbus.bus._records import MemoryWrite, decode_memory_write
from trustbus.bus._records import decode_memory_value as decode_value

if TYPE_CHECKING:  # the pure parse_write (used by decide) must not load nats-py
    from nats.js import JetStreamContext

Sender = Callable[..., Awaitable[Envelope]]
# Records a value that is not what the key holds: (subject, revision, body, headers, detail).
ForeignRecorder = Callable[[str, int, bytes, "Mapping[str, str] | None", str], Awaitable[None]]
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESERVED_KEYS = frozenset({"checkpoint"})


def parse_write(payload: bytes) -> MemoryWrite | None:
    """The write a ``memory_write`` payload proposes, or None if it is not a valid one."""
    try:
        write = decode_memory_write(payload)
    except (msgspec.DecodeError, ValueError):
        return None
    if not KEY_PATTERN.fullmatch(write.key) or write.key in RESERVED_KEYS or write.expected_revision < 0:
        return None
    return write


def kv_subject(bucket: str, agent: str, key: str) -> str:
    """The KV subject of ``agent``'s ``key``."""
    return f"$KV.{bucket}.{agent}.{key}"


class MemoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A value read back from an agent's namespace."""

    key: str
    value: object
    revision: int
    effective_taint: tuple[str, ...]
    envelope_id: str


class Memory:
    """An agent's view of its own namespace: read directly, write through the coordinator."""

    def __init__(
        self,
        js: JetStreamContext,
        tenant: str,
        agent_id: str,
        send: Sender,
        on_read: Callable[[tuple[str, ...]], None] = lambda taint: None,
        on_foreign: ForeignRecorder | None = None,
    ) -> None:
        """``send`` proposes a ``memory_write`` envelope (the handler context's send); ``on_read`` is given the
        taint of every value read (the context adds it to what the handler sends from then on); ``on_foreign``
        records a value that is not one the coordinator wrote."""  # noqa: D205, D209
        self._js = js
        self._bucket = subjects.memory_bucket(tenant)
        self._agent = agent_id
        self._send = send
        self._on_read = on_read
        self._on_foreign = on_foreign

    async def get(self, key: str) -> MemoryEntry | None:
        """The current value of ``key`` and its revision (the revision to expect when writing it).

        The value's effective taint is passed to ``on_read``: reading what
        tainted content wrote taints the reader. A foreign value (not a value
        the coordinator wrote: an empty message the server stored there, bytes
        that do not parse) is recorded once and reads as ``None`` at its
        revision, so the agent carries on and can write over it.
        """
        import nats.errors
        import nats.js.errors

        try:
            raw = await self._js.get_last_msg(
                f"KV_{self._bucket}", kv_subject(self._bucket, self._agent, key), direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:  # the server is away: retry the delivery later
            raise TransientError(f"cannot read memory key {key!r}: {exc}") from exc
        subject = kv_subject(self._bucket, self._agent, key)
        try:
            stored = decode_value(raw.data or b"")
            value = decode_json(stored.value)
        except (msgspec.DecodeError, ValueError) as exc:
            if self._on_foreign is not None:
                await self._on_foreign(
                    subject, raw.seq or 0, raw.data or b"", raw.headers, f"not a memory value: {exc}"
                )
            return MemoryEntry(key=key, value=None, revision=raw.seq or 0, effective_taint=(), envelope_id="")
        self._on_read(stored.effective_taint)  # what was steered into memory steers whoever reads it
        return MemoryEntry(
            key=key,
            value=value,
            revision=raw.seq or 0,
            effective_taint=stored.effective_taint,
            envelope_id=stored.envelope_id,
        )

    async def write(self, key: str, value: object, *, expected_revision: int) -> Envelope:
        """Propose ``key = value`` if the key is still at ``expected_revision`` (0: not yet written).

        The coordinator applies it, or refuses it as ``stale_revision``,
        ``tainted_memory_write`` (quarantined or held, per the policy) or
        ``foreign_namespace``; the decision log says which.
        """
        if not KEY_PATTERN.fullmatch(key) or key in RESERVED_KEYS:
            raise ValueError(f"memory key {key!r}: use 1-64 of A-Z a-z 0-9 _ - (and not {sorted(RESERVED_KEYS)})")
        payload = {"key": key, "value": value, "expected_revision": expected_revision}
        return await self._send((self._agent,), payload, kind="memory_write")
