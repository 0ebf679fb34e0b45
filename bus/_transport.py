"""The Bus client: sealed publishes with bounded pipelining, verified pull consumption.

Every rejected or poison message is published to the tenant's quarantine
subject (as a signed event carrying a :class:`~bus.QuarantineRecord`) and then
terminated, so it never blocks the consumer and is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, PubAck

from trustbus.bus import _client
from trustbus.bus._api import tenant_jetstream
from trustbus.bus._bucket import NatsBucket
from trustbus.bus._connection import connect_options, split_servers
from trustbus.bus._durable_reader import DurableReader, DurableSettings
from trustbus.bus._envelope import Envelope, new_envelope
from trustbus.bus._errors import BusError, NotFound, TransientError, TransportError, VerificationError
from trustbus.bus._identity import Identity
from trustbus.bus._in_order import Start, read_in_order
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._log import NatsSubjectLog
from trustbus.bus._provision import tenant_partitions
from trustbus.bus._publisher import Publisher
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.bus._rejections import RejectionLog
from trustbus.bus._seal import HEADER_KEY, HEADER_MSG_ID, Limits, Opened, Sealed, SeenIds, open_envelope, seal
from trustbus.bus._stored import unix_ns
from trustbus.bus._stores import Bucket, SubjectLog
from trustbus.bus._subjects import (
    all_subjects,
    check_name,
    judged_at_store,
    outbox,
    partition_of,
    quarantine,
    stream_name,
)
from trustbus.bus._tail import verified
from trustbus.bus._tenant_stream import TenantStream
from trustbus.bus._translate import NATS_ERRORS, translated, unavailable
from trustbus.bus._work_queue import WorkQueue, WorkQueueSettings

log = logging.getLogger("trustbus.bus")


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How a durable pull consumer is configured and read.

    Attributes:
        max_ack_pending: messages delivered but not yet acked (backpressure).
        max_deliver: deliveries before a message is quarantined as poison.
        ack_wait_s: seconds before an unacked message is redelivered (so a crashed reader's
            message comes back quickly); a handler still running reports progress every
            third of it, so long handlers are not redelivered. Longer than ``fetch_timeout_s``.
        batch: messages per fetch.
        fetch_timeout_s: how long one fetch waits for messages.
        backoff_s: nak delays by delivery attempt (the last repeats).
    """

    max_ack_pending: int = 256
    max_deliver: int = 5
    ack_wait_s: float = 10.0
    batch: int = 64
    fetch_timeout_s: float = 1.0
    backoff_s: tuple[float, ...] = (0.2, 1.0, 5.0)


_OUTAGE_PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)
_YIELD_EVERY = 16  # messages verified between turns given to other tasks, when consuming beside others


async def _pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Wait ``seconds`` before trying again, or less if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _stored_ns(meta: Msg.Metadata) -> int:
    return unix_ns(meta.timestamp)


class Bus:
    """One component's connection to one tenant: it signs as ``name`` with ``identity``.

    Create with :meth:`connect`; use as an async context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        keyring: KeyringStore,
        *,
        tenant: str,
        name: str,
        identity: Identity,
        limits: Limits,
        max_in_flight: int,
        publish_timeout_s: float,
        watch: _ConnectionWatch | None = None,
        partitions: int = 1,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Wrap an open connection; use :meth:`connect`."""
        self._nc = nc
        self._js = js
        self.keyring = keyring
        self.tenant = tenant
        self.name = name
        self.identity = identity
        self.limits = limits
        self.stream = stream_name(tenant)
        self.partitions = partitions
        self.clock = clock  # the ``ts`` of what this component signs (unix ns)
        self._publish_timeout_s = publish_timeout_s
        self._publisher = Publisher(js, max_in_flight=max_in_flight, timeout_s=publish_timeout_s)
        self._watch = watch or _ConnectionWatch()
        self.refusals: dict[str, str] = {}  # subject (lowercased by the client) -> reason, per publish refused
        self._foreign_recorded: set[tuple[str, int]] = set()  # KV values this process recorded as foreign
        self._watch.refused = self._refused

    def _refused(self, subject: str, why: str) -> None:
        """The server refused a publish to ``subject`` (permissions): fail those in flight, remember it."""
        self.refusals[subject] = why
        self._publisher.refuse(subject, why)

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str],
        *,
        tenant: str,
        name: str,
        identity: Identity,
        nkey_auth: bool = False,
        inbox_prefix: str | None = None,
        limits: Limits = Limits(),
        max_in_flight: int = 1024,
        publish_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> Bus:
        """Connect, load the tenant's keyring and follow it.

        Args:
            servers: one URL or several (a cluster's, as a list or comma-separated); the
                connection moves to another of them when its server goes away, and never
                stops reconnecting.
            tenant: the tenant to work in.
            name: who this component is (the ``sender`` of what it signs).
            identity: its signing key.
            nkey_auth: authenticate to NATS with the identity's nkey.
            inbox_prefix: reply-subject prefix (a least-privilege user may subscribe only to its own).
            limits: receive limits (size, skew).
            max_in_flight: pipelined publishes awaiting their ack at once.
            publish_timeout_s: per-publish ack timeout (a timed-out publish is retried, same id).
            connect_timeout_s: connection timeout.
            clock: this component's clock, unix ns (the ``ts`` of what it signs).
        """
        check_name(tenant, what="tenant")
        check_name(name, what="agent")
        urls = split_servers(servers)
        watch = _ConnectionWatch()
        options: dict[str, object] = {
            **connect_options(urls, long_running=True),
            "name": f"trustbus:{tenant}:{name}",
            "connect_timeout": connect_timeout_s,
            "error_cb": watch.error,
            "disconnected_cb": watch.disconnected,
            "reconnected_cb": watch.reconnected,
        }
        if nkey_auth:
            options["nkeys_seed_str"] = identity.nkey_seed
        if inbox_prefix:
            options["inbox_prefix"] = inbox_prefix.encode()
        try:
            nc = await _client.connect(**options)
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(f"cannot connect to {', '.join(urls)}: {exc}") from exc
        try:
            js = await tenant_jetstream(nc, tenant, publish_async_max_pending=max_in_flight + 16)
            keyring = await KeyringStore.open(js, tenant)
            partitions = await tenant_partitions(js, tenant)
        except BaseException:
            await nc.close()
            raise
        return cls(
            nc,
            js,
            keyring,
            tenant=tenant,
            name=name,
            identity=identity,
            limits=limits,
            max_in_flight=max_in_flight,
            publish_timeout_s=publish_timeout_s,
            watch=watch,
            partitions=partitions,
            clock=clock,
        )

    # -- stored data ---------------------------------------------------------

    def bucket(self, name: str, *, direct: bool = False) -> Bucket:
        """The tenant's KV bucket ``name`` (``direct``: read with direct gets, as agents must)."""
        return NatsBucket(self._js, name, direct=direct)

    def log(self, subject: str, *, direct: bool = False, in_batches: bool = False) -> SubjectLog:
        """The records of the tenant stream on ``subject`` (``direct``: read with direct gets, as agents must;
        ``in_batches``: read long runs through consumers, as only the coordinator may)."""  # noqa: D205, D209
        return NatsSubjectLog(self._js, self._nc, self.stream, subject, direct=direct, in_batches=in_batches)

    @property
    def connected(self) -> bool:
        """Whether the connection to a server is up now (not lost, reconnecting or closed)."""
        return bool(self._nc.is_connected)

    async def consumer_exists(self, durable: str) -> bool:
        """Whether the tenant stream has the durable consumer ``durable``; TransportError if that cannot be told."""
        try:
            await self._js.consumer_info(self.stream, durable)
        except NATS_ERRORS as exc:
            error = translated(exc, f"read consumer {durable}")
            if isinstance(error, NotFound):
                return False
            raise error from exc
        return True

    async def allows_direct_gets(self) -> bool:
        """Whether the tenant stream answers direct gets (``allow_direct``); TransportError if it cannot be read."""
        try:
            info = await self._js.stream_info(self.stream)
        except NATS_ERRORS as exc:
            raise translated(exc, f"read stream {self.stream}") from exc
        return bool(info.config.allow_direct)

    async def last_seq(self) -> int:
        """The tenant stream's last sequence now (see :meth:`bus.TenantStream.last_seq`)."""
        return await self.reader().last_seq()

    def reader(self) -> TenantStream:
        """Read the tenant's whole stream and its keyring over this connection."""
        return TenantStream(self._js, self.tenant)

    def durable_reader(self, settings: DurableSettings) -> DurableReader:
        """The tenant stream through the durable consumer named after this component (see :class:`DurableReader`)."""
        return DurableReader(self._js, self.tenant, self.name, settings, refusals=self.refusals)

    def work_queue(self, stream: str, consumer: str, settings: WorkQueueSettings) -> WorkQueue:
        """The durable consumer ``consumer`` of the work-queue stream ``stream`` (see :class:`WorkQueue`)."""
        return WorkQueue(self._js, stream, consumer, settings)

    # -- publishing ---------------------------------------------------------

    def partition(self, correlation_id: str) -> int:
        """The tenant partition ``correlation_id`` belongs to."""
        return partition_of(correlation_id, self.partitions)

    def outbox(self, envelope: Envelope) -> str:
        """This component's outbox subject for ``envelope``: the partition of its correlation."""
        return outbox(self.tenant, self.name, self.partition(envelope.correlation_id))

    async def send(self, envelope: Envelope) -> PubAck:
        """Sign ``envelope`` as this component and publish it to its outbox, for the coordinator to mediate."""
        return await self.publish(self.outbox(envelope), self.seal(envelope))

    def seal(self, envelope: Envelope) -> Sealed:
        """Sign ``envelope`` with this component's identity."""
        return seal(envelope, self.identity)

    async def publish(self, subject: str, sealed: Sealed, *, headers: Mapping[str, str] | None = None) -> PubAck:
        """Publish and wait for the stream's ack; a resend of a stored id comes back ``duplicate``."""
        ack = await self._publisher.start(
            subject, sealed.body, {**sealed.headers, **(headers or {})}, report_failure_on_flush=False
        )
        return await ack

    async def publish_pipelined(
        self, subject: str, sealed: Sealed, *, headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Start a publish once a slot is free and return a future for its ack.

        At most ``max_in_flight`` publishes await their ack at once; each is
        bounded by the publish timeout and re-sent with the same
        ``Nats-Msg-Id`` if it times out (a timeout does not mean the message
        was not stored). Call :meth:`flush` to wait for all of them: it raises
        if any failed, so a pipelined publish is never lost silently.
        """
        return await self._publisher.start(subject, sealed.body, {**sealed.headers, **(headers or {})})

    async def forward(self, subject: str, body: bytes, headers: Mapping[str, str]) -> asyncio.Future[PubAck]:
        """Publish bytes someone else signed, unchanged, with the given headers; returns the ack future."""
        return await self._publisher.start(subject, body, dict(headers), report_failure_on_flush=False)

    async def flush(self, *, timeout_s: float = 30.0) -> None:
        """Wait for every pipelined publish to be acked; raise TransportError if any failed."""
        await self._publisher.flush(timeout_s=timeout_s)

    # -- consuming ----------------------------------------------------------

    async def ensure_consumer(
        self, durable: str, subject: str | Sequence[str], *, settings: ConsumerSettings = ConsumerSettings()
    ) -> None:
        """Create the durable pull consumer ``durable`` on ``subject`` (or several) if it does not exist."""
        check_name(durable, what="consumer")
        several = not isinstance(subject, str)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=None if several else subject,  # type: ignore[arg-type]
            filter_subjects=list(subject) if several else None,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=settings.max_ack_pending,
            max_deliver=settings.max_deliver,
            ack_wait=settings.ack_wait_s,
        )
        try:
            await self._js.add_consumer(self.stream, config=config)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot create consumer {durable}: {exc}") from exc

    async def consume(
        self,
        durable: str,
        *,
        settings: ConsumerSettings = ConsumerSettings(),
        recipient: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[Delivery]:
        """Yield verified deliveries from the durable pull consumer ``durable``, one at a time.

        Messages that fail verification are quarantined and terminated here and
        never yielded. Each yielded :class:`Delivery` must be settled (``ack``,
        ``nak`` or ``reject``), most simply with ``async with delivery.process()``.

        Args:
            durable: an existing durable consumer (see :meth:`ensure_consumer`).
            settings: fetch batch and timeouts.
            recipient: if set, accept only envelopes the coordinator countersigned for it.
            stop: set it to stop after the current batch.
        """
        async for batch in self.consume_batches(durable, settings=settings, recipient=recipient, stop=stop):
            for delivery in batch:
                yield delivery

    async def consume_batches(
        self,
        durable: str,
        *,
        settings: ConsumerSettings = ConsumerSettings(),
        recipient: str | None = None,
        stop: asyncio.Event | None = None,
        rejections: RejectionLog | None = None,
        screen: Callable[[str], tuple[str, str] | None] | None = None,
    ) -> AsyncGenerator[list[Delivery], None]:
        """Like :meth:`consume`, but yield each fetch's verified deliveries together, in stream order.

        An envelope id that appears twice in one fetch is quarantined as
        ``replayed`` the second time, as it would be one delivery at a time.

        Args:
            durable: as for :meth:`consume`.
            settings: as for :meth:`consume`.
            recipient: as for :meth:`consume`.
            stop: as for :meth:`consume`.
            rejections: record what fails verification there, in aggregate (see
                :class:`~bus.RejectionLog`), instead of one quarantine record each.
            screen: asked first about each message's subject; a ``(reason, detail)`` refuses it unverified.
        """
        try:
            sub = await self._js.pull_subscribe_bind(durable, stream=self.stream)
            info = await self._js.consumer_info(self.stream, durable)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot bind consumer {durable}: {exc}") from exc
        if info.config.max_deliver and info.config.max_deliver > 0:
            # The server stops redelivering at its own max_deliver: quarantine on that attempt.
            settings = dataclasses.replace(settings, max_deliver=info.config.max_deliver)
        if info.config.ack_wait:
            settings = dataclasses.replace(settings, ack_wait_s=info.config.ack_wait)
        # Mediated deliveries come only from the coordinator (server permissions), which
        # forwards each (envelope, recipient) once; an inbox reader need not read back.
        seen = SeenIds(window_ns=self.limits.skew_ns) if recipient else await self._recently_accepted(info)
        outage = 0
        try:
            while stop is None or not stop.is_set():
                try:
                    msgs = await sub.fetch(settings.batch, timeout=settings.fetch_timeout_s)
                except TimeoutError:  # nats-py raises its own subclass or plain asyncio.TimeoutError
                    if rejections is not None:
                        await rejections.flush()  # gone quiet: record what waits
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    if not unavailable(exc):
                        raise TransportError(f"cannot fetch from consumer {durable}: {exc}") from exc
                    # The consumer has no leader for now (a cluster node went away): ask again shortly.
                    if outage == 0:
                        log.warning("consumer unavailable; fetching again", extra={"consumer": durable})
                    await _pause(_OUTAGE_PAUSES_S[min(outage, len(_OUTAGE_PAUSES_S) - 1)], stop)
                    outage += 1
                    continue
                outage = 0
                seen.prune(time.time_ns())
                batch: list[Delivery] = []
                in_batch: set[str] = set()
                for index, msg in enumerate(msgs, start=1):
                    if rejections is not None and index % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let other readers' work run between checks of a flood
                    refused = screen(msg.subject) if screen is not None else None
                    if refused is not None and rejections is not None:
                        rejections.add(msg, reason=refused[0], detail=refused[1])
                        continue
                    delivery = await self._verify(msg, seen, settings, recipient, rejections)
                    if delivery is None:
                        continue
                    if delivery.envelope.id in in_batch:
                        await self.quarantine_msg(msg, reason="replayed", detail="the same id twice in one fetch")
                        continue
                    in_batch.add(delivery.envelope.id)
                    batch.append(delivery)
                if rejections is not None:
                    await rejections.flush(due_only=True)
                if batch:
                    yield batch
        finally:
            if rejections is not None and self._nc.is_connected:
                with contextlib.suppress(TransportError, TimeoutError):
                    await asyncio.wait_for(rejections.flush(), self._publish_timeout_s)
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await sub.unsubscribe()

    async def _recently_accepted(self, info: ConsumerInfo) -> SeenIds:
        """Ids this consumer was already handed within the replay window, read back from the stream.

        A restarted consumer would otherwise forget them, and a replay of one
        (same bytes, fresh ``Nats-Msg-Id``) inside the skew window would pass.
        It reads up to the last message delivered, not the ack floor: messages
        acked out of order sit above the floor and are never delivered again.
        Those above the floor are remembered as not known to be settled: one
        still pending comes back at its own sequence and is handled, not a replay.
        Each id keeps its first position, so a replayed copy cannot take it over.
        Only envelopes that verify are remembered, so a forged envelope cannot
        claim a legitimate id in advance. Best effort: a user without the right
        to create a consumer starts with an empty set (logged).
        """
        seen = SeenIds(window_ns=self.limits.skew_ns)
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        last = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
        if last == 0:
            return seen
        since = time.time_ns() - 2 * self.limits.skew_ns
        # Only this consumer's traffic, in stream order, from the window's start through the last delivered.
        subjects = list(info.config.filter_subjects or []) or [info.config.filter_subject or all_subjects(self.tenant)]
        reading = read_in_order(self._js, self.stream, subjects, start=Start(stored_ns=since), last=last)
        try:
            async with contextlib.aclosing(verified(reading, self.keyring, self.tenant, self.limits)) as items:
                async for item in items:
                    if item.opened is not None and seen.sequence_of(item.opened.envelope.id) is None:
                        seen.add(item.opened.envelope, item.stream_seq, settled=item.stream_seq <= floor)
        except BusError as exc:
            log.warning("could not read back recently accepted ids", extra={"consumer": info.name, "error": str(exc)})
        return seen

    async def _verify(
        self,
        msg: Msg,
        seen: SeenIds,
        settings: ConsumerSettings,
        recipient: str | None,
        rejections: RejectionLog | None = None,
    ) -> Delivery | None:
        meta = msg.metadata
        seq = meta.sequence.stream
        headers = msg.headers or {}
        key_id = headers.get(HEADER_KEY, "")
        if key_id and not self.keyring.keyring.knows(key_id):
            await self.keyring.refresh_key(key_id)
        try:
            opened = open_envelope(
                msg.data,
                headers,
                keyring=self.keyring.keyring,
                received_ns=_stored_ns(meta),
                limits=self.limits,
                seen=seen,
                stream_seq=seq,
                recipient=recipient,
                at_store=judged_at_store(self.tenant, msg.subject),
            )
        except VerificationError as exc:
            if rejections is not None:
                rejections.add(msg, reason=exc.reason, detail=exc.detail)
            else:
                await self.quarantine_msg(msg, reason=exc.reason, detail=exc.detail)
            return None
        if seen.settled_at(opened.envelope.id) == seq:
            await msg.ack()  # redelivered after an ack that was lost: already handled
            return None
        return Delivery(self, msg, meta, opened, seen, settings)

    async def quarantine_msg(self, msg: Msg, *, reason: str, detail: str) -> None:
        """Publish a quarantine record for ``msg`` and terminate it; on failure nak it for later."""
        seq = msg.metadata.sequence.stream if msg.reply else None
        try:
            await self.record_quarantine(
                msg.data, msg.headers, subject=msg.subject, stream_seq=seq, reason=reason, detail=detail
            )
        except TransportError:
            log.exception("quarantine publish failed; message left for redelivery")
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.term()

    async def record_quarantine(
        self,
        body: bytes,
        headers: Mapping[str, str] | None,
        *,
        subject: str,
        stream_seq: int | None,
        reason: str,
        detail: str,
        msg_id: str | None = None,
    ) -> None:
        """Publish a signed quarantine record for a refused or abandoned message; TransportError if not stored.

        ``msg_id`` replaces the envelope id as the stream's duplicate id: derive it from what is
        recorded, and recording the same thing again (after a crash) is a no-op.
        """
        record = quarantine_record(body, headers, reason=reason, detail=detail, subject=subject, stream_seq=stream_seq)
        log.info(
            "quarantined",
            extra={
                "reason": reason,
                "subject": subject,
                "stream_seq": stream_seq,
                "claimed_sender": record.claimed_sender,
            },
        )
        envelope = new_envelope(
            tenant=self.tenant,
            kind="event",
            sender=self.name,
            to=("topic:quarantine",),
            content_type="application/msgpack",
            payload=encode_quarantine_record(record),
            idempotency_key=f"quarantine:{self.stream}:{stream_seq}" if stream_seq is not None else None,
            now_ns=self.clock(),
        )
        await self.publish(
            quarantine(self.tenant), self.seal(envelope), headers={HEADER_MSG_ID: msg_id} if msg_id else None
        )

    async def record_foreign_value(
        self, subject: str, revision: int, body: bytes, headers: Mapping[str, str] | None, *, detail: str
    ) -> None:
        """Record once that the KV value at ``subject`` (``revision``) is not what that key holds (``foreign``).

        Once per value: this process remembers it, and the stream's duplicate window drops
        another reader's copy. Best effort: a failure is logged, the reader carries on.
        """
        if (subject, revision) in self._foreign_recorded:
            return
        try:
            await self.record_quarantine(
                body,
                headers,
                subject=subject,
                stream_seq=None,  # a KV revision, not a position in the tenant stream
                reason="foreign",
                detail=f"revision {revision}: {detail}",
                msg_id=f"foreign:{subject}:{revision}",
            )
        except TransportError as exc:
            log.warning("foreign value not recorded", extra={"subject": subject, "error": str(exc)})
            return
        self._foreign_recorded.add((subject, revision))

    async def aclose(self) -> None:
        """Wait briefly for in-flight publishes, stop the keyring follower, drain and close."""
        try:
            await self.flush(timeout_s=self._publish_timeout_s)
        except (TimeoutError, TransportError):
            log.exception("publishes still failing or outstanding at close")
        await self._publisher.aclose()
        await self.keyring.aclose()
        self._watch.closing = True
        if self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.drain()
        with contextlib.suppress(OSError):  # the socket already lost: nothing is left to flush
            await self._nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def rejection(exc: Exception) -> tuple[str, str]:
    """The reason code and detail to quarantine a message with when handling it raised ``exc``."""
    if isinstance(exc, VerificationError):
        return exc.reason, exc.detail
    return "handler_error", f"{type(exc).__name__}: {exc}"


class Delivery:
    """One verified message from a consumer, to be settled exactly once."""

    def __init__(
        self,
        bus: Bus,
        msg: Msg,
        meta: Msg.Metadata,
        opened: Opened,
        seen: SeenIds,
        settings: ConsumerSettings,
    ) -> None:
        """Made by :meth:`Bus.consume`."""
        self._bus = bus
        self._msg = msg
        self._seen = seen
        self._settings = settings
        self.opened = opened
        self.envelope = opened.envelope
        self.subject: str = msg.subject
        self.stream_seq: int = meta.sequence.stream
        self.stored_ns: int = _stored_ns(meta)
        self.attempt: int = meta.num_delivered
        self.settled = False
        self.headers: Mapping[str, str] = msg.headers or {}
        self.body: bytes = msg.data

    async def ack(self) -> None:
        """The handler finished: never deliver this again."""
        self.settled = True
        await self._msg.ack()
        self._seen.add(self.envelope, self.stream_seq)

    async def nak(self, *, delay_s: float | None = None) -> None:
        """Deliver again later (with backoff); on the last attempt, quarantine instead."""
        self.settled = True
        if self.attempt >= self._settings.max_deliver:
            await self._bus.quarantine_msg(self._msg, reason="max_deliver", detail=f"failed {self.attempt} deliveries")
            return
        if delay_s is None:
            backoff = self._settings.backoff_s
            delay_s = backoff[min(self.attempt - 1, len(backoff) - 1)]
        await self._msg.nak(delay=delay_s)

    async def defer(self, delay_s: float) -> None:
        """Deliver again after ``delay_s`` without counting it as a failure (e.g. a rate limit)."""
        self.settled = True
        await self._msg.nak(delay=delay_s)

    async def reject(self, reason: str, detail: str) -> None:
        """Poison: quarantine with ``reason`` and never deliver again."""
        self.settled = True
        await self._bus.quarantine_msg(self._msg, reason=reason, detail=detail)

    @contextlib.asynccontextmanager
    async def process(self) -> AsyncIterator[Delivery]:
        """Ack when the block succeeds (unless it settled the delivery itself).

        While the block runs, the server is told every third of ``ack_wait``
        that the message is in progress. A :class:`TransientError` or a
        :class:`~bus.TransportError` (NATS unavailable) naks it for a later
        retry; a :class:`~bus.VerificationError` (say, a payload the handler
        could not parse) quarantines it with its own reason; any other
        exception quarantines it as ``handler_error``. The
        exception is logged and recorded, not re-raised, so one poison message
        never stops the consumer.
        """
        heartbeat = _Heartbeat(self._msg, self._settings.ack_wait_s / 3)
        try:
            yield self
        except (TransientError, TransportError) as exc:
            log.warning("transient handler error, will retry", extra={"stream_seq": self.stream_seq, "error": str(exc)})
            if not self.settled:
                await self.nak()
        except Exception as exc:
            log.exception("handler failed; quarantining", extra={"stream_seq": self.stream_seq})
            if not self.settled:
                await self.reject(*rejection(exc))
        else:
            if not self.settled:
                await self.ack()
        finally:
            heartbeat.stop()


class _Heartbeat:
    """Tells the server a message is still being worked on, every ``interval`` seconds, until stopped.

    A timer, not a task per message: most handlers finish before the first beat.
    """

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg = msg
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(interval, self._beat)
        self._beats: set[asyncio.Task[None]] = set()

    def _beat(self) -> None:
        task = self._loop.create_task(self._in_progress())
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)
        self._handle = self._loop.call_later(self._interval, self._beat)

    async def _in_progress(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._msg.in_progress()

    def stop(self) -> None:
        self._handle.cancel()


_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class _ConnectionWatch:
    """Logs losing and regaining the server (not the disconnect of a deliberate close) and its errors.

    A publish the server refuses (a permissions violation) is only reported here, as an
    asynchronous error: ``refused`` fails the publishes to that subject at once, instead of
    letting them time out and be re-sent.
    """

    def __init__(self) -> None:
        self.closing = False
        self.refused: Callable[[str, str], None] | None = None

    async def error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)
        match = _PUBLISH_REFUSED.search(str(exc))
        if match and self.refused is not None:
            self.refused(match.group(1), str(exc))

    async def disconnected(self) -> None:
        if not self.closing:
            log.warning("disconnected from NATS; reconnecting to any of the given servers")

    async def reconnected(self) -> None:
        log.warning("reconnected to NATS")
