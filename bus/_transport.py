"""The Bus client: one component's connection to one tenant, and what it signs and publishes.

Publishes are sealed with the component's identity and pipelined with a bound on
those in flight. Consuming durable consumers is :mod:`bus._consumer`'s job, and
recording what was refused :mod:`bus._quarantiner`'s; a :class:`Bus` hands both
its connection and identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from trustbus.bus import _client
from trustbus.bus._api import tenant_jetstream
from trustbus.bus._bucket import NatsBucket
from trustbus.bus._connection import ConnectionWatch, connect_options, redacted, split_servers
from trustbus.bus._consumer import Consumers, ConsumerSettings
from trustbus.bus._delivery import Delivery
from trustbus.bus._discovery import ServiceResponder, process_metadata
from trustbus.bus._durable_reader import DurableReader, DurableSettings
from trustbus.bus._envelope import Envelope
from trustbus.bus._errors import NotFound, TransportError
from trustbus.bus._identity import Identity
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._log import NatsSubjectLog
from trustbus.bus._metrics import ConsumerLag
from trustbus.bus._provision import tenant_partitions
from trustbus.bus._publisher import Publisher
from trustbus.bus._quarantiner import Quarantiner
from trustbus.bus._rejections import RejectionLog
from trustbus.bus._seal import Limits, Sealed, seal
from trustbus.bus._stores import Bucket, SubjectLog
from trustbus.bus._subjects import check_name, outbox, partition_of, stream_name
from trustbus.bus._tenant_stream import TenantStream
from trustbus.bus._translate import NATS_ERRORS, translated
from trustbus.bus._work_queue import WorkQueue, WorkQueueSettings

log = logging.getLogger("trustbus.bus")


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
        watch: ConnectionWatch | None = None,
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
        self._watch = watch or ConnectionWatch()
        self.refusals: dict[str, str] = {}  # subject (lowercased by the client) -> reason, per publish refused
        self._watch.refused = self._refused
        self._quarantiner = Quarantiner(self)
        self._consumers = Consumers(
            nc,
            js,
            tenant=tenant,
            keyring=keyring,
            limits=limits,
            quarantiner=self._quarantiner,
            publish_timeout_s=publish_timeout_s,
        )

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
        watch = ConnectionWatch()
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
            raise TransportError(f"cannot connect to {', '.join(redacted(u) for u in urls)}: {exc}") from exc
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
        return NatsBucket(self._js, name, direct=direct, nc=self._nc)

    def log(self, subject: str, *, direct: bool = False, in_batches: bool = False) -> SubjectLog:
        """The records of the tenant stream on ``subject`` (``direct``: read with direct gets, as agents must;
        ``in_batches``: read long runs through consumers, as only the coordinator may)."""  # noqa: D205, D209
        return NatsSubjectLog(self._js, self._nc, self.stream, subject, direct=direct, in_batches=in_batches)

    def discoverable(self, role: str, stats: Callable[[], Mapping[str, object]]) -> ServiceResponder:
        """Answer NATS service discovery as ``trustbus-<role>`` while open (``async with``; bus._discovery).

        ``stats``: the figures of its work ``$SRV.STATS`` reports, read on the event loop.
        """
        metadata = process_metadata(self.tenant, self.name)
        return ServiceResponder(self._nc, f"trustbus-{role}", metadata=metadata, stats=stats)

    @property
    def connected(self) -> bool:
        """Whether the connection to a server is up now (not lost, reconnecting or closed)."""
        return bool(self._nc.is_connected)

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established (to this server or another of the cluster)."""
        return int(self._nc.stats["reconnects"])

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

    async def consumer_lag(self, durable: str) -> ConsumerLag:
        """What the durable consumer ``durable`` has not yet delivered or had acked; TransportError if unread."""
        try:
            info = await self._js.consumer_info(self.stream, durable)
        except NATS_ERRORS as exc:
            raise translated(exc, f"read consumer {durable}") from exc
        return ConsumerLag(info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)

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
        await self._consumers.ensure(durable, subject, settings=settings)

    def consume(
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
        return self._consumers.consume(durable, settings=settings, recipient=recipient, stop=stop)

    def consume_batches(
        self,
        durable: str,
        *,
        settings: ConsumerSettings = ConsumerSettings(),
        recipient: str | None = None,
        stop: asyncio.Event | None = None,
        rejections: RejectionLog | None = None,
        screen: Callable[[str], tuple[str, str] | None] | None = None,
        read_back_settled: Sequence[str] | None = None,
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
            read_back_settled: at start, the filter subjects whose settled messages (at or below the
                consumer's ack floor) are read back within the replay window; None: all of them. What was
                delivered and not yet settled is always read back. A caller that leaves a subject out must
                recognise a replay of an envelope settled there itself (the coordinator: by its decisions),
                and starts without reading that subject's recent traffic again.
        """
        return self._consumers.batches(
            durable,
            settings=settings,
            recipient=recipient,
            stop=stop,
            rejections=rejections,
            screen=screen,
            read_back_settled=read_back_settled,
        )

    # -- quarantine ---------------------------------------------------------

    async def quarantine_msg(self, msg: Msg, *, reason: str, detail: str) -> None:
        """Publish a quarantine record for ``msg`` and terminate it; on failure nak it for later."""
        await self._quarantiner.quarantine_msg(msg, reason=reason, detail=detail)

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
        await self._quarantiner.record_quarantine(
            body, headers, subject=subject, stream_seq=stream_seq, reason=reason, detail=detail, msg_id=msg_id
        )

    async def record_foreign_value(
        self, subject: str, revision: int, body: bytes, headers: Mapping[str, str] | None, *, detail: str
    ) -> None:
        """Record once that the KV value at ``subject`` (``revision``) is not what that key holds (``foreign``).

        Once per value: this process remembers it, and the stream's duplicate window drops
        another reader's copy. Best effort: a failure is logged, the reader carries on.
        """
        await self._quarantiner.record_foreign_value(subject, revision, body, headers, detail=detail)

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
