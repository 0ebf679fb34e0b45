"""Recording what a component refused: a signed quarantine record on the tenant's quarantine subject.

A refused message from a consumer is recorded and then terminated, so it never
blocks the consumer and is never lost; if the record cannot be stored, the
message is nak'ed and comes back later.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import PubAck

from trustbus.bus._envelope import Envelope, new_envelope
from trustbus.bus._errors import TransportError
from trustbus.bus._metrics import QUARANTINES
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.bus._seal import HEADER_MSG_ID, Sealed
from trustbus.bus._subjects import quarantine

log = logging.getLogger("trustbus.bus")

# KV values recorded as foreign that a process remembers (the most recently met). The record's Nats-Msg-Id
# names the value, so the stream drops a second record of it within its duplicate window anyway; this
# only spares the publish, and a forgotten value is recorded again at most once a window.
FOREIGN_REMEMBERED = 4096


class Signer(Protocol):
    """Who signs and publishes the records: a :class:`~bus.Bus`."""

    tenant: str
    name: str
    stream: str
    clock: Callable[[], int]

    def seal(self, envelope: Envelope) -> Sealed: ...

    async def publish(self, subject: str, sealed: Sealed, *, headers: Mapping[str, str] | None = None) -> PubAck: ...


class Quarantiner:
    """Publishes quarantine records signed by ``signer``."""

    def __init__(self, signer: Signer, *, remember_foreign: int = FOREIGN_REMEMBERED) -> None:
        """Record as ``signer``, remembering nothing yet (later, the last ``remember_foreign`` foreign values)."""
        self._signer = signer
        self._remember_foreign = remember_foreign
        self._foreign_recorded: OrderedDict[tuple[str, int], None] = OrderedDict()  # oldest first

    @property
    def foreign_remembered(self) -> int:
        """How many foreign values it remembers having recorded (at most ``remember_foreign``)."""
        return len(self._foreign_recorded)

    async def quarantine_msg(self, msg: Msg, *, reason: str, detail: str) -> None:
        """Publish a quarantine record for ``msg`` and terminate it; on failure nak it for later."""
        seq = msg.metadata.sequence.stream if msg.reply else None
        try:
            await self.record_quarantine(
                msg.data, msg.headers, subject=msg.subject, stream_seq=seq, reason=reason, detail=detail
            )
        except TransportError:
            log.exception("quarantine publish failed; message left for redelivery")
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.term()

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
        signer = self._signer
        record = quarantine_record(body, headers, reason=reason, detail=detail, subject=subject, stream_seq=stream_seq)
        log.info(
            "quarantined",
            extra={
                "reason": reason,
                "subject": subject,
                "stream_seq": stream_seq,
                "claimed_sender": record.claimed_sender,
            },
        )
        envelope = new_envelope(
            tenant=signer.tenant,
            kind="event",
            sender=signer.name,
            to=("topic:quarantine",),
            content_type="application/msgpack",
            payload=encode_quarantine_record(record),
            idempotency_key=f"quarantine:{signer.stream}:{stream_seq}" if stream_seq is not None else None,
            now_ns=signer.clock(),
        )
        await signer.publish(
            quarantine(signer.tenant), signer.seal(envelope), headers={HEADER_MSG_ID: msg_id} if msg_id else None
        )
        QUARANTINES.labels(reason).inc()

    async def record_foreign_value(
        self, subject: str, revision: int, body: bytes, headers: Mapping[str, str] | None, *, detail: str
    ) -> None:
        """Record once that the KV value at ``subject`` (``revision``) is not what that key holds (``foreign``).

        Once per value: this process remembers the values it recorded last, and the stream's
        duplicate window drops another reader's copy, or this one's of a value it forgot. Best
        effort: a failure is logged, the reader carries on.
        """
        if (subject, revision) in self._foreign_recorded:
            self._foreign_recorded.move_to_end((subject, revision))
            return
        try:
            await self.record_quarantine(
                body,
                headers,
                subject=subject,
                stream_seq=None,  # a KV revision, not a position in the tenant stream
                reason="foreign",
                detail=f"revision {revision}: {detail}",
                msg_id=f"foreign:{subject}:{revision}",
            )
        except TransportError as exc:
            log.warning("foreign value not recorded", extra={"subject": subject, "error": str(exc)})
            return
        self._foreign_recorded[subject, revision] = None
        if len(self._foreign_recorded) > self._remember_foreign:
            self._foreign_recorded.popitem(last=False)
