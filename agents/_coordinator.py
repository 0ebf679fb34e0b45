"""The coordinator: the reference monitor every envelope between agents passes through.

For each envelope in an outbox it verifies it (``bus.Bus.consume``), checks it
came from its sender's own outbox, decides with :func:`agents._decision.decide`,
appends the decision to ``tb.<T>.decision`` and forwards the sender's bytes to
each recipient's inbox with a countersignature.

Exactly once, with any number of coordinator processes:

- Decisions are appended with ``Nats-Expected-Last-Subject-Sequence``: the
  decision subject is a single, totally ordered log. A coordinator whose state
  is behind gets a conflict, reads the decisions it missed, and decides again;
  so two coordinators never decide one envelope twice or spend one budget twice.
- The state is the fold of that log (rebuilt at start, kept current on conflict).
- A forward carries ``Nats-Msg-Id = <envelope id>:<recipient>``; the outbox
  message is acked only after every forward is stored. A crash in between means a
  redelivery, which finds the decision already made and forwards again; the
  stream's duplicate window drops the copies. Past that window, the inbox is
  read from the decision onward and only missing forwards are sent.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agents._decision import CoordinatorState, Decision, Deferral, decide, decode_decision, encode_decision
from agents._policy import Policy
from bus import (
    Bus,
    ConsumerSettings,
    Delivery,
    Envelope,
    TransportError,
    VerificationError,
    countersign,
    new_envelope,
    open_envelope,
    subjects,
)
from bus._provision import DUPLICATE_WINDOW_S
from bus._seal import HEADER_KEY, HEADER_MSG_ID, HEADER_SIG

log = logging.getLogger("trustbus.coordinator")

CONSUMER = "coordinator"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071
# Re-forwards younger than this rely on the duplicate window; older ones check the inbox first.
_DEDUP_SAFE_NS = int(DUPLICATE_WINDOW_S * 1e9 * 0.75)

OUTBOX_SETTINGS = ConsumerSettings(max_ack_pending=1024, max_deliver=10, ack_wait_s=10.0, batch=128)
# A short ack_wait brings a crashed agent's message back within seconds; a live
# handler keeps it with in-progress beats (see bus.Delivery.process).
INBOX_SETTINGS = ConsumerSettings(ack_wait_s=4.0, fetch_timeout_s=1.0)


class _Conflict(Exception):
    """Another coordinator appended a decision first."""


class Coordinator:
    """Mediates one tenant. Create, ``await start()``, then ``await run(stop)``."""

    def __init__(self, bus: Bus, policy: Policy) -> None:
        """Use a Bus connected with a key whose keyring role is ``coordinator``."""
        self.bus = bus
        self.policy = policy
        self.state = CoordinatorState()
        self._decision_ids: dict[str, str] = {}
        self._inboxes: set[str] = set()
        self._kv_stream = f"KV_{subjects.memory_bucket(bus.tenant)}"

    async def start(self) -> None:
        """Create the outbox consumer, rebuild the state from the decision log, create inbox consumers."""
        await self.bus.ensure_consumer(CONSUMER, f"tb.{self.bus.tenant}.out.*", settings=OUTBOX_SETTINGS)
        await self._catch_up()
        for grant in self.bus.keyring.keyring.grants():
            if grant.role == "agent":
                await self._ensure_inbox(grant.owner)
        log.info("coordinator ready", extra={"decisions": self.state.last_seq, "tenant": self.bus.tenant})

    async def run(self, stop: asyncio.Event) -> None:
        """Mediate until ``stop`` is set."""
        async for delivery in self.bus.consume(CONSUMER, settings=OUTBOX_SETTINGS, stop=stop):
            async with delivery.process():
                await self._mediate(delivery)

    # -- the decision log ---------------------------------------------------

    async def _catch_up(self) -> None:
        """Apply every decision appended after the last one this process applied."""
        subject = subjects.decision(self.bus.tenant)
        seq = self.state.last_seq + 1
        while True:
            try:
                raw = await self.bus.js.get_msg(self.bus.stream, seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise TransportError(f"cannot read decisions: {exc}") from exc
            assert raw.seq is not None and raw.time is not None
            self._apply_recorded(raw.data or b"", raw.headers or {}, raw.seq, int(raw.time.timestamp() * 1e9))
            seq = raw.seq + 1

    def _apply_recorded(self, body: bytes, headers: dict[str, str], seq: int, stored_ns: int) -> None:
        try:
            opened = open_envelope(body, headers, keyring=self.bus.keyring.keyring, received_ns=stored_ns)
            if opened.grant.role != "coordinator":
                raise VerificationError(f"decision signed by a {opened.grant.role} key")
            decision = decode_decision(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError) as exc:
            log.error("unusable decision record skipped", extra={"stream_seq": seq, "error": str(exc)})
            self.state.last_seq = max(self.state.last_seq, seq)
            return
        self.state.apply(decision, self.policy, seq=seq)
        self._decision_ids[decision.envelope_id] = opened.envelope.id

    async def _append(self, envelope: Envelope, decision: Decision) -> str:
        """Append ``decision`` right after the last decision we know; raise _Conflict if someone beat us."""
        record = new_envelope(
            tenant=self.bus.tenant,
            kind="decision",
            sender=self.bus.name,
            to=(),
            correlation_id=envelope.correlation_id,
            causation_id=envelope.id,
            hop=decision.hop,
            taint=decision.effective_taint,
            content_type="application/msgpack",
            payload=encode_decision(decision),
        )
        sealed = self.bus.seal(record)
        try:
            ack = await self.bus.js.publish(
                subjects.decision(self.bus.tenant),
                sealed.body,
                headers={**sealed.headers, EXPECTED_LAST_SUBJECT_SEQ: str(self.state.last_seq)},
                timeout=5.0,
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _Conflict from exc
            raise TransportError(f"cannot append decision: {exc}") from exc
        except nats.errors.Error as exc:
            raise TransportError(f"cannot append decision: {exc}") from exc
        if ack.duplicate:
            raise _Conflict  # our own earlier attempt landed: read it back like anyone else's
        self.state.apply(decision, self.policy, seq=ack.seq)
        self._decision_ids[envelope.id] = record.id
        return record.id

    # -- mediation ----------------------------------------------------------

    async def _mediate(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        if delivery.subject != subjects.outbox(self.bus.tenant, envelope.sender):
            await delivery.reject("wrong_outbox", f"{envelope.sender}'s envelope arrived on {delivery.subject}")
            return
        while envelope.id not in self.state.decided:
            # The decision clock is when the server stored the envelope, so a backlog is
            # rate-limited as it was sent; a redelivery (after a rate-limit delay or a
            # crash) is decided now, or a delayed sender would never earn a token.
            clock = delivery.stored_ns if delivery.attempt == 1 else max(delivery.stored_ns, time.time_ns())
            result = decide(self.policy, envelope, self.state, received_ns=clock, source_seq=delivery.stream_seq)
            if isinstance(result, Deferral):
                await delivery.defer(result.retry_after_s)
                return
            try:
                await self._append(envelope, result)
            except _Conflict:
                await self._catch_up()
                continue
            log.info(
                "decided",
                extra={
                    "envelope_id": envelope.id,
                    "sender": envelope.sender,
                    "verdict": result.verdict,
                    "reasons": list(result.reasons),
                },
            )
        decision = self.state.decided[envelope.id]
        await self._deliver(delivery, decision, self._decision_ids[envelope.id])

    async def _deliver(self, delivery: Delivery, decision: Decision, decision_id: str) -> None:
        if decision.kind == "checkpoint" and decision.verdict == "accept":
            await self._store_checkpoint(delivery, decision_id)
            return
        recheck = time.time_ns() - decision.decided_ns > _DEDUP_SAFE_NS
        acks = []
        for recipient in decision.deliver_to:
            subject = self._subject_for(recipient)
            msg_id = f"{decision.envelope_id}:{recipient}"
            if recheck and await self._already_forwarded(subject, msg_id, after_seq=delivery.stream_seq):
                continue
            if not recipient.startswith(subjects.TOPIC_PREFIX):
                await self._ensure_inbox(recipient)
            headers = {
                HEADER_SIG: delivery.headers.get(HEADER_SIG, ""),
                HEADER_KEY: delivery.headers.get(HEADER_KEY, ""),
                HEADER_MSG_ID: msg_id,
                **countersign(
                    delivery.body,
                    recipient=recipient,
                    decision_id=decision_id,
                    effective_taint=decision.effective_taint,
                    coordinator=self.bus.identity,
                ),
            }
            acks.append(await self.bus.forward(subject, delivery.body, headers))
        for ack in acks:
            await ack

    def _subject_for(self, recipient: str) -> str:
        if recipient.startswith(subjects.TOPIC_PREFIX):
            return subjects.topic(self.bus.tenant, recipient.removeprefix(subjects.TOPIC_PREFIX))
        return subjects.inbox(self.bus.tenant, recipient)

    async def _already_forwarded(self, subject: str, msg_id: str, *, after_seq: int) -> bool:
        seq = after_seq + 1
        while True:
            try:
                raw = await self.bus.js.get_msg(self.bus.stream, seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return False
            if (raw.headers or {}).get(HEADER_MSG_ID) == msg_id:
                return True
            assert raw.seq is not None
            seq = raw.seq + 1

    async def _ensure_inbox(self, agent: str) -> None:
        if agent in self._inboxes:
            return
        config = ConsumerConfig(
            durable_name=subjects.inbox_consumer(agent),
            filter_subject=subjects.inbox(self.bus.tenant, agent),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=INBOX_SETTINGS.max_ack_pending,
            max_deliver=INBOX_SETTINGS.max_deliver,
            ack_wait=INBOX_SETTINGS.ack_wait_s,
        )
        try:
            await self.bus.js.add_consumer(self.bus.stream, config=config)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot create inbox consumer for {agent}: {exc}") from exc
        self._inboxes.add(agent)

    async def _store_checkpoint(self, delivery: Delivery, decision_id: str) -> None:
        record = msgspec.msgpack.encode(
            {"body": delivery.body, "headers": {k: delivery.headers.get(k, "") for k in (HEADER_SIG, HEADER_KEY)}}
        )
        key = f"$KV.{subjects.memory_bucket(self.bus.tenant)}.{delivery.envelope.sender}.checkpoint"
        try:
            await self.bus.js.publish(key, record, headers={"Tb-Decision": decision_id}, timeout=5.0)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot store checkpoint: {exc}") from exc
