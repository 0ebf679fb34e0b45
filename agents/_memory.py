"""Agent memory: one namespace per agent in the tenant's KV bucket, written only by the coordinator.

An agent proposes a write with a ``memory_write`` envelope addressed to itself
whose JSON payload is :class:`MemoryWrite`; the coordinator audits it (taint,
namespace, revision) and applies it with compare-and-set. Every stored value
is a :class:`MemoryValue` (the value, and the envelope, writer and effective
taint it came from) signed by the coordinator's key for that key; a value that
is not is foreign (:mod:`agents._signed_value`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import msgspec

from trustbus.agents._answers import FIRST_PAUSE_S, LONGEST_PAUSE_S, read_answer
from trustbus.agents._memory_outcomes import MemoryOutcome, check_outcome, outcome_key, outcome_of
from trustbus.agents._signed_value import signer
from trustbus.bus import Envelope, TransientError, TransportError, decode_json, subjects

if TYPE_CHECKING:  # the pure decide() imports this module: it must not load the transport
    from trustbus.bus import Bucket, Bus, KeyringStore
from trustbus.bus import MemoryWrite, decode_memory_write, open_memory_value

log = logging.getLogger("trustbus.agent")

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


def memory_key(agent: str, key: str) -> str:
    """The key of the memory bucket that holds ``agent``'s ``key``."""
    return f"{agent}.{key}"


def checkpoint_key(agent: str) -> str:
    """The key of the memory bucket that holds ``agent``'s checkpoint (a key no memory write may name)."""
    return memory_key(agent, "checkpoint")


def memory_bucket(bus: Bus, *, direct: bool) -> Bucket:
    """The tenant's memory bucket; ``direct`` for an agent, whose permissions allow only direct gets of its keys."""
    return bus.bucket(subjects.memory_bucket(bus.tenant), direct=direct)


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
        bucket: Bucket,
        agent_id: str,
        send: Sender,
        *,
        keys: KeyringStore,
        on_read: Callable[[tuple[str, ...]], None] = lambda taint: None,
        on_foreign: ForeignRecorder | None = None,
    ) -> None:
        """``bucket``: the tenant's memory bucket, read with direct gets (:func:`memory_bucket`). ``send`` proposes
        a ``memory_write`` envelope (the handler context's send); ``keys``: the tenant's keyring, which says whose
        key signed a value; ``on_read`` is given the taint of every value read (the context adds it to what the
        handler sends from then on); ``on_foreign`` records a value that is not one the coordinator wrote."""  # noqa: D205, D209
        self._bucket = bucket
        self._agent = agent_id
        self._send = send
        self._keys = keys
        self._on_read = on_read
        self._on_foreign = on_foreign

    async def get(self, key: str) -> MemoryEntry | None:
        """The current value of ``key`` and its revision (the revision to expect when writing it).

        The value's effective taint is passed to ``on_read``: reading what
        tainted content wrote taints the reader. A foreign value (not a value
        a coordinator signed for this key: an empty message the server stored
        there, bytes that do not parse, a value nobody signed, one signed by
        another role's key or copied from another key) is recorded once and
        reads as ``None`` at its revision, so the agent carries on and can
        write over it.
        """
        name = memory_key(self._agent, key)
        try:
            entry = await self._bucket.get(name)
        except TransportError as exc:  # the server is away: retry the delivery later
            raise TransientError(f"cannot read memory key {key!r}: {exc}") from exc
        if entry is None:
            return None
        try:
            keyring = await self._keys.knowing(signer(entry.value))
        except TransportError as exc:
            raise TransientError(f"cannot read the keyring for memory key {key!r}: {exc}") from exc
        try:
            stored = open_memory_value(entry.value, keyring=keyring, key=name, stored_ns=entry.stored_ns)
            value = decode_json(stored.value)
        except (msgspec.DecodeError, ValueError) as exc:
            if self._on_foreign is not None:
                await self._on_foreign(
                    self._bucket.subject(name), entry.revision, entry.value, entry.headers, f"not a memory value: {exc}"
                )
            return MemoryEntry(key=key, value=None, revision=entry.revision, effective_taint=(), envelope_id="")
        self._on_read(stored.effective_taint)  # what was steered into memory steers whoever reads it
        return MemoryEntry(
            key=key,
            value=value,
            revision=entry.revision,
            effective_taint=stored.effective_taint,
            envelope_id=stored.envelope_id,
        )

    async def write(self, key: str, value: object, *, expected_revision: int) -> Envelope:
        """Propose ``key = value`` if the key is still at ``expected_revision`` (0: not yet written).

        Returns at once with the envelope proposed; the coordinator applies it, or
        refuses it as ``stale_revision``, ``tainted_memory_write`` (quarantined
        or held, per the policy) or ``foreign_namespace``: :meth:`outcome` says which.
        """
        if not KEY_PATTERN.fullmatch(key) or key in RESERVED_KEYS:
            raise ValueError(f"memory key {key!r}: use 1-64 of A-Z a-z 0-9 _ - (and not {sorted(RESERVED_KEYS)})")
        payload = {"key": key, "value": value, "expected_revision": expected_revision}
        return await self._send((self._agent,), payload, kind="memory_write")

    async def outcome(
        self, envelope: Envelope, *, timeout_s: float = 10.0, wait_for_operator: bool = False
    ) -> MemoryOutcome:
        """What the coordinator did with the write ``envelope`` (as :meth:`write` returned it), once it has decided.

        Reads the coordinator's signed answer under ``<agent>.written.<key>`` until
        it is about ``envelope`` (:mod:`agents._memory_outcomes`), backing off to
        once a second. A write held for an operator is returned as ``held`` at
        once (a person may take hours), unless ``wait_for_operator``: then the
        operator's answer is awaited too, within ``timeout_s``. A refused or held
        write is logged as a warning naming the key and the reason. Anything under
        the key that no coordinator signed about this write is logged once and
        ignored.

        Raises:
            ValueError: ``envelope`` is not a memory write of this agent's.
            TimeoutError: no answer (or, ``wait_for_operator``, no final one) within ``timeout_s``.
            TransientError: the bucket could not be read.
        """
        write = parse_write(envelope.payload) if envelope.kind == "memory_write" else None
        if write is None or envelope.sender != self._agent:
            raise ValueError(f"{envelope.kind} {envelope.id} is not a memory write of {self._agent}")
        key = outcome_key(self._agent, write.key)
        check = functools.partial(check_outcome, agent=self._agent, envelope_id=envelope.id)
        reported: set[str] = set()
        pause = FIRST_PAUSE_S
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    decision = await read_answer(self._bucket, self._keys, key, check, reported)
                    if decision is not None:
                        outcome = outcome_of(decision, write.key)
                        if outcome.status not in reported:  # revisions are reported there too: digits
                            reported.add(outcome.status)
                            self._tell(outcome)
                        if outcome.status != "held" or not wait_for_operator:
                            return outcome
                    await asyncio.sleep(pause)  # no event reaches an agent for this key: read it again
                    pause = min(pause * 2, LONGEST_PAUSE_S)
        except TransportError as exc:
            raise TransientError(f"cannot read the outcome of memory write {envelope.id}: {exc}") from exc

    def _tell(self, outcome: MemoryOutcome) -> None:
        if outcome.accepted:
            return
        log.warning(
            "memory write held for an operator" if outcome.status == "held" else "memory write refused",
            extra={"key": outcome.key, "reason": outcome.reason, "envelope_id": outcome.envelope_id},
        )
