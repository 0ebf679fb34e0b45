"""The ledger service: tails the tenant stream, keeps the projection and publishes checkpoints.

It also records what the server gave up delivering (:mod:`ledger._given_up`),
and, once, every message that does not verify on a subject no component
refuses messages on: components' records (decisions, checkpoints, quarantine
records) and topics. A refused and recorded message is history, not a break.
Outbox messages on a partition the tenant does not have, which no coordinator
reads, are recorded as rejections too (:mod:`ledger._strays`).

The adapter around :class:`~ledger._projector.Projector` (pure) and
:class:`~ledger._segments.SegmentStore` (the files). It reads the stream
through its own durable pull consumer (:class:`~bus.DurableReader`), named
after its key owner (the one consumer a rendered server config lets the
``ledger`` role create, read, ack and delete), and acks what it read only once
the commit holding it is on disk. On start, and whenever a delivery is missing, the consumer is kept only
if it would hand out exactly the sequence after the projection's position;
otherwise it is deleted and made again from there. Rows are committed in
batches; a checkpoint states the committed position only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trustbus.bus import (
    HEADER_CKEY,
    HEADER_KEY,
    Bus,
    ConsumerLagPoller,
    DurableSettings,
    Health,
    KeyDirectory,
    Opened,
    StoredMessage,
    Timeout,
    TransportError,
    Unavailable,
    VerificationError,
    collected,
    side_by_side,
    stop_on_signals,
    subjects,
    traced,
    wrong_role,
)
from trustbus.ledger._checkpointing import CheckpointSchedule, checkpoint_envelope
from trustbus.ledger._errors import ServiceError
from trustbus.ledger._given_up import GivenUpRecorder
from trustbus.ledger._metrics import CHECKPOINTS, LedgerGauges
from trustbus.ledger._parallel import open_all
from trustbus.ledger._projector import Position, Projector
from trustbus.ledger._rows import KeyRow, Rows
from trustbus.ledger._segments import SegmentStore
from trustbus.ledger._strays import StrayRecorder

log = logging.getLogger("trustbus.ledger")

PARALLEL_FROM = 256  # messages in a batch from which signatures are checked on every core
CHECKPOINT_RETRY_S = 5.0  # after a checkpoint the server could not take


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How often the service commits and states the chain.

    Attributes:
        checkpoint_every: new messages that call for a checkpoint.
        checkpoint_seconds: seconds after which any new message calls for one.
        flush_messages: messages projected before their rows are committed.
        flush_seconds: longest a projected row waits to be committed.
        batch: messages taken from the consumer at once.
        ack_wait_s: the consumer's ack wait. Messages are acked after the
            commit that holds them (within ``flush_seconds`` or so), so this only
            bounds how soon a lost ack is made good by a redelivery (skipped).
    """

    checkpoint_every: int = 1000
    checkpoint_seconds: float = 10.0
    flush_messages: int = 10_000
    flush_seconds: float = 1.0
    batch: int = 1024
    ack_wait_s: float = 600.0

    @property
    def max_ack_pending(self) -> int:
        """Room for every message read but not yet committed (a commit is due at ``flush_messages``), twice."""
        return 2 * (self.flush_messages + self.batch)


class LedgerService:
    """One tenant's projection and checkpoints, over one :class:`~bus.Bus` connection (role ``ledger``)."""

    def __init__(self, bus: Bus, store: SegmentStore, settings: ServiceSettings = ServiceSettings()) -> None:
        """Project ``bus.tenant``'s stream into ``store``, signing checkpoints as ``bus.name``."""
        self.bus = bus
        self.store = store
        self.settings = settings
        self.projector = Projector(bus.tenant, bus.keyring.keyring, position=store.position, limits=bus.limits)
        self.schedule = CheckpointSchedule(
            every_n=settings.checkpoint_every,
            every_s=settings.checkpoint_seconds,
            since=store.catalogue.since_checkpoint,
            last_at=time.monotonic(),
        )
        if self.projector.position.tree() is None:
            log.warning(
                "this projection has no Merkle frontier (made before tree heads were): checkpoints will state the "
                "chain head only; rebuild it (`ledger run --data NEW_DIR`) for tree heads",
                extra={"through_seq": store.position.last_seq},
            )
        self._pending = Rows()
        self._pending_since: float | None = None
        self.reader = bus.durable_reader(
            DurableSettings(
                batch=settings.batch, ack_wait_s=settings.ack_wait_s, max_ack_pending=settings.max_ack_pending
            )
        )
        self._strays = StrayRecorder(bus)  # outbox messages no coordinator reads (ledger._strays)
        self._start_end: int | None = None  # the stream's last sequence when it started reading

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Project until ``stop`` is set, then commit what was projected and return.

        Raises:
            ServiceError: the stream's history before the projection's next sequence was purged (archived).
        """
        first, self._start_end = await self.bus.reader().span()
        after = self.projector.position.last_seq
        if after + 1 < first:  # the chain through the purged prefix is in its archive, not here
            raise ServiceError(
                f"{self.bus.stream} starts at sequence {first} (1-{first - 1} were archived and purged) and this "
                f"projection is at {after}: it cannot chain through them. Run the service on the projection it "
                "kept (its --data directory)"
            )
        self._remember_recent()
        await self.reader.open(self.projector.position.last_seq, reuse=True, stop=stop)
        ready()
        try:
            while not stop.is_set():
                batch, intact = await self.reader.next_batch(stop, wait_s=self._wait_s())
                await self._apply(batch)
                if not intact:
                    await self.reader.open(self.projector.position.last_seq, reuse=False, stop=stop)
                    if stop.is_set():
                        break  # no consumer: commit what was read, and leave
                now = time.monotonic()
                if self._pending_since is not None and (
                    len(self._pending.envelopes) >= self.settings.flush_messages
                    or now - self._pending_since >= self.settings.flush_seconds
                    or self.schedule.due(now)
                ):
                    await self._commit()
                if self._pending_since is None:
                    await self.reader.ack()
                if self._pending_since is None and self.schedule.due(now):
                    await self._checkpoint(now)
            if self._pending_since is not None:
                await self._commit()
                await self.reader.ack()
        finally:
            await self.reader.aclose()

    def unready(self) -> str | None:
        """Why the projection is not ready (for ``/readyz``), or None once it reached the stream's end seen at start."""
        if self._start_end is None:
            return "starting"
        projected = self.projector.position.last_seq
        if projected < self._start_end:
            return f"catching up: projected {projected} of {self._start_end}"
        return None

    def projected_seq(self) -> int:
        """The last stream sequence projected (committed within ``flush_seconds``)."""
        return self.projector.position.last_seq

    def checkpoint_age_s(self) -> float:
        """Seconds since the last checkpoint published (or since the service started)."""
        return max(0.0, time.monotonic() - self.schedule.last_at)

    def uncheckpointed(self) -> int:
        """Messages projected since the last checkpoint."""
        return self.schedule.since

    def _remember_recent(self) -> None:
        """After a restart, the ids accepted within the replay window before the position, from the projection."""
        position = self.projector.position
        if position.last_seq == 0:
            return
        since = position.last_stored_ns - 2 * self.bus.limits.skew_ns
        for subject, seq, envelope in self.store.recently_accepted(since):
            self.projector.remember(subject, seq, envelope)

    def _wait_s(self) -> float:
        """How long to wait for a message before a commit or a checkpoint is due (at most a second)."""
        now = time.monotonic()
        waits = [1.0]
        if self._pending_since is not None:
            waits.append(self._pending_since + self.settings.flush_seconds - now)
        checkpoint = self.schedule.seconds_until_due(now)
        if checkpoint is not None:
            waits.append(checkpoint)
        return max(0.001, min(waits))

    async def _apply(self, batch: list[StoredMessage]) -> None:
        keyring = self.bus.keyring
        for key_id in {m.headers.get(h, "") for m in batch for h in (HEADER_KEY, HEADER_CKEY)}:
            await keyring.knowing(key_id)
        checked: Sequence[Opened | VerificationError | None] = [None] * len(batch)
        if len(batch) >= PARALLEL_FROM:  # a backlog: check signatures on every core
            checked = await asyncio.to_thread(open_all, batch, keyring.keyring, self.bus.tenant, limits=self.bus.limits)
            log.debug("signatures checked on every core", extra={"messages": len(batch)})
        for message, outcome in zip(batch, checked, strict=True):
            before = self.projector.position.last_seq
            self.projector.apply(message, checked=outcome, into=self._pending)
            if self.projector.position.last_seq == before:
                continue  # projected before
            row = self._pending.envelopes[-1]
            self.schedule.observe(row.channel)
            self._strays.observe(message)
            if not row.verified and _no_other_refuser(self.bus.tenant, message.subject):
                await self._record_refused(message, row.reject_reason or "invalid", row.reject_detail or "")
            if self._pending_since is None:
                self._pending_since = time.monotonic()
        await self._strays.flush()

    async def _record_refused(self, message: StoredMessage, reason: str, detail: str) -> None:
        """A quarantine record for a record that does not verify (a ``foreign`` empty message, a forgery), once."""
        if message.headers.get(HEADER_KEY) == self.bus.identity.key_id:
            return  # its own record: recording that would only make another like it
        try:
            await self.bus.record_quarantine(
                message.body,
                message.headers,
                subject=message.subject,
                stream_seq=message.seq,
                reason=reason,
                detail=detail,
                msg_id=f"refused:{self.bus.stream}:{message.seq}",
            )
        except TransportError as exc:
            log.error("refused record not recorded", extra={"stream_seq": message.seq, "error": str(exc)})

    async def _commit(self) -> None:
        rows, self._pending = self._pending, Rows()
        self._pending_since = None
        keys = [KeyRow.of(g) for g in self.bus.keyring.keyring.grants()]
        position = self.projector.position
        with traced(
            "commit ledger",
            {
                "trustbus.tenant": self.bus.tenant,
                "trustbus.ledger.through_seq": position.last_seq,
                "trustbus.ledger.rows": len(rows),
            },
        ):
            await asyncio.to_thread(self.store.commit, rows, position, since_checkpoint=self.schedule.since, keys=keys)
        log.debug("committed", extra={"through_seq": self.projector.position.last_seq, "rows": len(rows)})

    async def _checkpoint(self, now: float) -> None:
        position = self.projector.position
        with traced(
            "checkpoint ledger", {"trustbus.tenant": self.bus.tenant, "trustbus.ledger.through_seq": position.last_seq}
        ):
            await self._publish_checkpoint(now, position)

    async def _publish_checkpoint(self, now: float, position: Position) -> None:
        envelope = checkpoint_envelope(self.bus.tenant, self.bus.name, position)
        try:
            await self.bus.publish(subjects.checkpoint(self.bus.tenant), self.bus.seal(envelope))
        except (Unavailable, Timeout) as exc:  # no server, or no room in its store: the next one states more
            log.warning(
                "checkpoint not published; will try again",
                extra={"through_seq": position.last_seq, "retry_s": CHECKPOINT_RETRY_S, "error": str(exc)},
            )
            self.schedule.failed(now, CHECKPOINT_RETRY_S)
            CHECKPOINTS.labels("failed").inc()
            return
        self.schedule.published(now)
        CHECKPOINTS.labels("published").inc()
        log.info("checkpoint", extra={"through_seq": position.last_seq, "head": position.head.hex()})


def _no_other_refuser(tenant: str, subject: str) -> bool:
    """Whether the ledger service is the reader that records what fails on ``subject``.

    The coordinator refuses on outboxes, effect records and approvals, an agent's
    runtime on its inbox; nobody consumes records and topics in order but the ledger.
    """
    topic = (subjects.mediated_recipient(tenant, subject) or "").startswith(subjects.TOPIC_PREFIX)
    return topic or subjects.judged_at_store(tenant, subject)


async def serve_ledger(
    *,
    servers: Sequence[str],
    tenant: str,
    name: str,
    keys: KeyDirectory,
    data_dir: Path,
    settings: ServiceSettings = ServiceSettings(),
    nkey_auth: bool = False,
    ready: Callable[[], None] = lambda: None,
    health: Health | None = None,
) -> None:
    """Run the ledger service for ``tenant`` until SIGTERM/SIGINT, then commit the current batch and return.

    Args:
        servers: NATS URLs.
        tenant: the tenant.
        name: the key owner it signs checkpoints as (keyring role ``ledger``).
        keys: where its seed is.
        data_dir: the projection directory (one tenant's).
        settings: commit and checkpoint cadence.
        nkey_auth: authenticate to NATS with the seed's nkey.
        ready: called once it is reading the stream.
        health: what ``/readyz`` answers, told when it reads the stream and when it stops.

    Raises:
        ServiceError: the key's role is not ``ledger``.
        ProjectionError: ``data_dir`` holds another tenant's projection or is damaged.
    """
    identity = keys.load(tenant, name, role="ledger")
    stop = stop_on_signals()
    store = await asyncio.to_thread(SegmentStore.open, data_dir, tenant)
    bus = await Bus.connect(
        list(servers),
        tenant=tenant,
        name=name,
        identity=identity,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(name) if nkey_auth else None,
    )
    health = health or Health()
    health.watch(lambda: bus.connected)
    try:
        role = bus.keyring.keyring.resolve(identity.key_id).role
        if role != "ledger":
            raise ServiceError(wrong_role(tenant, name, role, "ledger"))
        service = LedgerService(bus, store, settings)
        health.require(service.unready)
        gauges = LedgerGauges(service, bus.last_seq)
        lag = ConsumerLagPoller(bus.consumer_lag, lambda: {"ledger": [service.reader.name]})
        with collected(gauges.read):
            discovery = bus.discoverable(
                "ledger",
                lambda: {"ready": health.unready() or "ready", "projected_seq": service.projected_seq()},
            )
            async with lag.running(), discovery:
                await side_by_side(
                    service.run(stop, health.announcing(ready)), GivenUpRecorder(bus).run(stop), gauges.poll(stop)
                )
    finally:
        health.stopping()
        await bus.aclose()
        store.close()
