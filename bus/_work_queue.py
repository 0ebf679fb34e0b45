"""Reading a work-queue stream through one durable consumer: each item is settled by whoever handles it.

The consumer acks explicitly and never gives an item up (``max_deliver`` -1):
an item not acked within the ack wait, or nak'd, comes back until it is acked
or terminated. When the consumer or the server fails, it is opened again after
a pause, for as long as the reader runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from trustbus.bus._errors import TransportError
from trustbus.bus._translate import NATS_ERRORS

log = logging.getLogger("trustbus.bus")


@dataclass(frozen=True, slots=True)
class WorkQueueSettings:
    """How a work-queue consumer is configured and read.

    Attributes:
        ack_wait_s: seconds before an unsettled item is delivered again.
        batch: items per fetch.
        retry_s: pause before opening the consumer again after it or the server failed.
        hint: what to do about a consumer that cannot be opened, added to the error.
    """

    ack_wait_s: float
    batch: int
    retry_s: float
    hint: str = ""


class WorkItem:
    """One delivered item; settle it with :meth:`ack`, :meth:`nak` or :meth:`term`."""

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject = msg.subject
        self.body = msg.data

    async def ack(self) -> None:
        """Handled: remove it from the queue."""
        await self._settle(self._msg.ack())

    async def nak(self, *, delay_s: float) -> None:
        """Not handled yet: deliver it again after ``delay_s``."""
        await self._settle(self._msg.nak(delay=delay_s))

    async def term(self) -> None:
        """Never to be handled (malformed): never deliver it again."""
        await self._settle(self._msg.term())

    async def _settle(self, settling: Awaitable[None]) -> None:
        with contextlib.suppress(*NATS_ERRORS):  # not settled: it comes back after the ack wait
            await settling


class WorkQueue:
    """The durable consumer ``consumer`` of the work-queue stream ``stream`` (see :meth:`bus.Bus.work_queue`)."""

    def __init__(self, js: JetStreamContext, stream: str, consumer: str, settings: WorkQueueSettings) -> None:
        """Read ``stream`` through ``consumer`` (made if missing)."""
        self._js = js
        self.stream = stream
        self.consumer = consumer
        self.settings = settings

    async def items(self, stop: asyncio.Event) -> AsyncGenerator[WorkItem, None]:
        """Every item delivered, until ``stop`` is set; a failing server or consumer is tried again."""
        while not stop.is_set():
            try:
                sub = await self._open()
            except TransportError as exc:
                log.error("cannot read a work queue; trying again", extra={"stream": self.stream, "error": str(exc)})
                await self._pause(stop)
                continue
            try:
                while not stop.is_set():
                    try:
                        batch = await sub.fetch(self.settings.batch, timeout=1.0)
                    except TimeoutError:  # nats.errors.TimeoutError is a subclass
                        continue
                    except NATS_ERRORS as exc:
                        log.warning("work queue read failed", extra={"stream": self.stream, "error": str(exc)})
                        await self._pause(stop)
                        break
                    for msg in batch:
                        yield WorkItem(msg)
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await sub.unsubscribe()

    async def _open(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=-1,  # an item is never given up on: it is delivered until settled
        )
        try:
            await self._js.add_consumer(self.stream, config)
            return await self._js.pull_subscribe_bind(self.consumer, stream=self.stream)
        except NATS_ERRORS as exc:
            hint = f" ({self.settings.hint})" if self.settings.hint else ""
            raise TransportError(f"cannot open consumer {self.consumer} on stream {self.stream}: {exc}{hint}") from exc

    async def _pause(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.settings.retry_s)
