"""The projector: verifies, chains and projects the tenant stream one message at a time. Pure, no I/O.

It holds what the projection needs to carry from one message to the next:
the position (last sequence, chain head, count), the keyring (the caller
keeps it current), and the ids accepted recently, for the replay check.
"""

from __future__ import annotations

import msgspec

from bus import (
    Envelope,
    Keyring,
    Limits,
    Opened,
    Replayed,
    SeenIds,
    VerificationError,
    decode_envelope,
    open_envelope,
    subjects,
)
from ledger._chain import GENESIS, chain_hash
from ledger._projection import Rows, project_message
from ledger._stored import StoredMessage

# open_envelope checks these after the replay check: an envelope failing them may still be a replay.
_CHECKED_AFTER_REPLAY = frozenset({"not_mediated", "bad_countersignature"})


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """How far the projection has got.

    Attributes:
        last_seq: the last sequence projected (0: none).
        head: the chain hash of ``last_seq`` (genesis before the first).
        count: messages projected.
        last_stored_ns: when ``last_seq`` was stored (unix ns); a restart reads the
            replay window before it back, so the replay check resumes exactly.
    """

    last_seq: int = 0
    head: bytes = GENESIS
    count: int = 0
    last_stored_ns: int = 0


class Projector:
    """Turns stored messages, in stream order, into rows.

    Args:
        tenant: the tenant whose stream this is.
        keyring: its keyring; keys registered later must be added before their messages are applied.
        position: where a previous projection stopped.
        limits: verification limits (size, skew).
    """

    def __init__(self, tenant: str, keyring: Keyring, *, position: Position | None = None, limits: Limits = Limits()):
        self.tenant = tenant
        self.keyring = keyring
        self.position = position or Position()
        self.limits = limits
        self._seen: dict[str, SeenIds] = {}

    def apply(
        self, message: StoredMessage, *, checked: Opened | VerificationError | None = None, into: Rows | None = None
    ) -> Rows:
        """Verify, chain and project ``message``; a message at or before the position yields nothing.

        Args:
            message: the next stored message.
            checked: its outcome of every check but the replay check, if already made
                (:func:`ledger._parallel.open_all`); the replay check is made here.
            into: append the rows to these (and return them) rather than to new ones.
        """
        if message.seq <= self.position.last_seq:
            return Rows() if into is None else into
        head = chain_hash(self.position.head, message.seq, message.subject, message.headers, message.body)
        outcome = self._open(message) if checked is None else self._check_replay(message, checked)
        rows = project_message(message, outcome, tenant=self.tenant, chain=head, into=into)
        self.position = Position(
            last_seq=message.seq, head=head, count=self.position.count + 1, last_stored_ns=message.stored_ns
        )
        return rows

    def remember(self, subject: str, seq: int, envelope: Envelope) -> None:
        """Take note of an envelope accepted at ``seq`` before a restart, for the replay check."""
        self._seen.setdefault(subject, SeenIds(window_ns=self.limits.skew_ns)).add(envelope, seq)

    def _seen_for(self, message: StoredMessage) -> SeenIds:
        seen = self._seen.get(message.subject)
        if seen is None:
            seen = self._seen[message.subject] = SeenIds(window_ns=self.limits.skew_ns)
        seen.prune(message.stored_ns)
        return seen

    def _check_replay(self, message: StoredMessage, checked: Opened | VerificationError) -> Opened | VerificationError:
        """The replay check on an outcome of the other checks, giving what :func:`bus.open_envelope` would have."""
        seen = self._seen_for(message)
        if isinstance(checked, VerificationError) and checked.reason not in _CHECKED_AFTER_REPLAY:
            return checked
        envelope = checked.envelope if isinstance(checked, Opened) else decode_envelope(message.body)
        earlier = seen.sequence_of(envelope.id)
        if earlier is not None and earlier != message.seq:
            return Replayed(f"id {envelope.id} already accepted at stream sequence {earlier}")
        if isinstance(checked, Opened):
            seen.add(envelope, message.seq)
        return checked

    def _open(self, message: StoredMessage) -> Opened | VerificationError:
        seen = self._seen_for(message)
        try:
            opened = open_envelope(
                message.body,
                message.headers,
                keyring=self.keyring,
                received_ns=message.stored_ns,
                limits=self.limits,
                seen=seen,
                stream_seq=message.seq,
                recipient=subjects.mediated_recipient(self.tenant, message.subject),
                at_store=subjects.judged_at_store(self.tenant, message.subject),
            )
        except VerificationError as exc:
            return exc
        seen.add(opened.envelope, message.seq)
        return opened
