"""Pipelined JetStream publishing with a bounded number of acks outstanding.

nats-py's ``publish_async`` futures never resolve when the server answers with
an error it does not parse, and a timed-out publish may still have been stored.
So every publish here gets a timer: when it fires, the nats-py future is
cancelled (freeing nats-py's slot) and the message is re-sent with the same
``Nats-Msg-Id``, which the stream's duplicate window turns into a no-op if the
first attempt did land. A timer and two callbacks per message cost a fraction
of a Task and ``wait_for`` each.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from bus._errors import TransportError

log = logging.getLogger("trustbus.bus")

_RETRIES = 3


class Publisher:
    """Publishes with at most ``max_in_flight`` acks outstanding; each attempt bounded by ``timeout_s``."""

    def __init__(self, js: JetStreamContext, *, max_in_flight: int, timeout_s: float) -> None:
        """Wrap a JetStream context whose own ``publish_async_max_pending`` is at least ``max_in_flight``."""
        self._js = js
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Future[PubAck]] = set()
        self._retries: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []

    async def start(
        self, subject: str, body: bytes, headers: dict[str, str], *, report_failure_on_flush: bool = True
    ) -> asyncio.Future[PubAck]:
        """Send once a slot is free; return a future for the ack (or a TransportError)."""
        await self._slots.acquire()
        result: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._in_flight.add(result)
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
        ack.add_done_callback(lambda done: self._acked(done, timer, subject, result))

    def _acked(
        self,
        ack: asyncio.Future[PubAck],
        timer: asyncio.TimerHandle,
        subject: str,
        result: asyncio.Future[PubAck],
    ) -> None:
        timer.cancel()
        if result.done() or ack.cancelled():
            return  # cancelled by the timer: the retry settles ``result``
        error = ack.exception()
        if error is None:
            result.set_result(ack.result())
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
        log.warning("publish ack timed out; re-sending with the same Nats-Msg-Id", extra={"subject": subject})
        retry = asyncio.get_running_loop().create_task(self._retry(subject, body, headers, result))
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)

    async def _retry(self, subject: str, body: bytes, headers: dict[str, str], result: asyncio.Future[PubAck]) -> None:
        last: BaseException | None = None
        for _ in range(_RETRIES):
            try:
                ack = await self._js.publish(subject, body, headers=dict(headers), timeout=self._timeout_s)
            except nats.errors.TimeoutError as exc:
                last = exc
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                last = exc
                break
            if not result.done():
                result.set_result(ack)
            return
        if not result.done():
            failure = TransportError(f"publish to {subject} failed after {_RETRIES} re-sends: {last!r}")
            failure.__cause__ = last
            result.set_exception(failure)

    def _settled(self, result: asyncio.Future[PubAck], report: bool) -> None:
        self._slots.release()
        self._in_flight.discard(result)
        if report and not result.cancelled() and result.exception() is not None:
            self._failures.append(result.exception())  # type: ignore[arg-type]

    async def flush(self, *, timeout_s: float) -> None:
        """Wait for every outstanding publish; raise TransportError if any since the last flush failed."""
        if self._in_flight:
            await asyncio.wait_for(asyncio.gather(*self._in_flight, return_exceptions=True), timeout_s)
        failures, self._failures = self._failures, []
        if failures:
            raise TransportError(f"{len(failures)} publish(es) failed; first: {failures[0]}") from failures[0]

    async def aclose(self) -> None:
        """Stop pending re-sends."""
        for retry in list(self._retries):
            retry.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
