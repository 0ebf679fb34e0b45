"""The projector: verifies, chains and projects the tenant stream one message at a time. Pure, no I/O.

It holds what the projection needs to carry from one message to the next:
the position (last sequence, chain head, count), the keyring (the caller
keeps it current), and the ids accepted recently, for the replay check.
"""

from __future__ import annotations

import msgspec

from trustbus.bus import Envelope, Keyring, Limits, Opened, StoredMessage, VerificationError, open_envelope, subjects
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._merkle import TreeBuilder, message_leaf_hash
from trustbus.ledger._projection import project_message
from trustbus.ledger._replay_window import ReplayWindow
from trustbus.ledger._rows import Rows


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """How far the projection has got.

    Attributes:
        last_seq: the last sequence projected (0: none).
        head: the chain hash of ``last_seq`` (genesis before the first).
        count: messages projected.
        last_stored_ns: when ``last_seq`` was stored (unix ns); a restart reads the
            replay window before it back, so the replay check resumes exactly.
        frontier: the Merkle tree of sequences 1..``last_seq`` as :class:`~ledger._merkle.TreeBuilder`
            keeps it, or None where unknown (a projection made before tree heads were).
    """

    last_seq: int = 0
    head: bytes = GENESIS
    count: int = 0
    last_stored_ns: int = 0
    frontier: tuple[bytes, ...] | None = None

    def tree(self) -> TreeBuilder | None:
        """The Merkle tree through ``last_seq``, if known."""
        if self.last_seq == 0:
            return TreeBuilder()
        if self.frontier is None or len(self.frontier) != self.last_seq.bit_count():
            return None
        return TreeBuilder(self.last_seq, self.frontier)


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
        self._replay = ReplayWindow(limits.skew_ns)
        self._tree = self.position.tree()

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
        outcome = self._open(message) if checked is None else self._replay.check(message, checked)
        rows = project_message(message, outcome, tenant=self.tenant, chain=head, into=into)
        tree = self._tree
        if tree is not None and message.seq == tree.size + 1:
            tree.append(message_leaf_hash(message.seq, message.subject, message.headers, message.body))
        else:
            self._tree = tree = None  # a gap: the tree covers sequences 1..n with none missing
        self.position = Position(
            last_seq=message.seq,
            head=head,
            count=self.position.count + 1,
            last_stored_ns=message.stored_ns,
            frontier=None if tree is None else tree.frontier,
        )
        return rows

    def remember(self, subject: str, seq: int, envelope: Envelope) -> None:
        """Take note of an envelope accepted at ``seq`` before a restart, for the replay check."""
        self._replay.remember(subject, seq, envelope)

    def _open(self, message: StoredMessage) -> Opened | VerificationError:
        seen = self._replay.seen_for(message)
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
