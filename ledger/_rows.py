"""The rows of the projection's tables: one Struct per table, in its columns' order, and :class:`Rows` of them.

Pure data, column for column the tables of :mod:`ledger._schema` (a test
checks it); :mod:`ledger._projection` makes them, :mod:`ledger._segments`
writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import msgspec

from trustbus.bus import KeyGrant


class EnvelopeRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``envelopes``: one per stored message (see docs/LEDGER_PROJECTION.md)."""

    seq: int
    subject: str
    channel: str
    recipient: str | None
    stored_ns: int
    id: str | None
    tenant: str | None
    kind: str | None
    sender: str | None
    recipients: tuple[str, ...] | None
    ts: int | None
    correlation_id: str | None
    causation_id: str | None
    hop: int | None
    taint: tuple[str, ...] | None
    idempotency_key: str | None
    content_type: str | None
    payload_size: int | None
    body_size: int
    verified: bool
    reject_reason: str | None
    reject_detail: str | None
    key_id: str | None
    role: str | None
    decision_id: str | None
    record_error: str | None
    chain: str


class DroppedRow(msgspec.Struct, kw_only=True, gc=False):
    """One entry of ``decisions.dropped``."""

    recipient: str
    reason: str


class DecisionRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``decisions``: one per verified decision envelope."""

    decision_id: str
    seq: int
    coordinator: str
    envelope_id: str
    source_seq: int
    sender: str
    kind: str
    correlation_id: str
    causation_id: str | None
    verdict: str
    reasons: tuple[str, ...]
    deliver_to: tuple[str, ...]
    dropped: tuple[DroppedRow, ...]
    hop: int
    declared_taint: tuple[str, ...]
    effective_taint: tuple[str, ...]
    decided_ns: int
    approval_id: str | None
    approver: str | None


class EffectRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``effects``: one per verified effect record (one phase of one tool call)."""

    seq: int
    envelope_id: str
    agent: str
    idempotency_key: str
    phase: str
    tool: str
    effect_class: str
    compensating_tool: str | None
    taint: tuple[str, ...]
    correlation_id: str
    causation_id: str | None
    error: str | None
    ts: int


class MemoryProposalRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``memory_proposals``: one per verified ``memory_write`` envelope from an outbox."""

    seq: int
    envelope_id: str
    agent: str
    key: str
    expected_revision: int
    correlation_id: str
    taint: tuple[str, ...]


class QuarantineRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``quarantine``: one per verified quarantine record."""

    seq: int
    rejected_by: str
    reason: str
    detail: str
    subject: str
    stream_seq: int | None
    claimed_sender: str | None
    claimed_id: str | None
    key_id: str | None
    body_size: int
    body_sha256: str
    truncated: bool


class CheckpointRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``checkpoints``: one per verified checkpoint envelope signed by a ledger key."""

    seq: int
    stream: str
    through_seq: int
    head: str
    count: int
    signer: str
    key_id: str


class KeyRow(msgspec.Struct, kw_only=True, gc=False):
    """A row of ``keys``: one per trusted keyring grant."""

    key_id: str
    owner: str
    role: str
    valid_from: int
    revoked_at: int | None

    @classmethod
    def of(cls, grant: KeyGrant) -> KeyRow:
        """The row of one grant."""
        return cls(
            key_id=grant.key_id,
            owner=grant.owner,
            role=grant.role,
            valid_from=grant.valid_from,
            revoked_at=grant.revoked_at,
        )


@dataclass
class Rows:
    """Rows of the stream tables, in stream order."""

    envelopes: list[EnvelopeRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    effects: list[EffectRow] = field(default_factory=list)
    memory_proposals: list[MemoryProposalRow] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)

    def tables(self) -> Iterator[tuple[str, list[msgspec.Struct]]]:
        """Each table's name and rows."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def extend(self, other: Rows) -> None:
        """Append ``other``'s rows after these."""
        for name, rows in other.tables():
            getattr(self, name).extend(rows)

    def clear(self) -> None:
        """Forget every row."""
        for _, rows in self.tables():
            rows.clear()

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.tables())
