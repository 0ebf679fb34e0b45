"""A stored stream message as the ledger keeps it: sequence, subject, time, headers, body."""

from __future__ import annotations

import msgspec


class StoredMessage(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One message of the tenant stream, exactly as stored.

    Attributes:
        seq: stream sequence.
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
