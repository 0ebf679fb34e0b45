"""The ledger service: tails the tenant stream, keeps the projection and publishes checkpoints.

The adapter around :class:`~ledger._projector.Projector` (pure) and
:class:`~ledger._segments.SegmentStore` (the files). It reads the stream with
an ordered consumer (ephemeral, made and owned by this connection, so no other
user can bind to it or move it) from the last committed sequence + 1. Rows
are committed in batches; a checkpoint states the committed position only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import Bus, KeyDirectory, Opened, TransportError, VerificationError, subjects
from bus._seal import HEADER_CKEY, HEADER_KEY
from ledger._checkpointing import CheckpointSchedule, checkpoint_envelope
from ledger._errors import ServiceError
from ledger._parallel import open_all
from ledger._projection import KeyRow, Rows
from ledger._projector import Projector
from ledger._segments import SegmentStore
from ledger._stored import StoredMessage

log = logging.getLogger("trustbus.ledger")

PARALLEL_FROM = 256  # messages in a batch from which signatures are checked on every core


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How often the service commits and states the chain.

    Attributes:
        checkpoint_every: new messages that call for a checkpoint.
        checkpoint_seconds: seconds after which any new message calls for one.
        flush_messages: messages projected before their rows are committed.
        flush_seconds: longest a projected row waits to be committed.
        batch: messages taken from the consumer at once.
    """

    checkpoint_every: int = 1000
    checkpoint_seconds: float = 10.0
    flush_messages: int = 10_000
    flush_seconds: float = 1.0
    batch: int = 1024


def _stored(msg: Msg) -> StoredMessage:
    meta = msg.metadata
    return StoredMessage(
        meta.sequence.stream, msg.subject, int(meta.timestamp.timestamp() * 1e9), dict(msg.headers or {}), msg.data
    )


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
        self._pending = Rows()
        self._pending_since: float | None = None

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Project until ``stop`` is set, then commit what was projected and return."""
        self._remember_recent()
        sub = await self._subscribe()
        ready()
        try:
            while not stop.is_set():
                await self._apply([_stored(msg) for msg in await self._next_batch(sub, stop)])
                now = time.monotonic()
                if self._pending_since is not None and (
                    len(self._pending.envelopes) >= self.settings.flush_messages
                    or now - self._pending_since >= self.settings.flush_seconds
                    or self.schedule.due(now)
                ):
                    await self._commit()
                if self._pending_since is None and self.schedule.due(now):
                    await self._checkpoint(now)
        finally:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await sub.unsubscribe()
        if self._pending_since is not None:
            await self._commit()

    def _remember_recent(self) -> None:
        """After a restart, the ids accepted within the replay window before the position, from the projection."""
        position = self.projector.position
        if position.last_seq == 0:
            return
        since = position.last_stored_ns - 2 * self.bus.limits.skew_ns
        for subject, seq, envelope in self.store.recently_accepted(since):
            self.projector.remember(subject, seq, envelope)

    async def _subscribe(self) -> Subscription:
        start = self.projector.position.last_seq + 1
        try:
            return await self.bus.js.subscribe(
                subjects.all_subjects(self.bus.tenant),
                stream=self.bus.stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
                pending_msgs_limit=4 * self.settings.batch,
            )
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot read stream {self.bus.stream}: {exc}") from exc

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

    async def _next_batch(self, sub: Subscription, stop: asyncio.Event) -> list[Msg]:
        """The messages queued now, waiting (until due, or stopped) for the first."""
        first = asyncio.ensure_future(sub.next_msg(timeout=self._wait_s()))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({first, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            return []
        try:
            batch = [first.result()]
        except TimeoutError:  # nats.errors.TimeoutError is a subclass
            return []
        except nats.errors.ConnectionClosedError as exc:
            raise TransportError("connection closed while reading the stream") from exc
        # Take what is queued, and on a backlog (the server says more is pending) wait for a full batch.
        while len(batch) < self.settings.batch and (sub.pending_msgs > 0 or batch[-1].metadata.num_pending > 0):
            try:
                batch.append(await sub.next_msg(timeout=1.0))
            except TimeoutError:
                break
        return batch

    async def _apply(self, batch: list[StoredMessage]) -> None:
        keyring = self.bus.keyring
        for key_id in {m.headers.get(h, "") for m in batch for h in (HEADER_KEY, HEADER_CKEY)}:
            if key_id and not keyring.keyring.knows(key_id):
                await keyring.refresh_key(key_id)
        checked: Sequence[Opened | VerificationError | None] = [None] * len(batch)
        if len(batch) >= PARALLEL_FROM:  # a backlog: check signatures on every core
            checked = await asyncio.to_thread(open_all, batch, keyring.keyring, self.bus.tenant, limits=self.bus.limits)
            log.debug("signatures checked on every core", extra={"messages": len(batch)})
        for message, outcome in zip(batch, checked, strict=True):
            before = self.projector.position.last_seq
            self.projector.apply(message, checked=outcome, into=self._pending)
            if self.projector.position.last_seq == before:
                continue  # projected before
            self.schedule.observe(self._pending.envelopes[-1].channel)
            if self._pending_since is None:
                self._pending_since = time.monotonic()

    async def _commit(self) -> None:
        rows, self._pending = self._pending, Rows()
        self._pending_since = None
        keys = [KeyRow.of(g) for g in self.bus.keyring.keyring.grants()]
        await asyncio.to_thread(
            self.store.commit, rows, self.projector.position, since_checkpoint=self.schedule.since, keys=keys
        )
        log.debug("committed", extra={"through_seq": self.projector.position.last_seq, "rows": len(rows)})

    async def _checkpoint(self, now: float) -> None:
        position = self.projector.position
        envelope = checkpoint_envelope(self.bus.tenant, self.bus.name, position)
        await self.bus.publish(subjects.checkpoint(self.bus.tenant), self.bus.seal(envelope))
        self.schedule.published(now)
        log.info("checkpoint", extra={"through_seq": position.last_seq, "head": position.head.hex()})


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


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

    Raises:
        ServiceError: the key's role is not ``ledger``.
        ProjectionError: ``data_dir`` holds another tenant's projection or is damaged.
    """
    identity = keys.load(tenant, name)
    stop = _stop_on_signals()
    store = await asyncio.to_thread(SegmentStore.open, data_dir, tenant)
    bus = await Bus.connect(
        list(servers),
        tenant=tenant,
        name=name,
        identity=identity,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(name) if nkey_auth else None,
    )
    try:
        role = bus.keyring.keyring.resolve(identity.key_id).role
        if role != "ledger":
            raise ServiceError(f"key of {name!r} has role {role!r}: create it with `trustbus keys new --role ledger`")
        await LedgerService(bus, store, settings).run(stop, ready)
    finally:
        await bus.aclose()
        store.close()
