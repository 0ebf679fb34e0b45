"""Recording what the server gave up on: a message delivered ``max_deliver`` times and never settled.

A reader that dies (or hangs) on a message every time it is delivered never
acks, naks or terminates it, so no process is left to quarantine it; the
server just stops delivering it and publishes a MAX_DELIVERIES advisory. The
tenant's ``TBADV_<tenant>`` stream keeps those advisories (a work queue) until
a ledger service has written a signed quarantine record, reason
``max_deliver``, for each into the tenant stream, so the ledger tells that the
message was never handled even if no ledger service was running at the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from trustbus.bus import Bus, TransportError, subjects

log = logging.getLogger("trustbus.ledger")

ACK_WAIT_S = 30.0
BATCH = 16
RETRY_S = 2.0  # pause before trying again after the consumer or the server failed
_TYPE = "io.nats.jetstream.advisory.v1.max_deliver"


@dataclass(frozen=True, slots=True)
class GivenUp:
    """A MAX_DELIVERIES advisory: ``consumer`` of ``stream`` stopped delivering ``stream_seq``."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int

    @classmethod
    def parse(cls, data: bytes) -> GivenUp:
        """Read an advisory; ValueError if it is not a well-formed max_deliver advisory."""
        try:
            raw = json.loads(data)
            if raw.get("type") != _TYPE:
                raise ValueError(f"type {raw.get('type')!r}, not {_TYPE}")
            given_up = cls(str(raw["stream"]), str(raw["consumer"]), int(raw["stream_seq"]), int(raw["deliveries"]))
        except (ValueError, AttributeError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"not a max_deliver advisory: {exc}") from exc
        if given_up.stream_seq < 1:
            raise ValueError(f"not a max_deliver advisory: stream_seq {given_up.stream_seq}")
        return given_up


class GivenUpRecorder:
    """Writes a quarantine record into the tenant stream for each message the server gave up delivering."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.stream = subjects.given_up_stream(bus.tenant)

    async def run(self, stop: asyncio.Event) -> None:
        """Record advisories as they come until ``stop`` is set; a failing server or consumer is tried again."""
        while not stop.is_set():
            try:
                sub = await self._open()
            except TransportError as exc:
                log.error("cannot read the given-up advisories; trying again", extra={"error": str(exc)})
                await _pause(stop)
                continue
            try:
                await self._read(sub, stop)
            finally:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await sub.unsubscribe()

    async def _open(self) -> nats.js.JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=subjects.GIVEN_UP_CONSUMER,
            durable_name=subjects.GIVEN_UP_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,  # an advisory is never given up on: it is retried until recorded
        )
        try:
            await self.bus.js.add_consumer(self.stream, config)
            return await self.bus.js.pull_subscribe_bind(subjects.GIVEN_UP_CONSUMER, stream=self.stream)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(
                f"cannot open consumer {subjects.GIVEN_UP_CONSUMER} on stream {self.stream}: {exc} (run "
                "`trustbus init` again to make the stream; under a rendered config, render again and reload)"
            ) from exc

    async def _read(self, sub: nats.js.JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                batch = await sub.fetch(BATCH, timeout=1.0)
            except TimeoutError:  # nats.errors.TimeoutError is a subclass
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("given-up advisories read failed", extra={"error": str(exc)})
                await _pause(stop)
                return
            for msg in batch:
                await self._record(msg)

    async def _record(self, msg: Msg) -> None:
        try:
            given_up = GivenUp.parse(msg.data)
            if given_up.stream != self.bus.stream:
                raise ValueError(f"it names stream {given_up.stream}, not {self.bus.stream}")
        except ValueError as exc:
            log.error("malformed advisory dropped", extra={"subject": msg.subject, "error": str(exc)})
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        try:
            await self._quarantine(given_up)
        except TransportError as exc:
            log.warning(
                "cannot record a given-up message yet", extra={"stream_seq": given_up.stream_seq, "error": str(exc)}
            )
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=RETRY_S)
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()

    async def _quarantine(self, given_up: GivenUp) -> None:
        """The record: what was given up (as stored, if still there), by which consumer, after how many deliveries."""
        try:
            stored = await self.bus.js.get_msg(self.bus.stream, given_up.stream_seq)
            body, headers, subject = stored.data or b"", stored.headers, stored.subject or "?"
        except nats.js.errors.NotFoundError:
            body, headers, subject = b"", None, "?"
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot read stream sequence {given_up.stream_seq}: {exc}") from exc
        await self.bus.record_quarantine(
            body,
            headers,
            subject=subject,
            stream_seq=given_up.stream_seq,
            reason="max_deliver",
            detail=(
                f"the server stopped delivering it to consumer {given_up.consumer} after {given_up.deliveries} "
                "deliveries, none settled: its reader died or hung each time"
            ),
            msg_id=f"given-up:{given_up.stream}:{given_up.consumer}:{given_up.stream_seq}",
        )


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), RETRY_S)
