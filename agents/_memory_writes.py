"""The coordinator's writes to agent memory: accepted memory writes, their outcomes, and accepted checkpoints.

Both go to the tenant's memory bucket, which only the coordinator may write
(read here with message gets; agents read their own keys with direct gets,
:mod:`agents._memory`). A write is applied with compare-and-set on the
revision its writer expected, so a write decided against a revision that has
since moved on is never applied over the newer value. Each value is signed by
this coordinator's key and names its key (:mod:`agents._signed_value`). The
outcome of each write of an agent's own namespace is stored where the agent
reads it (:mod:`agents._memory_outcomes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from trustbus.agents import _metrics as metrics
from trustbus.agents._answers import store_answer
from trustbus.agents._memory import checkpoint_key, memory_bucket, memory_key, parse_write
from trustbus.agents._memory_outcomes import not_applied, outcome_key
from trustbus.agents._signed_value import signer
from trustbus.agents._spans import storing
from trustbus.bus import (
    Bus,
    Conflict,
    Decision,
    Envelope,
    MemoryValue,
    SignedValue,
    decode_envelope,
    log_about,
    memory_value,
    open_memory_value,
    subjects,
)

log = logging.getLogger("trustbus.coordinator")


class MemoryWrites:
    """What the coordinator of ``bus`` reads and writes in the memory bucket."""

    def __init__(self, bus: Bus) -> None:
        """``bus``: the coordinator's connection."""
        self._bus = bus
        self._bucket = memory_bucket(bus, direct=False)

    async def revision(self, envelope: Envelope) -> int:
        """The current revision of the key a ``memory_write`` names (0 if absent or unparsable)."""
        write = parse_write(envelope.payload)
        if write is None or len(envelope.to) != 1 or envelope.to[0].startswith(subjects.TOPIC_PREFIX):
            return 0
        entry = await self._bucket.get(memory_key(envelope.to[0], write.key))
        return entry.revision if entry is not None else 0

    async def store(
        self, envelope: Envelope, body: bytes, headers: Mapping[str, str], decision: Decision, decision_id: str
    ) -> None:
        """Store the accepted ``memory_write`` or ``checkpoint`` ``envelope`` (``body`` decoded), inside its span."""
        if envelope.kind == "checkpoint":
            with storing("checkpoint", envelope):
                await self.store_checkpoint(envelope.sender, body, headers, decision_id)
            return
        with storing("memory_write", envelope) as span:
            outcome = await self.apply(envelope, body, headers, decision, decision_id)
            if span is not None:
                span.set_attribute("trustbus.memory.outcome", outcome)

    async def apply(
        self, envelope: Envelope, body: bytes, headers: Mapping[str, str], decision: Decision, decision_id: str
    ) -> str:
        """Apply an accepted write with compare-and-set on the revision it expected, and tell its writer; idempotent.

        If the key moved on after the decision (the write was held and approved late, or a
        coordinator of another partition wrote it first), the write is not applied, a
        quarantine record ``stale_revision`` says so beside the decision that accepted it,
        and the writer is told it was refused as ``stale_revision``. Returns the outcome:
        ``applied``, ``already_applied`` or ``stale_revision``.
        """
        write = parse_write(envelope.payload)
        assert write is not None  # decide() accepted it
        key = memory_key(envelope.to[0], write.key)  # the sender's own, or an operator's revert
        current = await self._bucket.get(key)
        bus = self._bus
        if current is not None:
            keyring = await bus.keyring.knowing(signer(current.value))
            try:
                stored = open_memory_value(current.value, keyring=keyring, key=key, stored_ns=current.stored_ns)
                if stored.envelope_id == decision.envelope_id:
                    metrics.MEMORY_WRITES.labels("already_applied").inc()
                    await self.tell(body, decision)  # applied before a crash, perhaps not told
                    return "already_applied"
            except ValueError as exc:  # no coordinator's value for this key: recorded; the compare-and-set decides
                subject = self._bucket.subject(key)
                await bus.record_foreign_value(
                    subject, current.revision, current.value, current.headers, detail=str(exc)
                )
        value = MemoryValue(
            key=key,
            value=bytes(write.value),
            envelope_id=decision.envelope_id,
            writer=decision.sender,
            effective_taint=decision.effective_taint,
            decision_id=decision_id,
        )
        try:
            signed = memory_value(bus.identity, bus.name, value, tenant=bus.tenant, now_ns=bus.clock())
            await self._bucket.put(key, signed, revision=write.expected_revision)
            metrics.MEMORY_WRITES.labels("applied").inc()
        except Conflict:
            pass
        else:
            await self.tell(body, decision)
            return "applied"
        metrics.MEMORY_WRITES.labels("stale_revision").inc()
        with log_about(envelope, agent=envelope.sender):
            log.warning("accepted memory write not applied: the key moved on")
        await bus.record_quarantine(
            body,
            headers,
            subject=subjects.outbox(bus.tenant, envelope.sender, bus.partition(envelope.correlation_id)),
            stream_seq=decision.source_seq,
            reason="stale_revision",
            detail=(
                f"accepted (decision {decision_id}) expecting revision {write.expected_revision} of "
                f"{envelope.to[0]}.{write.key}, which had moved on when it was applied: not written"
            ),
            msg_id=f"stale:{bus.stream}:{decision.source_seq}",
        )
        await self.tell(body, not_applied(decision))
        return "stale_revision"

    async def tell(self, body: bytes, answer: Decision) -> None:
        """Store ``answer`` about the memory write ``body`` where its writer reads it (idempotent: the latest wins).

        Nothing is stored for an operator's revert (its writer has no namespace) or a write that does
        not parse (it names no key).
        """
        envelope = decode_envelope(body)
        write = parse_write(envelope.payload)
        if write is None or write.reverts:
            return
        await store_answer(self._bus, self._bucket, outcome_key(envelope.sender, write.key), answer)

    async def store_checkpoint(self, agent: str, body: bytes, headers: Mapping[str, str], decision_id: str) -> None:
        """Store ``agent``'s accepted checkpoint envelope, signed as it sent it, where its next process reads it."""
        value = SignedValue.of(body, headers).encode()
        await self._bucket.put(checkpoint_key(agent), value, headers={"Tb-Decision": decision_id})
