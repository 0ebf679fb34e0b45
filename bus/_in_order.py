"""Reading a stream in order through ephemeral pull consumers: every message once, none skipped.

A pull consumer hands out only the batch asked for, so a reader that falls
behind slows the reading down; a push subscription instead drops messages
client-side once its pending limit is reached (silently, in nats-py), which
would make gaps look like tampering. Deliveries are checked as they arrive:
the consumer numbers them 1, 2, 3, ..., so one missing (lost with a
connection, say) shows as a jump, and reading resumes after the last message
seen, through a new consumer. While a cluster elects a leader (a 503, no
responders, a timeout) reading resumes the same way, for up to
:data:`~bus._publisher.UNAVAILABLE_S` seconds; then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.nuid import NUID

from trustbus.bus._errors import TransportError
from trustbus.bus._publisher import UNAVAILABLE_S
from trustbus.bus._translate import NATS_ERRORS, unavailable

log = logging.getLogger("trustbus.bus")

FETCH = 1000
FOLLOW_S = 5.0  # longest wait for new messages in one request, when following the stream
PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # between attempts while a stream or consumer elects a leader
_names = NUID()


@dataclass(frozen=True, slots=True)
class Start:
    """Where a read begins: at a sequence, at the first message stored at or after a time, or with the next stored.

    The first of these given counts; with none, the read begins at the first message of the stream.
    """

    seq: int | None = None
    stored_ns: int | None = None
    new_only: bool = False

    def config(self) -> ConsumerConfig:
        """The deliver policy of a consumer starting here."""
        if self.seq is not None:
            return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.seq)
        if self.stored_ns is not None:
            at = datetime.fromtimestamp(self.stored_ns / 1e9, tz=UTC)
            return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=at)
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW if self.new_only else DeliverPolicy.ALL)


class _Stalled(Exception):
    """The consumer handed out nothing though it has messages pending: make it anew."""


_RETRIED: tuple[type[Exception], ...] = (*NATS_ERRORS, _Stalled)


async def read_in_order(
    js: JetStreamContext,
    stream: str,
    subjects: Sequence[str],
    *,
    start: Start = Start(),
    last: int | None = None,
    idle_timeout_s: float | None = None,
    batch: int = FETCH,
) -> AsyncGenerator[list[Msg], None]:
    """The messages of ``stream`` on ``subjects``, in stream order, a fetched batch at a time, each exactly once.

    The next batch is fetched only when the caller asks for it.

    Args:
        js: a JetStream context.
        stream: the stream.
        subjects: filter subjects (at least one).
        start: where to begin.
        last: stop after this sequence (None: follow the stream as messages are stored).
        idle_timeout_s: when following, stop once nothing has arrived for this long (None: never).
        batch: messages per fetch.

    Raises:
        TransportError: the stream cannot be read, or reading stalled for longer than a leader election.
    """
    reading = _Reading(js, stream, subjects, start=start, last=last, idle_timeout_s=idle_timeout_s, batch=batch)
    deadline: float | None = None
    pauses = iter(PAUSES_S)
    while not reading.done:
        try:
            async with contextlib.aclosing(reading.through_one_consumer()) as batches:
                async for msgs in batches:
                    deadline, pauses = None, iter(PAUSES_S)
                    yield msgs
        except _RETRIED as exc:
            if not isinstance(exc, _Stalled) and not electing(exc):
                raise TransportError(f"cannot read {stream}: {exc}") from exc
            deadline = deadline or time.monotonic() + UNAVAILABLE_S
            if time.monotonic() > deadline:
                raise TransportError(f"reading {stream} stalled after sequence {reading.position}: {exc}") from exc
            log.warning(
                "stream or consumer unavailable while reading (a leader election, or the consumer gone); reading on",
                extra={"stream": stream, "after_seq": reading.position, "error": str(exc)},
            )
            await asyncio.sleep(next(pauses, PAUSES_S[-1]))


class _Reading:
    """The state of one :func:`read_in_order`: how far it has read, and through which consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subjects: Sequence[str],
        *,
        start: Start,
        last: int | None,
        idle_timeout_s: float | None,
        batch: int,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subjects = list(subjects)
        self._start = start
        self._last = last
        self._idle_timeout_s = idle_timeout_s
        self._batch = batch
        self.position: int | None = None  # the stream sequence read through (None: until a consumer says)
        self.done = last is not None and start.seq is not None and start.seq > last
        self._quiet_since: float | None = None

    def _config(self) -> ConsumerConfig:
        start = self._start if self.position is None else Start(seq=self.position + 1)
        config = start.config()
        config.ack_policy = AckPolicy.NONE
        config.inactive_threshold = 30.0
        if len(self._subjects) == 1:
            config.filter_subject = self._subjects[0]
        else:
            config.filter_subjects = self._subjects
        return config

    async def through_one_consumer(self) -> AsyncGenerator[list[Msg], None]:
        """Batches through one new consumer, until done, a delivery is lost, or a NATS error (raised)."""
        config = self._config()
        config.name = _names.next().decode()
        info = await self._js.add_consumer(self._stream, config)
        sub = await self._js.pull_subscribe_bind(config.name, stream=self._stream)
        try:
            if self.position is None:
                self.position = info.delivered.stream_seq if info.delivered else 0
            delivered = 0  # the consumer's number of the last delivery taken
            pending = info.num_pending or 0  # what it had left to deliver after that
            idle_with_pending = 0
            while not self._finished(pending):
                began = time.monotonic()
                try:
                    msgs = await sub.fetch(self._batch, timeout=self._wait_s())
                except TimeoutError:  # nats.errors.TimeoutError is a subclass
                    msgs = []
                if not msgs:
                    info = await sub.consumer_info()
                    # Handed out and not here (or arriving just now, after the fetch gave up): read them again.
                    if (info.delivered.consumer_seq if info.delivered else 0) > delivered:
                        self._lost(delivered + 1)
                        return
                    pending = info.num_pending or 0
                    # Stored since the fetch gave up, perhaps; handed out again and still not: stalled.
                    idle_with_pending = idle_with_pending + 1 if pending else 0
                    if idle_with_pending > 1:
                        raise _Stalled(f"{pending} messages pending and none handed out")
                    self._quiet_since = self._quiet_since or began
                    continue
                idle_with_pending = 0
                self._quiet_since = None
                taken: list[Msg] = []
                for msg in msgs:
                    seq = msg.metadata.sequence
                    if seq.consumer != delivered + 1:
                        self._lost(delivered + 1)
                        break
                    if self._last is not None and seq.stream > self._last:
                        self.done = True
                        break
                    taken.append(msg)
                    delivered, self.position, pending = seq.consumer, seq.stream, msg.metadata.num_pending
                if taken:
                    yield taken
                if len(taken) < len(msgs):
                    return
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    def _finished(self, pending: int) -> bool:
        """Whether the read is over: through ``last``, nothing left before it, or idle for too long."""
        if self._last is not None:
            self.done = self.done or not pending or (self.position or 0) >= self._last
        elif self._idle_timeout_s is not None and self._quiet_since is not None:
            self.done = time.monotonic() - self._quiet_since >= self._idle_timeout_s
        return self.done

    def _wait_s(self) -> float:
        """How long one fetch waits for its first message."""
        if self._last is not None:
            return 10.0  # the messages are there: a longer wait is a stall
        if self._idle_timeout_s is None:
            return FOLLOW_S
        quiet_s = time.monotonic() - self._quiet_since if self._quiet_since is not None else 0.0
        return max(0.05, min(FOLLOW_S, self._idle_timeout_s - quiet_s))

    def _lost(self, delivery: int) -> None:
        log.warning(
            "a delivery went missing; reading again after the last message read",
            extra={"stream": self._stream, "delivery": delivery, "after_seq": self.position},
        )


def electing(exc: BaseException) -> bool:
    """Whether a failed read may succeed if tried again shortly: no leader answered, or none in time."""
    return unavailable(exc) or isinstance(exc, TimeoutError | nats.errors.TimeoutError)
