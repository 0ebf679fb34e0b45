"""Rejections recorded in aggregate, as the ledger reads them: the messages a rejection summary lists.

Pure. A :class:`~bus._rejections.RejectionSummary` (a coordinator's or ledger
service's signed quarantine event) lists each message it refused by stream
sequence, subject and body SHA-256. :mod:`ledger._excuses` turns each listed
message into an excuse on the same terms as a single quarantine record (the
sequence below the summary's own; subject and body hash exact), so a summary
cannot excuse a message it did not see. Only a ``coordinator`` or ``ledger``
key may sign one: they are the components that refuse on others' subjects and
record it in aggregate.
"""

from __future__ import annotations

import msgspec

from trustbus.bus import (
    Keyring,
    Opened,
    RejectionSummary,
    StoredMessage,
    VerificationError,
    decode_rejection_summary,
    open_envelope,
    subjects,
)

SUMMARY_ROLES = frozenset({"coordinator", "ledger"})


def summary_of(opened: Opened) -> RejectionSummary | None:
    """The summary a verified quarantine event carries, if it is one signed by a fitting role."""
    if opened.grant.role not in SUMMARY_ROLES:
        return None
    try:
        return decode_rejection_summary(opened.envelope.payload)
    except (msgspec.DecodeError, ValueError):
        return None


def listed_messages(opened: Opened, record_seq: int) -> list[tuple[int, str, str]]:
    """(seq, subject, body SHA-256 hex) of each message the summary at ``record_seq`` lists before itself."""
    summary = summary_of(opened)
    if summary is None:
        return []
    return [(seq, subject, digest.hex()) for seq, subject, _, _, digest in summary.rejected() if seq < record_seq]


def read_summary(message: StoredMessage, keyring: Keyring, tenant: str) -> tuple[str, RejectionSummary] | None:
    """The signer and summary a stored quarantine event carries, if it is a verified summary by a fitting role."""
    if message.subject != subjects.quarantine(tenant):
        return None
    try:
        opened = open_envelope(
            message.body, message.headers, keyring=keyring, received_ns=message.stored_ns, at_store=True
        )
    except VerificationError:
        return None
    summary = summary_of(opened)
    return None if summary is None else (opened.envelope.sender, summary)
