"""A stored stream message: sequence, subject, store time, headers, body, and the one way to read one off NATS."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from nats.aio.msg import Msg


class StoredMessage(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One message of a stream, exactly as stored.

    Attributes:
        seq: stream sequence (a bucket's revision of a key).
        subject: the subject it was published on.
        stored_ns: when the server stored it (unix ns).
        headers: its headers.
        body: its bytes.
    """

    seq: int
    subject: str
    stored_ns: int
    headers: dict[str, str]
    body: bytes


def unix_ns(stored: datetime | None) -> int:
    """A store time as nats-py parsed it, in unix ns (0 when the server gave none)."""
    return int(stored.timestamp() * 1_000_000_000) if stored is not None else 0


def stored_message(msg: Msg) -> StoredMessage:
    """A stream message a consumer delivered, as stored."""
    meta = msg.metadata
    return StoredMessage(meta.sequence.stream, msg.subject, unix_ns(meta.timestamp), dict(msg.headers or {}), msg.data)
