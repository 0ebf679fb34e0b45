"""Consuming a durable pull consumer of the tenant stream: provisioning it and yielding verified deliveries.

Every message is verified (signature, keyring, skew, replay) before it is
handed out; what fails is quarantined (or, with a :class:`~bus.RejectionLog`,
recorded in aggregate) and terminated, never yielded. A consumer that restarts
reads back the ids it already handed out within the replay window, so a
replay cannot slip in across the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from trustbus.bus._delivery import Delivery, Heartbeat
from trustbus.bus._errors import BusError, TransportError, VerificationError
from trustbus.bus._in_order import Start, read_in_order
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._quarantiner import Quarantiner
from trustbus.bus._rejections import RejectionLog
from trustbus.bus._seal import HEADER_KEY, Limits, SeenIds, open_envelope
from trustbus.bus._stored import unix_ns
from trustbus.bus._subjects import all_subjects, check_name, judged_at_store, stream_name
from trustbus.bus._tail import verified
from trustbus.bus._translate import unavailable

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


class Consumers:
    """The durable pull consumers of ``tenant``'s stream, read over one connection.

    Args:
        nc: the connection.
        js: its JetStream context.
        tenant: the tenant.
        keyring: the tenant's keyring, followed.
        limits: receive limits (size, skew).
        quarantiner: records what is refused.
        publish_timeout_s: how long a last record of refusals may take when consuming stops.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        tenant: str,
        keyring: KeyringStore,
        limits: Limits,
        quarantiner: Quarantiner,
        publish_timeout_s: float,
    ) -> None:
        """Read nothing yet; see :meth:`ensure` and :meth:`batches`."""
        self._nc = nc
        self._js = js
        self._tenant = tenant
        self._stream = stream_name(tenant)
        self._keyring = keyring
        self._limits = limits
        self._quarantiner = quarantiner
        self._publish_timeout_s = publish_timeout_s

    async def ensure(
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
            await self._js.add_consumer(self._stream, config=config)
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
        """Verified deliveries of ``durable``, one at a time (see :meth:`Bus.consume`).

        The deliveries of a fetch still waiting their turn are told to the server as
        in progress too: behind a slow handler they would otherwise be delivered
        again after ``ack_wait``, spending deliveries towards ``max_deliver``.
        """
        async for batch in self.batches(durable, settings=settings, recipient=recipient, stop=stop):
            waiting = Heartbeat(batch, settings.ack_wait_s / 3)
            try:
                for delivery in batch:
                    yield delivery
            finally:
                waiting.stop()

    async def batches(
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
        """Verified deliveries of ``durable``, a fetch at a time (see :meth:`Bus.consume_batches`)."""
        try:
            sub = await self._js.pull_subscribe_bind(durable, stream=self._stream)
            info = await self._js.consumer_info(self._stream, durable)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot bind consumer {durable}: {exc}") from exc
        if info.config.max_deliver and info.config.max_deliver > 0:
            # The server stops redelivering at its own max_deliver: quarantine on that attempt.
            settings = dataclasses.replace(settings, max_deliver=info.config.max_deliver)
        if info.config.ack_wait:
            settings = dataclasses.replace(settings, ack_wait_s=info.config.ack_wait)
        # Mediated deliveries come only from the coordinator (server permissions), which
        # forwards each (envelope, recipient) once; an inbox reader need not read back.
        if recipient:
            seen = SeenIds(window_ns=self._limits.skew_ns)
        else:
            seen = await self._recently_accepted(info, read_back_settled)
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
                        await self._quarantiner.quarantine_msg(
                            msg, reason="replayed", detail="the same id twice in one fetch"
                        )
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

    async def _recently_accepted(self, info: ConsumerInfo, settled_subjects: Sequence[str] | None) -> SeenIds:
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

        ``settled_subjects``: of the consumer's filter subjects, those whose messages at or below the ack
        floor are read back too (None: all); the others are read back only above the floor.
        """
        seen = SeenIds(window_ns=self._limits.skew_ns)
        floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        last = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
        if last == 0:
            return seen
        window_ns = time.time_ns() - 2 * self._limits.skew_ns
        since = Start(stored_ns=window_ns)
        # Only this consumer's traffic, in stream order, from the window's start through the last delivered.
        subjects = list(info.config.filter_subjects or []) or [info.config.filter_subject or all_subjects(self._tenant)]
        if settled_subjects is None:
            reads = [(subjects, since)]
        else:  # the window of the subjects asked for; what is not yet settled of the others, within the window
            others = [s for s in subjects if s not in settled_subjects]
            reads = [(list(settled_subjects), since)] if settled_subjects else []
            if others and floor < last:
                unsettled = Start(seq=floor + 1)
                reads.append(
                    (others, since if await self._stored_before(others, unsettled, last, window_ns) else unsettled)
                )
        began, read = time.perf_counter(), 0
        for filters, start in reads:
            reading = read_in_order(self._js, self._stream, filters, start=start, last=last)
            try:
                async with contextlib.aclosing(verified(reading, self._keyring, self._tenant, self._limits)) as items:
                    async for item in items:
                        read += 1
                        if item.opened is None:
                            continue
                        earlier = seen.sequence_of(item.opened.envelope.id)
                        if earlier is None or earlier > item.stream_seq:
                            seen.add(item.opened.envelope, item.stream_seq, settled=item.stream_seq <= floor)
            except BusError as exc:
                log.warning(
                    "could not read back recently accepted ids", extra={"consumer": info.name, "error": str(exc)}
                )
        log.info(
            "read back recently accepted ids",
            extra={"consumer": info.name, "messages": read, "seconds": round(time.perf_counter() - began, 3)},
        )
        return seen

    async def _stored_before(self, subjects: list[str], start: Start, last: int, at_ns: int) -> bool:
        """Whether the first message on ``subjects`` from ``start`` through ``last`` was stored before ``at_ns``."""
        reading = read_in_order(self._js, self._stream, subjects, start=start, last=last, batch=1)
        try:
            async with contextlib.aclosing(reading):
                async for msgs in reading:
                    return bool(msgs) and unix_ns(msgs[0].metadata.timestamp) < at_ns
        except BusError:
            return False
        return False

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
        await self._keyring.knowing(key_id)
        try:
            opened = open_envelope(
                msg.data,
                headers,
                keyring=self._keyring.keyring,
                received_ns=unix_ns(meta.timestamp),
                limits=self._limits,
                seen=seen,
                stream_seq=seq,
                recipient=recipient,
                at_store=judged_at_store(self._tenant, msg.subject),
            )
        except VerificationError as exc:
            if rejections is not None:
                rejections.add(msg, reason=exc.reason, detail=exc.detail)
            else:
                await self._quarantiner.quarantine_msg(msg, reason=exc.reason, detail=exc.detail)
            return None
        if seen.settled_at(opened.envelope.id) == seq:
            await msg.ack()  # redelivered after an ack that was lost: already handled
            return None
        return Delivery(self._quarantiner, msg, meta, opened, seen, settings)
