"""The coordinator: the reference monitor every envelope between agents passes through.

A :class:`Coordinator` mediates one partition of a tenant (every correlation
whose hash falls in it; see :func:`bus.subjects.partition_of`), reading each
sender's traffic in turn (:mod:`agents._intake`). For each
envelope in an outbox of its partition it verifies it (``bus.Bus.consume``),
checks it came from its sender's own outbox for its correlation's partition,
decides with :func:`agents._decision.decide`, appends the decision to the
partition's log ``tb.<T>.decision.<p>`` (:mod:`agents._decision_log`) and
forwards the sender's bytes to each recipient's inbox with a countersignature
(:mod:`agents._forwarding`); an accepted memory write or checkpoint is stored
instead (:mod:`agents._memory_writes`). Effect records and operators' answers
to holds take their own paths (:mod:`agents._effect_mediation`,
:mod:`agents._approval_mediation`). Which process runs which partition is
:mod:`agents._partitions`' job.

Exactly once, with any number of coordinator processes on a partition:

- Decisions are appended with compare-and-set on the log's last sequence: two
  coordinators never decide one envelope twice or spend one budget twice.
- The state is the fold of that log (rebuilt at start, kept current on conflict).
- The outbox message is acked only after every forward is stored. A crash in
  between means a redelivery, which finds the decision already made and
  forwards again; the forwards' ``Nats-Msg-Id`` makes that idempotent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from trustbus.agents._approval_mediation import ApprovalMediation
from trustbus.agents._correlation_store import correlation_store
from trustbus.agents._decision import Deferral, decide
from trustbus.agents._decision_log import DecisionLog
from trustbus.agents._effect_answers import store_ask_answer
from trustbus.agents._effect_asks import is_ask_decision
from trustbus.agents._effect_mediation import EffectMediation
from trustbus.agents._forwarding import Forwarder
from trustbus.agents._intake import Intake
from trustbus.agents._memory_writes import MemoryWrites
from trustbus.agents._outages import patiently
from trustbus.agents._policy import Policy
from trustbus.agents._spans import guardrail
from trustbus.agents._suspension import Suspensions
from trustbus.bus import (
    Bus,
    ConsumerSettings,
    Decision,
    Delivery,
    Envelope,
    TransientError,
    TransportError,
    decode_envelope,
    log_about,
    rejection,
    subject_owner,
    subjects,
    tracing_enabled,
)

log = logging.getLogger("trustbus.coordinator")
T = TypeVar("T")

CONSUMER_PREFIX = "coordinator-"
# Decisions at most between two snapshots of a partition's state: what a restart catches up on, about 2 s at the
# slowest rate measured on a loaded machine (2.2 ms a decision; docs/COORDINATOR.md, "Snapshots and restarts").
SNAPSHOT_EVERY = 1_000
SNAPSHOT_S = 60.0  # seconds at most, if anything was decided
OUTBOX_SETTINGS = ConsumerSettings(max_ack_pending=1024, max_deliver=10, ack_wait_s=10.0, batch=128)


def consumer_name(partition: int) -> str:
    """The durable consumer of one partition's outboxes, effect records and approvals."""
    return f"{CONSUMER_PREFIX}{partition:d}"


class Coordinator:
    """Mediates one partition of a tenant. Create, ``await start()``, then ``await run(stop)``."""

    def __init__(self, bus: Bus, policy: Policy, partition: int = 0, *, inboxes: set[str] | None = None) -> None:
        """Use a Bus connected with a key whose keyring role is ``coordinator``.

        ``inboxes``: agents whose inbox consumer exists, shared by the partitions of one process.
        """
        if not 0 <= partition < bus.partitions:
            raise ValueError(f"partition {partition} is not one of the tenant's {bus.partitions}")
        self.bus = bus
        self.policy = policy
        self.partition = partition
        decisions = bus.log(subjects.decision(bus.tenant, partition), in_batches=True)
        store = correlation_store(bus, partition, capacity=policy.limits.correlations_in_memory)
        self.log = DecisionLog(decisions, bus.keyring.keyring, policy, store=store)
        self.state = self.log.state
        self._forwarder = Forwarder(bus, inboxes)
        self._memory = MemoryWrites(bus)
        self._effects = EffectMediation(self)
        self._approvals = ApprovalMediation(self)
        self.suspensions = Suspensions(
            self.state, policy, partition=partition, partitions=bus.partitions, tenant=bus.tenant
        )
        self._snapshot_at = (0, 0, time.monotonic())  # the log sequence, decisions folded and time of the last one
        self._intake = Intake(bus, partition, approvals=consumer_name(partition), suspensions=self.suspensions)
        self._stopping = asyncio.Event()
        self._settling: tuple[list[Delivery], asyncio.Future[None]] | None = None  # a group's forwards and acks

    async def start(self) -> None:
        """Create the partition's consumers (one per sender: agents._intake), rebuild its state from its decision
        log, create inbox consumers."""  # noqa: D205, D209
        tenant, partition = self.bus.tenant, self.partition
        watched = subjects.approval(tenant, partition)
        await self.bus.ensure_consumer(consumer_name(partition), watched, settings=OUTBOX_SETTINGS)
        await self._intake.ensure_consumers()
        await self.log.restore()
        self._snapshot_at = (self.state.last_seq, self.log.folded, time.monotonic())
        for grant in self.bus.keyring.keyring.grants():
            if grant.role == "agent":
                await self._forwarder.ensure_inbox(grant.owner)
        log.info(
            "partition ready",
            extra={"partition": partition, "decisions": self.state.last_seq, "tenant": self.bus.tenant},
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Mediate until ``stop`` is set, a fetched batch at a time, senders in turn (agents._intake); a batch's
        forwards are stored and its outbox acked while the next batch is decided (:meth:`_mediate_group`)."""  # noqa: D205, D209
        self._stopping = stop
        try:
            async for batch in self._intake.batches(stop):
                await self._suspend_due()
                group: list[Delivery] = []
                for delivery in batch:
                    if self._batchable(delivery):
                        group.append(delivery)
                        continue
                    await self._mediate_group(group)
                    group = []
                    await self._settle()
                    async with delivery.process():
                        await patiently([delivery], functools.partial(self._mediate, delivery), stopping=self._stopping)
                await self._mediate_group(group)
                await self._trim()
            await self._settle()
        finally:
            if self._settling is not None:  # cancelled: unacked, its outbox messages come back to the next holder
                self._settling[1].cancel()

    async def _suspend_due(self) -> None:
        """Record a suspension for each sender the intake found over its rejection threshold (agents._suspension)."""
        for sender, seq in self.suspensions.due():
            made = self.suspensions.decision(sender, source_seq=seq, now_ns=self.bus.clock())
            if made is None:
                continue
            cause, _ = made

            def make(sender: str = sender, seq: int = seq) -> Decision | None:
                again = self.suspensions.decision(sender, source_seq=seq, now_ns=self.bus.clock())
                return None if again is None else again[1]

            try:
                await self.record(cause, make)
            except (TransportError, TransientError) as exc:
                log.warning("suspension not recorded; will retry", extra={"sender": sender, "error": str(exc)})
                self.suspensions.postpone(sender, seq)

    async def refuse(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Quarantine ``delivery`` and count it against its subject's owner, towards a suspension."""
        await delivery.reject(reason, detail)
        owner = subject_owner(delivery.subject)
        if "." not in owner:
            self.suspensions.refused(owner, {reason: 1}, last_seq=delivery.stream_seq, at_ns=self.bus.clock())

    def _full(self, delivery: Delivery) -> bool:
        """Whether the envelope's correlation (in memory, not expired) holds ``limits.decisions_per_correlation``."""
        held = len(self.state.live(delivery.envelope.correlation_id, self.policy, delivery.stored_ns).decided)
        return held >= self.policy.limits.decisions_per_correlation

    async def _refuse_full(self, delivery: Delivery) -> None:
        """Quarantine an envelope of a full correlation: deciding it would grow a state that must stay storable."""
        limit = self.policy.limits.decisions_per_correlation
        detail = (
            f"correlation {delivery.envelope.correlation_id} holds {limit} decisions (limits.decisions_per_correlation)"
        )
        await self.refuse(delivery, "correlation_full", detail)

    def _batchable(self, delivery: Delivery) -> bool:
        """Plain envelopes from their sender's outbox: decided together, forwarded together."""
        envelope = delivery.envelope
        return delivery.subject == self._outbox_of(envelope) and envelope.kind not in (
            "memory_write",
            "checkpoint",
        )

    def _decide(self, delivery: Delivery, *, memory_revision: int = 0) -> Decision | Deferral:
        """Decide ``delivery``'s envelope against the state (pure: the state is not changed).

        The decision clock is when the server stored the envelope, so a backlog is
        rate-limited as it was sent; a redelivery (after a rate-limit delay or a
        crash) is decided now, or a delayed sender would never earn a token.
        """
        clock = delivery.stored_ns if delivery.attempt == 1 else max(delivery.stored_ns, self.bus.clock())
        return decide(
            self.policy,
            delivery.envelope,
            self.state,
            received_ns=clock,
            source_seq=delivery.stream_seq,
            memory_revision=memory_revision,
            sender_role=delivery.opened.grant.role,
        )

    async def _mediate_group(self, group: list[Delivery]) -> None:
        """Decide ``group`` in order, record the decisions and publish the forwards; then let the forwards be
        stored and the outbox acked beside the next group (:meth:`_settle`). Nak what is left on failure.

        The next group is decided against a state that holds this one's decisions recorded, and its forwards
        are published after this one's on the same connection: a recipient gets them in order.
        """  # noqa: D205
        if not group:
            return
        started = await self._patiently(group, functools.partial(self._start_group, group))
        await self._settle()
        if started is not None:
            self._settling = (group, asyncio.ensure_future(_acked(started)))

    async def _settle(self) -> None:
        """Wait until the last group's forwards are stored and its outbox messages acked. If that failed, mediate
        the group again, whole (nothing is decided twice; forwards carry their message ids)."""  # noqa: D205, D209
        if self._settling is None:
            return
        group, acked = self._settling
        self._settling = None
        try:
            await acked
        except Exception as exc:  # the same failures the whole group meets again below, and handles
            log.warning("forwards not stored; mediating the batch again", extra={"size": len(group), "error": str(exc)})
            await self._patiently(group, functools.partial(self._mediate_group_once, group))

    async def _patiently(self, group: list[Delivery], work: Callable[[], Awaitable[T]]) -> T | None:
        """``work`` on ``group`` through outages (:func:`patiently`); None if it failed (what is left nakked, or
        quarantined if it raised for another reason than the server)."""  # noqa: D205, D209
        try:
            return await patiently(group, work, stopping=self._stopping)
        except (TransportError, TransientError) as exc:
            log.warning("batch not mediated, will retry", extra={"size": len(group), "error": str(exc)})
            for delivery in group:
                if not delivery.settled:
                    await delivery.nak()
        except Exception as exc:
            log.exception("batch failed; quarantining it", extra={"size": len(group)})
            for delivery in group:
                if not delivery.settled:
                    await delivery.reject("handler_error", f"{type(exc).__name__}: {exc}")
        return None

    async def _mediate_group_once(self, group: list[Delivery]) -> None:
        await _acked(await self._start_group(group))

    async def _start_group(self, group: list[Delivery]) -> list[tuple[Delivery, list[Awaitable[object]]]]:
        """Decide and record ``group``, publish its forwards; each delivery with the acks of its forwards."""
        recorded = await self._decide_group(group)
        return [
            (
                d,
                await self._start_delivery(
                    d.envelope,
                    d.body,
                    d.headers,
                    d.stream_seq,
                    self._decision(d.envelope),
                    recorded_now=d.envelope.id in recorded,
                ),
            )
            for d in group
            if not d.settled and not await self._replayed(d)
        ]

    async def _decide_group(self, group: list[Delivery]) -> set[str]:
        """Decide every undecided envelope of ``group`` against the state and record them, retrying on conflict;
        the ids of the envelopes whose decisions this call recorded."""  # noqa: D205, D209

        async def decide_one(delivery: Delivery) -> Decision | None:
            envelope = delivery.envelope
            if delivery.settled:
                return None
            if self._full(delivery):
                await self._refuse_full(delivery)
                return None
            try:
                result = self._decide(delivery)
            except Exception as exc:  # this envelope's fault, never its batch's
                with log_about(envelope, agent=envelope.sender):
                    log.exception("cannot decide; quarantining it alone")
                await delivery.reject(*rejection(exc))
                return None
            if isinstance(result, Deferral):
                await delivery.defer(result.retry_after_s)
                return None
            return result

        began = time.time_ns()
        recorded = await self.log.record_group(group, decide_one, by=self.bus)
        if tracing_enabled():
            for delivery in group:
                if delivery.envelope.id in recorded:
                    self._traced(delivery.envelope, self._decision(delivery.envelope), began)
        return recorded

    def _outbox_of(self, envelope: Envelope) -> str:
        """The one subject ``envelope`` may arrive on: its sender's outbox for its correlation's partition."""
        return subjects.outbox(self.bus.tenant, envelope.sender, self.bus.partition(envelope.correlation_id))

    async def _replayed(self, delivery: Delivery) -> bool:
        """Refuse ``delivery`` if its (decided) envelope was decided at another stream sequence: a copy.

        The reader remembers only the ids of envelopes not yet settled across a restart
        (agents._intake); a copy of one settled before is recognised here, by its decision.
        """
        decided_at = self._decision(delivery.envelope).source_seq
        if decided_at == delivery.stream_seq:
            return False
        await self.refuse(delivery, "replayed", f"envelope {delivery.envelope.id} was decided at {decided_at}")
        return True

    def _decision(self, envelope: Envelope) -> Decision:
        """The last decision about ``envelope`` (decided, and its correlation in memory)."""
        decision = self.state.decision(envelope.correlation_id, envelope.id)
        assert decision is not None, envelope.id
        return decision

    async def _trim(self) -> None:
        """Between batches: store and drop the correlations least recently used beyond the capacity, and store a
        snapshot every ``SNAPSHOT_EVERY`` decisions or ``SNAPSHOT_S`` seconds (if anything was decided)."""  # noqa: D205, D209
        seq, folded, at = self._snapshot_at
        due = self.log.folded - folded >= SNAPSHOT_EVERY or time.monotonic() - at >= SNAPSHOT_S
        try:
            await self.log.trim()
            if due and self.state.last_seq > seq and await self.log.snapshot():
                self._snapshot_at = (self.state.last_seq, self.log.folded, time.monotonic())
        except (TransportError, TransientError) as exc:
            log.warning("correlation state not stored; will retry", extra={"error": str(exc)})

    # -- mediation ----------------------------------------------------------

    async def _mediate(self, delivery: Delivery) -> None:
        tenant = self.bus.tenant
        if delivery.subject == subjects.approval(tenant, self.partition):
            await self._approval(delivery)
        elif delivery.subject.startswith(f"tb.{tenant}.effect."):
            await self._effects.mediate(delivery)
        else:
            await self._outbox(delivery)

    async def record(
        self, cause: Envelope, make: Callable[[], Decision | Deferral | None]
    ) -> Decision | Deferral | None:
        """Append what ``make()`` decides, re-deciding on a fresh state until no one else got there first."""
        began = time.time_ns()
        result = await self.log.record(cause, make, by=self.bus)
        if isinstance(result, Decision):
            self._traced(cause, result, began)
        return result

    async def record_new(
        self, delivery: Delivery, decide: Callable[[], Decision | Deferral]
    ) -> Decision | Deferral | None:
        """Record what ``decide()`` makes of ``delivery``'s envelope; None if nothing was recorded: it was decided
        before (by a process that crashed, or another coordinator), or its correlation holds the limit (then it is
        quarantined, and ``delivery`` settled)."""  # noqa: D205, D209
        full = False

        def make() -> Decision | Deferral | None:
            nonlocal full
            if self.state.decided_about(delivery.envelope):
                return None
            full = self._full(delivery)
            return None if full else decide()

        result = await self.record(delivery.envelope, make)
        if full:
            await self._refuse_full(delivery)
        return result

    def _traced(self, cause: Envelope, decision: Decision, began_ns: int) -> None:
        """The guardrail span of a decision this process recorded, a child of the span that sent ``cause``."""
        guardrail(self.policy, cause, decision, start_ns=began_ns)

    async def _outbox(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        if delivery.subject != self._outbox_of(envelope):
            # Another agent's outbox, or the wrong partition for its correlation (whose
            # state, budget included, another coordinator holds).
            await self.refuse(delivery, "wrong_outbox", f"{envelope.sender}'s envelope arrived on {delivery.subject}")
            return

        revision = await self._memory.revision(envelope) if envelope.kind == "memory_write" else 0
        result = await self.record_new(delivery, functools.partial(self._decide, delivery, memory_revision=revision))
        if delivery.settled:
            return  # quarantined: its correlation is full
        if isinstance(result, Deferral):
            await delivery.defer(result.retry_after_s)
            return
        if await self._replayed(delivery):
            return
        decision = self._decision(envelope)
        if envelope.kind == "memory_write" and decision.verdict != "accept":
            await self._memory.tell(delivery.body, decision)  # an accepted one is told once applied
        if "tainted_memory_write" in decision.reasons and decision.verdict == "reject":
            await delivery.reject(
                "tainted_memory_write", f"memory write with taint {','.join(decision.effective_taint)}"
            )
            return
        recorded_now = result is not None
        await _all(
            await self._start_delivery(
                envelope, delivery.body, delivery.headers, delivery.stream_seq, decision, recorded_now=recorded_now
            )
        )

    async def _approval(self, delivery: Delivery) -> None:
        """Act on an operator's signed answer to a held envelope, tool call or memory write."""
        answered = await self._approvals.mediate(delivery)
        if answered is None:
            return
        decision, recorded_now = answered
        if is_ask_decision(decision):
            await store_ask_answer(self.bus, decision)  # a held tool call: its agent is waiting for this
            return
        if decision.kind == "memory_write" and decision.verdict != "accept":
            held = await self.log.log.get(decision.source_seq)
            await self._memory.tell(held.body, decision)  # denied
        elif decision.verdict == "accept":
            held = await self.log.log.get(decision.source_seq)
            envelope = decode_envelope(held.body)
            await _all(
                await self._start_delivery(
                    envelope, held.body, held.headers, decision.source_seq, decision, recorded_now=recorded_now
                )
            )

    async def _start_delivery(
        self,
        envelope: Envelope,
        body: bytes,
        headers: Mapping[str, str],
        source_seq: int,
        decision: Decision,
        *,
        recorded_now: bool,
    ) -> list[Awaitable[object]]:
        """Store an accepted memory write or checkpoint, or publish an accepted envelope's forwards (idempotently)
        and return their acks to await. ``envelope`` is ``body`` decoded; ``recorded_now``: this process recorded
        ``decision`` just now (nothing of it was forwarded before)."""  # noqa: D205, D209
        if decision.verdict != "accept":
            return []
        decision_id = self.log.decision_id(decision)
        if decision.kind in ("memory_write", "checkpoint"):
            await self._memory.store(envelope, body, headers, decision, decision_id)
            return []
        return await self._forwarder.start(
            envelope, body, headers, source_seq, decision, decision_id, recorded_now=recorded_now
        )


async def _acked(started: list[tuple[Delivery, list[Awaitable[object]]]]) -> None:
    """Wait until each delivery's forwards are stored, then ack it, in order."""
    for delivery, acks in started:
        await _all(acks)
        await delivery.ack()


async def _all(acks: list[Awaitable[object]]) -> None:
    """Wait until every publish of a delivery (:meth:`Coordinator._start_delivery`) is stored."""
    for ack in acks:
        await ack
