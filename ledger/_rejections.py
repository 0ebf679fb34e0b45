"""Rejections recorded in aggregate, as the ledger reads them: which stored messages a summary excuses.

Pure. A :class:`~bus._rejections.RejectionSummary` (a coordinator's or ledger
service's signed quarantine event) lists each message it refused by stream
sequence, subject and body SHA-256. A message that fails verification is a
recorded rejection, not a break, when a verified summary lists its sequence
with its own subject and the SHA-256 of its own body: a summary cannot excuse
a message it did not see.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgspec

from bus import Keyring, VerificationError, open_envelope, subjects
from bus._rejections import RejectionSummary, decode_rejection_summary
from ledger._stored import StoredMessage

SUMMARY_ROLES = frozenset({"coordinator", "ledger"})  # who refuses on others' subjects and records it in aggregate

Excuses = Mapping[int, tuple[str, bytes]]


def read_summary(message: StoredMessage, keyring: Keyring, tenant: str) -> tuple[str, RejectionSummary] | None:
    """The signer and summary a stored quarantine event carries, if it is a verified summary by a fitting role."""
    if message.subject != subjects.quarantine(tenant):
        return None
    try:
        opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
        summary = decode_rejection_summary(opened.envelope.payload)
    except (VerificationError, msgspec.DecodeError, ValueError):
        return None
    if opened.grant.role not in SUMMARY_ROLES:
        return None
    return opened.envelope.sender, summary


def summarised_rejections(messages: Sequence[StoredMessage], keyring: Keyring, tenant: str) -> Excuses:
    """(subject, body SHA-256) of every message listed by a verified summary among ``messages``, by sequence."""
    excuses: dict[int, tuple[str, bytes]] = {}
    for message in messages:
        found = read_summary(message, keyring, tenant)
        if found is None:
            continue
        for seq, subject, _, _, digest in found[1].rejected():
            excuses[seq] = (subject, digest)
    return excuses


def excused_by_summary(excuses: Excuses, message: StoredMessage) -> bool:
    """Whether a summary listed ``message`` itself: its sequence, its subject and its body's SHA-256."""
    listed = excuses.get(message.seq)
    return listed is not None and listed == (message.subject, hashlib.sha256(message.body).digest())
