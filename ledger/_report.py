"""What verification found: the report and its breaks (shared by every way of verifying)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trustbus.ledger._chain import GENESIS

MAX_BREAKS = 100


@dataclass(frozen=True)
class Break:
    """Where verification failed and why (``missing``, ``out_of_order``, ``chain``, or a signature reason)."""

    seq: int
    reason: str
    detail: str


@dataclass
class VerifyReport:
    """What verification found over a run of messages."""

    first_seq: int
    last_seq: int = 0
    count: int = 0
    verified: int = 0
    recorded_rejections: int = 0
    checkpoints: int = 0
    head: bytes = GENESIS
    breaks: list[Break] = field(default_factory=list)
    signed_through: int = 0  # the highest sequence a holding checkpoint (or anchor) states: first_seq.. is covered
    watched: dict[int, bytes] = field(default_factory=dict)  # chain hashes at the sequences asked for
    anchors: list[dict[str, object]] = field(default_factory=list)  # what else anchored the run (bundles)
    admin_key_pinned: bool | None = None  # bundles: whether the trust anchor was given, not read from the manifest

    @property
    def covered(self) -> tuple[int, int] | None:
        """The range a signature (or an outside anchor) vouches for: every hash of it chains into a signed head."""
        return (self.first_seq, self.signed_through) if self.signed_through >= self.first_seq else None

    @property
    def uncovered(self) -> tuple[int, int] | None:
        """The range after the last signed head: it could be cut off or replaced without a break."""
        start = max(self.signed_through + 1, self.first_seq)
        return (start, self.last_seq) if self.last_seq >= start else None

    @property
    def ok(self) -> bool:
        """True when nothing broke."""
        return not self.breaks

    @property
    def first_break(self) -> Break | None:
        """The earliest problem, if any."""
        return min(self.breaks, key=lambda b: b.seq) if self.breaks else None
