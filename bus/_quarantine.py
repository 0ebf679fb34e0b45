"""Quarantine records: what a rejecting component publishes about a message it refused."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from trustbus.bus._envelope import Envelope, decode_envelope
from trustbus.bus._errors import VerificationError
from trustbus.bus._payload import check_msgpack
from trustbus.bus._seal import HEADER_KEY

# Quarantine records are envelopes themselves, so their payload must stay well
# under the receivers' size limit: the rejected body is kept up to this many
# bytes, with its full size and SHA-256.
MAX_QUARANTINED_BODY = 64 * 1024


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why a message was refused, and what it was. The payload of a quarantine event."""

    v: int = 1
    reason: str
    detail: str
    subject: str
    stream_seq: int | None
    claimed_sender: str | None
    claimed_id: str | None
    key_id: str | None
    body: bytes
    body_size: int
    body_sha256: str
    truncated: bool
    headers: dict[str, str]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(QuarantineRecord)


def quarantine_record(
    body: bytes,
    headers: Mapping[str, str] | None,
    *,
    reason: str,
    detail: str,
    subject: str,
    stream_seq: int | None,
) -> QuarantineRecord:
    """Describe a refused message; the sender and id are what it claimed, if it decodes at all."""
    claimed: Envelope | None
    try:
        claimed = decode_envelope(body) if len(body) <= MAX_QUARANTINED_BODY * 4 else None
    except VerificationError:
        claimed = None
    headers = dict(headers or {})
    return QuarantineRecord(
        reason=reason,
        detail=detail[:1000],
        subject=subject,
        stream_seq=stream_seq,
        claimed_sender=claimed.sender if claimed else None,
        claimed_id=claimed.id if claimed else None,
        key_id=headers.get(HEADER_KEY) or None,
        body=body[:MAX_QUARANTINED_BODY],
        body_size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        truncated=len(body) > MAX_QUARANTINED_BODY,
        headers={k: v[:512] for k, v in headers.items()},
    )


def encode_quarantine_record(record: QuarantineRecord) -> bytes:
    """The msgpack payload of a quarantine event."""
    return _encoder.encode(record)


def decode_quarantine_record(payload: bytes) -> QuarantineRecord:
    """Parse a quarantine event's payload."""
    check_msgpack(payload)
    return _decoder.decode(payload)
