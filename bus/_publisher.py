"""Pipelined JetStream publishing with a bounded number of acks outstanding.

nats-py's ``publish_async`` futures never resolve when the server answers with
an error it does not parse, and a timed-out publish may still have been stored.
So every publish here gets a timer: when it fires, the nats-py future is
cancelled (freeing nats-py's slot) and the message is re-sent with the same
``Nats-Msg-Id``, which the stream's duplicate window turns into a no-op if the
first attempt did land. A timer and two callbacks per message cost a fraction
of a Task and ``wait_for`` each.

On a cluster, a stream whose leader died has no leader for a few seconds (a
Raft election): a publish is then answered "no responders" or 503 at once. That
is retried too, with the same ``Nats-Msg-Id``, after a growing pause, for up to
``unavailable_s`` seconds; a subject no stream captures fails the same way,
only later.

A publish refused because the store is full is not retried: it fails at once
with :class:`~bus.StoreFull`, which says so (space returns only when someone
frees it; the caller decides when to try again).

A publish the server refuses for permissions is never answered: the server
reports it as an asynchronous error naming the subject, and the connection's
error callback calls :meth:`Publisher.refuse`, which fails it at once.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from trustbus.bus._errors import TransportError
from trustbus.bus._signals import cancel_and_wait
from trustbus.bus._translate import store_full, translated, unavailable

log = logging.getLogger("trustbus.bus")

_RETRIES = 3
UNAVAILABLE_S = 20.0
_PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class Publisher:
    """Publishes with at most ``max_in_flight`` acks outstanding; each attempt bounded by ``timeout_s``.

    A timed-out attempt is re-sent at once, up to 3 times; an attempt refused as
    unavailable (:func:`unavailable`) is re-sent after a pause, for up to
    ``unavailable_s`` seconds. Every re-send carries the same headers, so the same
    ``Nats-Msg-Id``.
    """

    def __init__(
        self, js: JetStreamContext, *, max_in_flight: int, timeout_s: float, unavailable_s: float = UNAVAILABLE_S
    ) -> None:
        """Wrap a JetStream context whose own ``publish_async_max_pending`` is at least ``max_in_flight``."""
        self._js = js
        self._timeout_s = timeout_s
        self._unavailable_s = unavailable_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: dict[asyncio.Future[PubAck], str] = {}  # each publish's result, and its subject
        self._retries: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []

    async def start(
        self, subject: str, body: bytes, headers: dict[str, str], *, report_failure_on_flush: bool = True
    ) -> asyncio.Future[PubAck]:
        """Send once a slot is free; return a future for the ack (or a TransportError)."""
        await self._slots.acquire()
        result: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._in_flight[result] = subject
        result.add_done_callback(lambda done: self._settled(done, report_failure_on_flush))
        try:
            await self._send(subject, body, headers, result)
        except BaseException:
            result.cancel()  # frees the slot; the caller gets the error itself
            raise
        return result

    async def _send(self, subject: str, body: bytes, headers: dict[str, str], result: asyncio.Future[PubAck]) -> None:
        try:
            ack = await self._js.publish_async(subject, body, headers=dict(headers))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"publish to {subject} failed: {exc!r}") from exc
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout_s, self._timed_out, ack, subject, body, headers, result)
        ack.add_done_callback(lambda done: self._acked(done, timer, subject, body, headers, result))

    def _acked(
        self,
        ack: asyncio.Future[PubAck],
        timer: asyncio.TimerHandle,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        result: asyncio.Future[PubAck],
    ) -> None:
        timer.cancel()
        if result.done() or ack.cancelled():
            return  # cancelled by the timer: the retry settles ``result``
        error = ack.exception()
        if error is None:
            result.set_result(ack.result())
        elif store_full(error):  # not an election: space comes back when someone frees it, so the caller decides
            result.set_exception(translated(error, f"publish to {subject}"))
        elif unavailable(error):
            self._start_retry(subject, body, headers, result, error)
        else:
            failure = TransportError(f"publish to {subject} failed: {error!r}")
            failure.__cause__ = error
            result.set_exception(failure)

    def _timed_out(
        self,
        ack: asyncio.Future[PubAck],
        subject: str,
        body: bytes,
        headers: dict[str, str],
        result: asyncio.Future[PubAck],
    ) -> None:
        if ack.done():
            return
        ack.cancel()
        if result.done():
            return  # refused by the server meanwhile
        log.warning("publish ack timed out; re-sending with the same Nats-Msg-Id", extra={"subject": subject})
        self._start_retry(subject, body, headers, result, nats.errors.TimeoutError())

    def _start_retry(
        self, subject: str, body: bytes, headers: dict[str, str], result: asyncio.Future[PubAck], error: BaseException
    ) -> None:
        retry = asyncio.get_running_loop().create_task(self._retry(subject, body, headers, result, error))
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)

    async def _retry(
        self, subject: str, body: bytes, headers: dict[str, str], result: asyncio.Future[PubAck], first: BaseException
    ) -> None:
        """Re-send until acked: at once after a timeout (3 times), after a pause while unavailable (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._unavailable_s
        last, resends, timeouts, pauses = first, 0, 0, 0
        while not result.done():  # done: refused by the server meanwhile
            if isinstance(last, nats.errors.TimeoutError):
                if timeouts >= _RETRIES:
                    break
                timeouts += 1
            elif unavailable(last) and not store_full(last):
                if loop.time() >= deadline:
                    break
                if pauses == 0:
                    log.warning("stream unavailable (leader election?); re-sending", extra={"subject": subject})
                await asyncio.sleep(_PAUSES_S[min(pauses, len(_PAUSES_S) - 1)])  # pacing, not a wait for an event
                pauses += 1
            else:
                break
            resends += 1
            try:
                ack = await self._js.publish(subject, body, headers=dict(headers), timeout=self._timeout_s)
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                last = exc
                continue
            if not result.done():
                result.set_result(ack)
            return
        if not result.done():
            doing = f"publish to {subject} (after {resends} re-sends)"
            failure = translated(last, doing) if store_full(last) else TransportError(f"{doing} failed: {last!r}")
            failure.__cause__ = last
            result.set_exception(failure)

    def _settled(self, result: asyncio.Future[PubAck], report: bool) -> None:
        self._slots.release()
        self._in_flight.pop(result, None)
        if report and not result.cancelled() and result.exception() is not None:
            self._failures.append(result.exception())  # type: ignore[arg-type]

    def refuse(self, subject: str, why: str) -> None:
        """Fail every outstanding publish to ``subject`` now: the server refused it (it never answers those).

        The client reports the subject lowercased, so it is matched without case: a publish to a
        subject differing only in case, in flight at that moment, fails too (and can be sent again).
        """
        for result, target in list(self._in_flight.items()):
            if target.lower() == subject.lower() and not result.done():
                result.set_exception(TransportError(f"publish to {subject} refused by the server: {why}"))

    async def flush(self, *, timeout_s: float) -> None:
        """Wait for every outstanding publish; raise TransportError if any since the last flush failed."""
        if self._in_flight:
            await asyncio.wait_for(asyncio.gather(*self._in_flight, return_exceptions=True), timeout_s)
        failures, self._failures = self._failures, []
        if failures:
            raise TransportError(f"{len(failures)} publish(es) failed; first: {failures[0]}") from failures[0]

    async def aclose(self) -> None:
        """Stop pending re-sends."""
        await cancel_and_wait(*self._retries)
