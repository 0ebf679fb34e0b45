"""One verified message from a durable consumer, and settling it exactly once.

A handler that runs long keeps its message (the server is told it is in
progress); one that fails transiently gets it again with backoff; a poison
message is quarantined, never redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from trustbus.bus._errors import TransientError, TransportError, VerificationError
from trustbus.bus._metrics import REDELIVERIES
from trustbus.bus._quarantiner import Quarantiner
from trustbus.bus._seal import Opened, SeenIds
from trustbus.bus._stored import unix_ns

if TYPE_CHECKING:
    from trustbus.bus._consumer import ConsumerSettings

log = logging.getLogger("trustbus.bus")


def rejection(exc: Exception) -> tuple[str, str]:
    """The reason code and detail to quarantine a message with when handling it raised ``exc``."""
    if isinstance(exc, VerificationError):
        return exc.reason, exc.detail
    return "handler_error", f"{type(exc).__name__}: {exc}"


class Delivery:
    """One verified message from a consumer, to be settled exactly once."""

    def __init__(
        self,
        quarantiner: Quarantiner,
        msg: Msg,
        meta: Msg.Metadata,
        opened: Opened,
        seen: SeenIds,
        settings: ConsumerSettings,
    ) -> None:
        """Made by :meth:`Bus.consume`."""
        self._quarantiner = quarantiner
        self._msg = msg
        self._seen = seen
        self._settings = settings
        self.opened = opened
        self.envelope = opened.envelope
        self.subject: str = msg.subject
        self.stream_seq: int = meta.sequence.stream
        self.stored_ns: int = unix_ns(meta.timestamp)
        self.attempt: int = meta.num_delivered
        if self.attempt > 1:
            REDELIVERIES.inc()
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
            await self._quarantiner.quarantine_msg(
                self._msg, reason="max_deliver", detail=f"failed {self.attempt} deliveries"
            )
            return
        if delay_s is None:
            backoff = self._settings.backoff_s
            delay_s = backoff[min(self.attempt - 1, len(backoff) - 1)]
        await self._msg.nak(delay=delay_s)

    async def in_progress(self) -> None:
        """Tell the server this is still being worked on (its ack wait starts again); a lost connection is ignored:
        the server then delivers it again, as after a crash."""  # noqa: D205, D209
        with contextlib.suppress(nats.errors.Error):
            await self._msg.in_progress()

    async def defer(self, delay_s: float) -> None:
        """Deliver again after ``delay_s`` without counting it as a failure (e.g. a rate limit)."""
        self.settled = True
        await self._msg.nak(delay=delay_s)

    async def reject(self, reason: str, detail: str) -> None:
        """Poison: quarantine with ``reason`` and never deliver again."""
        self.settled = True
        await self._quarantiner.quarantine_msg(self._msg, reason=reason, detail=detail)

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
        heartbeat = Heartbeat([self], self._settings.ack_wait_s / 3)
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


class Heartbeat:
    """Tells the server messages are still being worked on, every ``interval`` seconds, until stopped.

    A timer, not a task per message: most handlers finish before the first beat.
    Deliveries settled meanwhile are left out.
    """

    def __init__(self, deliveries: list[Delivery], interval: float) -> None:
        """Start beating for ``deliveries``."""
        self._deliveries = deliveries
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(interval, self._beat)
        self._beats: set[asyncio.Task[None]] = set()

    def _beat(self) -> None:
        for delivery in self._deliveries:
            if not delivery.settled:
                task = self._loop.create_task(delivery.in_progress())
                self._beats.add(task)
                task.add_done_callback(self._beats.discard)
        self._handle = self._loop.call_later(self._interval, self._beat)

    def stop(self) -> None:
        """Beat no more."""
        self._handle.cancel()
