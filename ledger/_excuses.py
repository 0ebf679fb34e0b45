"""Excuses: which failing messages a verified record says were refused and recorded.

A message that fails verification is history, not tampering, when a verified
record names it exactly: its stream sequence, its subject and the SHA-256 of
its body. Naming the sequence alone would let any bytes stand there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from trustbus.bus import Keyring, StoredMessage, VerificationError, decode_quarantine_record, open_envelope, subjects
from trustbus.ledger._rejections import listed_messages


@dataclass(frozen=True, slots=True)
class Excuse:
    """A record's word that the message at ``seq`` was refused: which subject, which bytes, and where it says so."""

    seq: int
    subject: str
    body_sha256: str
    record_seq: int


def quarantine_excuses(messages: Sequence[StoredMessage], keyring: Keyring, tenant: str) -> dict[int, list[Excuse]]:
    """The excuses stated by verified quarantine records among ``messages``, by the sequence they name.

    A record counts only for a sequence stored before its own.
    """
    subject = subjects.quarantine(tenant)
    found: dict[int, list[Excuse]] = {}
    for message in messages:
        if message.subject != subject:
            continue
        try:
            opened = open_envelope(
                message.body, message.headers, keyring=keyring, received_ns=message.stored_ns, at_store=True
            )
        except VerificationError:
            continue
        try:
            record = decode_quarantine_record(opened.envelope.payload)
        except (msgspec.DecodeError, ValueError):  # or a summary of many refusals (ledger._rejections)
            for seq, refused_on, digest in listed_messages(opened, message.seq):
                found.setdefault(seq, []).append(Excuse(seq, refused_on, digest, message.seq))
            continue
        if record.stream_seq is not None and record.stream_seq < message.seq:
            excuse = Excuse(record.stream_seq, record.subject, record.body_sha256.lower(), message.seq)
            found.setdefault(record.stream_seq, []).append(excuse)
    return found


def is_excused(message: StoredMessage, excuses: Mapping[int, Sequence[Excuse]]) -> bool:
    """Whether some excuse names exactly this message: its sequence, its subject and its body's SHA-256."""
    candidates = excuses.get(message.seq)
    if not candidates:
        return False
    digest = hashlib.sha256(message.body).hexdigest()
    return any(e.subject == message.subject and e.body_sha256 == digest for e in candidates)
