"""Reading the tenant stream through a durable pull consumer that resumes exactly after a committed position.

The consumer is named after the reader's component (the one consumer a
rendered server config lets a ``ledger`` user create, read, ack and delete). On
opening, and whenever a delivery is missing, the consumer is kept only if it
would hand out exactly the sequence after the caller's committed position;
otherwise it is deleted and made again from there. Acks use policy ``all``:
one ack settles everything read through it, and the caller acks only what it
has committed, so a crash never skips a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from trustbus.bus._errors import NotFound, Timeout, TransportError
from trustbus.bus._signals import unless_stopped
from trustbus.bus._stored import StoredMessage, stored_message
from trustbus.bus._subjects import all_subjects, stream_name
from trustbus.bus._translate import NATS_ERRORS, translated, unavailable

log = logging.getLogger("trustbus.bus")

READ_RETRY_S = 0.5  # pause after a failed read of the consumer, before making it anew
OPEN_PAUSES_S = (0.5, 1.0, 2.0, 5.0)  # between attempts to open the consumer while a cluster elects (the last repeats)


@dataclass(frozen=True, slots=True)
class DurableSettings:
    """How the durable consumer is configured and read.

    Attributes:
        batch: messages taken from the consumer at once.
        ack_wait_s: the consumer's ack wait.
        max_ack_pending: messages delivered and not yet acked.
    """

    batch: int
    ack_wait_s: float
    max_ack_pending: int


class DurableReader:
    """One durable pull consumer ``name`` over the whole tenant stream, read in order, resumed after a position.

    Make it with :meth:`bus.Bus.durable_reader`. Call :meth:`open` first, then
    :meth:`next_batch` in a loop; :meth:`ack` settles everything read so far.
    """

    def __init__(
        self,
        js: JetStreamContext,
        tenant: str,
        name: str,
        settings: DurableSettings,
        *,
        refusals: dict[str, str],
    ) -> None:
        """Read ``tenant``'s stream through the consumer ``name``; ``refusals``: the connection's refused subjects."""
        self._js = js
        self.tenant = tenant
        self.stream = stream_name(tenant)
        self.name = name
        self.settings = settings
        self._refusals = refusals
        self._sub: JetStreamContext.PullSubscription | None = None
        self._last_delivery = 0  # the consumer's delivery sequence of the last message read
        self._unacked: Msg | None = None  # the newest message read and not acked

    def _config(self, start: int) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            filter_subject=all_subjects(self.tenant),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=self.settings.max_ack_pending,
            max_deliver=-1,
        )

    def _stale(self, info: ConsumerInfo, after: int) -> str | None:
        """Why the consumer ``info`` cannot be read on from sequence ``after`` + 1 as it is (None: it can)."""
        config, wanted = info.config, self._config(after + 1)
        for field in ("filter_subject", "ack_policy", "ack_wait", "max_ack_pending", "deliver_subject"):
            if getattr(config, field) != getattr(wanted, field):
                return f"its {field} is {getattr(config, field)!r}, not {getattr(wanted, field)!r}"
        if config.filter_subjects:
            return f"it filters on {config.filter_subjects}"
        delivered = info.delivered.stream_seq if info.delivered else 0
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if delivered != after or floor != after or info.num_ack_pending:
            return (
                f"it delivered through {delivered} with {info.num_ack_pending or 0} unacked "
                f"(ack floor {floor}), the projection is at {after}"
            )
        return None

    async def open(self, after: int, *, reuse: bool, stop: asyncio.Event) -> None:
        """Bind to the consumer, first (re)making it if it would not hand out exactly ``after`` + 1 next.

        ``reuse``: keep an existing consumer whose state matches ``after``
        (a clean restart); otherwise (a delivery went missing) always make it anew.
        While the stream or consumer has no leader (a cluster node went away), the
        JetStream API answers 503 or not at all: that is retried for as long as it
        lasts, or until ``stop`` is set (then it returns with no consumer). A
        request the server refused for permissions (it answers those not at all
        either, but says so on the connection) raises at once.

        Raises:
            TransportError: the consumer cannot be opened, and waiting will not change that.
        """
        pauses = iter(OPEN_PAUSES_S)
        while True:
            self._refusals.clear()
            try:
                await unless_stopped(self._try_open(after, reuse=reuse), stop)  # its requests may wait seconds
                return
            except TransportError as exc:
                cause = exc.__cause__
                transient = cause is not None and (unavailable(cause) or isinstance(cause, nats.errors.TimeoutError))
                refused = [f"{s}: {why}" for s, why in self._refusals.items() if s.lower().startswith("$js.api.")]
                if refused:
                    raise TransportError(f"{exc}; the server refused {refused[0]}") from exc
                if not transient:
                    raise
                log.warning(
                    "consumer not reachable (a leader election?); trying again",
                    extra={"consumer": self.name, "error": str(exc)},
                )
                with contextlib.suppress(TimeoutError):  # pacing: no event announces a new leader
                    await asyncio.wait_for(stop.wait(), next(pauses, OPEN_PAUSES_S[-1]))
                if stop.is_set():
                    return

    async def _try_open(self, after: int, *, reuse: bool) -> None:
        await self.aclose()
        js, stream, name = self._js, self.stream, self.name
        try:
            try:
                info: ConsumerInfo | None = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                info = None
            why = "a delivery went missing" if not reuse else None if info is None else self._stale(info, after)
            if info is not None and why is not None:
                log.warning("consumer reset", extra={"consumer": name, "reason": why, "from_seq": after + 1})
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(stream, name)
                info = None
            if info is None:
                info = await js.add_consumer(stream, self._config(after + 1))
                log.info("consumer created", extra={"consumer": name, "from_seq": after + 1})
            self._sub = await js.pull_subscribe_bind(name, stream=stream, pending_msgs_limit=4 * self.settings.batch)
        except NATS_ERRORS as exc:
            error = translated(exc, f"cannot open consumer {name} on stream {stream}")
            if isinstance(error, NotFound):
                raise NotFound(
                    f"stream {stream} does not exist: was the server's store replaced (`trustbus up` without --data "
                    "removes it at exit)? `trustbus init` makes it anew for its tenant"
                ) from exc
            if isinstance(error, Timeout):  # a rendered config's server does not answer what a user may not ask
                raise Timeout(
                    f"{error} (under a rendered server config the ledger role may create, read and delete only the "
                    "consumer named after it: render again and reload)"
                ) from exc
            raise error from exc
        self._last_delivery = info.delivered.consumer_seq if info.delivered else 0
        self._unacked = None

    async def aclose(self) -> None:
        """Stop reading (the consumer stays on the server)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    async def ack(self) -> None:
        """Ack (policy all: everything through it) the newest message read; call only once all of it is committed."""
        msg, self._unacked = self._unacked, None
        if msg is None:
            return
        try:
            await msg.ack()
        except NATS_ERRORS as exc:
            # Harmless: the next ack covers it, and a restart makes the consumer anew.
            log.warning("ack failed", extra={"stream_seq": msg.metadata.sequence.stream, "error": str(exc)})

    async def next_batch(self, stop: asyncio.Event, *, wait_s: float) -> tuple[list[StoredMessage], bool]:
        """The messages the consumer has now, waiting (up to ``wait_s``, or until stopped) for the first.

        Returns them in delivery order, cut before any delivery that is not the
        one after the last (a lost delivery: the rest would leave a gap), and
        whether none was cut and the consumer is still there. When it was not,
        :meth:`open` the consumer again from the committed position.

        Raises:
            TransportError: the connection was closed.
        """
        batch = await self._fetch(stop, wait_s)
        if batch is None:
            return [], False
        intact = True
        for i, msg in enumerate(batch):
            delivery = msg.metadata.sequence.consumer
            if delivery != self._last_delivery + 1:
                log.warning(
                    "delivery out of order",
                    extra={
                        "expected": self._last_delivery + 1,
                        "delivery": delivery,
                        "stream_seq": msg.metadata.sequence.stream,
                    },
                )
                batch, intact = batch[:i], False
                break
            self._last_delivery = delivery
        for msg in batch:
            if self._unacked is None or msg.metadata.sequence.stream > self._unacked.metadata.sequence.stream:
                self._unacked = msg
        return [stored_message(msg) for msg in batch], intact

    async def _fetch(self, stop: asyncio.Event, wait_s: float) -> list[Msg] | None:
        """What is there to read now (None: the consumer failed, after a pause)."""
        sub = self._sub
        assert sub is not None
        first = asyncio.ensure_future(sub.fetch(1, timeout=wait_s))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({first, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            return []
        try:
            batch = first.result()
        except TimeoutError:  # nats.errors.TimeoutError is a subclass
            return []
        except nats.errors.ConnectionClosedError as exc:
            raise TransportError("connection closed while reading the stream") from exc
        except NATS_ERRORS as exc:  # no responders: the consumer was deleted
            log.warning("consumer read failed", extra={"consumer": self.name, "error": str(exc)})
            with contextlib.suppress(TimeoutError):  # not in a tight loop if it keeps failing
                await asyncio.wait_for(stop.wait(), READ_RETRY_S)
            return None
        # Take what is queued, and on a backlog (the server says more is pending) a full batch.
        while len(batch) < self.settings.batch and (sub.pending_msgs > 0 or batch[-1].metadata.num_pending > 0):
            try:
                batch += await sub.fetch(self.settings.batch - len(batch), timeout=1.0)
            except TimeoutError:
                break
            except nats.errors.ConnectionClosedError as exc:
                raise TransportError("connection closed while reading the stream") from exc
            except NATS_ERRORS:
                break  # the next read finds out
        return batch
