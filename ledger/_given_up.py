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

from trustbus.bus import Bus, NotFound, TransportError, WorkItem, WorkQueueSettings, subjects

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
        self.advisories = bus.work_queue(
            self.stream,
            subjects.GIVEN_UP_CONSUMER,
            WorkQueueSettings(
                ack_wait_s=ACK_WAIT_S,
                batch=BATCH,
                retry_s=RETRY_S,
                hint="run `trustbus init` again to make the stream; under a rendered config, render again and reload",
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Record advisories as they come until ``stop`` is set; a failing server or consumer is tried again."""
        async with contextlib.aclosing(self.advisories.items(stop)) as advisories:
            async for advisory in advisories:
                await self._record(advisory)

    async def _record(self, advisory: WorkItem) -> None:
        try:
            given_up = GivenUp.parse(advisory.body)
            if given_up.stream != self.bus.stream:
                raise ValueError(f"it names stream {given_up.stream}, not {self.bus.stream}")
        except ValueError as exc:
            log.error("malformed advisory dropped", extra={"subject": advisory.subject, "error": str(exc)})
            await advisory.term()
            return
        try:
            await self._quarantine(given_up)
        except TransportError as exc:
            log.warning(
                "cannot record a given-up message yet", extra={"stream_seq": given_up.stream_seq, "error": str(exc)}
            )
            await advisory.nak(delay_s=RETRY_S)
            return
        await advisory.ack()

    async def _quarantine(self, given_up: GivenUp) -> None:
        """The record: what was given up (as stored, if still there), by which consumer, after how many deliveries."""
        body: bytes
        headers: dict[str, str] | None
        try:
            stored = await self.bus.log(subjects.all_subjects(self.bus.tenant)).get(given_up.stream_seq)
            body, headers, subject = stored.body, stored.headers, stored.subject or "?"
        except NotFound:
            body, headers, subject = b"", None, "?"
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
