"""The one judge of stored messages, fed in order: every rule of docs/LEDGER.md "Verifying a run".

:func:`ledger.verify_messages` (a bundle, a run in memory) and the streaming
verifier of the live stream (:mod:`ledger._streaming`) both feed a
:class:`Judge`; they differ only in where the messages come from and who
opens them. The judge holds no message: the chain head, the Merkle frontier
(O(log n) hashes), the replay window (:class:`~ledger._replay_window.ReplayWindow`),
and the :class:`Anchors` found beforehand (the excuses of verified quarantine
records, :mod:`ledger._excuses`, and the sequences checkpoints state, whose
chain heads and tree heads it keeps).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from trustbus.bus import (
    Envelope,
    Keyring,
    Opened,
    StoredMessage,
    VerificationError,
    decode_checkpoint,
    decode_envelope,
    subjects,
)
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._excuses import Excuse, is_excused, quarantine_excuses
from trustbus.ledger._merkle import TreeBuilder, message_leaf_hash
from trustbus.ledger._replay_window import ReplayWindow
from trustbus.ledger._report import MAX_BREAKS, Break, VerifyReport
from trustbus.ledger._subject_rules import kind_problem


@dataclass
class Anchors:
    """What some messages say about others, learnt before judging.

    Attributes:
        excused: the excuses of verified quarantine records, by the sequence they name.
        checkpointed: sequences checkpoints state a head of (their chain and tree heads are kept).
    """

    excused: dict[int, list[Excuse]] = field(default_factory=dict)
    checkpointed: set[int] = field(default_factory=set)


def collect_anchors(
    messages: Sequence[StoredMessage], keyring: Keyring, tenant: str, *, into: Anchors | None = None
) -> Anchors:
    """The anchors among ``messages`` (only quarantine and checkpoint messages matter).

    ``into``: add them to these (a stream read a batch at a time) and return them.
    A checkpoint's stated sequence is noted whether or not it verifies: the
    judge decides that, and only needs the head kept.
    """
    anchors = Anchors() if into is None else into
    for seq, excuses in quarantine_excuses(messages, keyring, tenant).items():
        anchors.excused.setdefault(seq, []).extend(excuses)
    checkpoint = subjects.checkpoint(tenant)
    for m in messages:
        if m.subject != checkpoint:
            continue
        try:
            anchors.checkpointed.add(decode_checkpoint(decode_envelope(m.body).payload).through_seq)
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
    return anchors


class Judge:
    """Judges stored messages fed in order (:meth:`feed`); the verdicts accumulate in :attr:`report`.

    Args:
        keyring: the tenant's keyring, every revision with its store time (only read).
        tenant: the tenant.
        anchors: from :func:`collect_anchors` over the same messages.
        first_seq: the sequence the messages fed start at.
        previous: the chain hash before ``first_seq`` (genesis for 1).
        check_from: judge from this sequence on; earlier ones are only chained (default ``first_seq``).
        present: every sequence of the run, to tell ``out_of_order`` from ``missing`` (None: a
            gap is ``missing``, as in a stream, which cannot reorder).
        expected_chain: recorded chain hashes by sequence (a bundle's), to compare.
        earlier_heads: chain hashes of sequences before ``first_seq``, for checkpoints stating them.
        watch: sequences whose chain hash to keep in ``report.watched``.
        window_ns: the skew window: the replay check remembers ids for twice as long (None: for the whole run).
    """

    def __init__(
        self,
        keyring: Keyring,
        tenant: str,
        anchors: Anchors,
        *,
        first_seq: int = 1,
        previous: bytes = GENESIS,
        check_from: int | None = None,
        present: Collection[int] | None = None,
        expected_chain: Mapping[int, bytes] | None = None,
        earlier_heads: Mapping[int, bytes] | None = None,
        watch: Iterable[int] = (),
        window_ns: int | None,
    ) -> None:
        self.keyring = keyring
        self.tenant = tenant
        self.anchors = anchors
        self.check_from = first_seq if check_from is None else check_from
        self.report = VerifyReport(first_seq=self.check_from, head=previous)
        self._present = present
        self._expected_chain = expected_chain
        self._watch = set(watch)
        self._expected = first_seq
        self._chain = previous
        self._whole_tree = first_seq == 1  # a run from sequence 1 knows every leaf
        self._tree: TreeBuilder | None = TreeBuilder() if self._whole_tree else None
        # chain head and tree head (None: unknown) at the sequences checkpoints state
        self._heads: dict[int, tuple[bytes, bytes | None]] = {s: (h, None) for s, h in (earlier_heads or {}).items()}
        self._heads[first_seq - 1] = (previous, self._tree.root() if self._tree is not None else None)
        self._replay = ReplayWindow(window_ns)
        self._checkpoint_subject = subjects.checkpoint(tenant)
        self._effect_prefix = subjects.effect(tenant, "x")[:-1]

    @property
    def remembered(self) -> int:
        """Ids the replay check holds now (bounded by the traffic of the window)."""
        return len(self._replay)

    def feed(self, messages: Sequence[StoredMessage], opened: Iterable[Opened | VerificationError]) -> None:
        """Judge the next ``messages``, in order.

        Args:
            messages: the next stored messages.
            opened: for each of them from ``check_from`` on, in order, :func:`bus.open_envelope`'s outcome
                without the replay check (:func:`ledger._parallel.open_all`), which the judge adds.
        """
        outcomes = iter(opened)
        for m in messages:
            self._chained(m)
            if m.seq >= self.check_from:
                self._judged(m, next(outcomes))

    def _broke(self, seq: int, reason: str, detail: str) -> None:
        if len(self.report.breaks) < MAX_BREAKS:
            self.report.breaks.append(Break(seq, reason, detail))

    def _chained(self, m: StoredMessage) -> None:
        """Steps 1-2: the sequence and the chain; the Merkle tree; the heads kept."""
        judged = m.seq >= self.check_from
        if m.seq != self._expected:
            self._tree = None  # the tree covers 1..n with none missing
            if judged and self._present is not None and self._expected in self._present:
                self._broke(self._expected, "out_of_order", f"sequence {m.seq} stands where {self._expected} should")
            elif judged:
                self._broke(self._expected, "missing", f"sequence {self._expected} is missing (next found: {m.seq})")
        self._expected = max(self._expected, m.seq) + 1
        self._chain = chain_hash(self._chain, m.seq, m.subject, m.headers, m.body)
        if self._tree is not None:
            self._tree.append(message_leaf_hash(m.seq, m.subject, m.headers, m.body))
        if m.seq in self.anchors.checkpointed:
            self._heads[m.seq] = (self._chain, self._tree.root() if self._tree is not None else None)
        if m.seq in self._watch:
            self.report.watched[m.seq] = self._chain
        self.report.head = self._chain
        if not judged:
            return
        if self._expected_chain is not None and self._expected_chain.get(m.seq) != self._chain:
            self._broke(m.seq, "chain", "the recorded chain hash does not match the message")
        self.report.count += 1
        self.report.last_seq = m.seq

    def _judged(self, m: StoredMessage, checked: Opened | VerificationError) -> None:
        """Steps 3-5: the envelope (with the replay check), the kind, the checkpoint or the signer."""
        outcome = self._replay.check(m, checked)
        if isinstance(outcome, VerificationError):
            if is_excused(m, self.anchors.excused):
                self.report.recorded_rejections += 1
            else:
                self._broke(m.seq, outcome.reason, outcome.detail)
            return
        self.report.verified += 1
        misfit: tuple[str, str] | None = None
        if (problem := kind_problem(self.tenant, m.subject, outcome.envelope.kind)) is not None:
            misfit = ("wrong_kind", problem)
        elif m.subject == self._checkpoint_subject:
            problem, through = self._checkpoint_problem(outcome, m.seq)
            if problem is not None:
                self._broke(m.seq, "checkpoint", problem)
            else:
                self.report.checkpoints += 1
                self.report.signed_through = max(self.report.signed_through, through)
        elif (problem := signer_problem(self.tenant, m.subject, outcome.envelope, outcome.grant.role)) is not None:
            misfit = ("signer", problem)
        if misfit is not None:
            # On an agent's effect subject the agent may publish anything; what its reader
            # refused and recorded there is history, not a forged entry of the log.
            if m.subject.startswith(self._effect_prefix) and is_excused(m, self.anchors.excused):
                self.report.verified -= 1
                self.report.recorded_rejections += 1
            else:
                self._broke(m.seq, *misfit)

    def _checkpoint_problem(self, opened: Opened, seq: int) -> tuple[str | None, int]:
        """Why the checkpoint stored at ``seq`` does not hold (None if it does), and the sequence it states.

        It must be signed by a ``ledger`` key, name this tenant's stream, and state
        the recomputed head of a sequence before its own: one stating a sequence the
        run cannot check (beyond it, or before it with no known head) is a break. A
        Merkle tree head it states must be of ``through_seq`` leaves and, where the
        run knows every leaf, the recomputed one.
        """
        role = opened.grant.role
        if role != "ledger":
            return f"checkpoint signed by a {role} key", 0
        try:
            checkpoint = decode_checkpoint(opened.envelope.payload)
        except (msgspec.DecodeError, ValueError) as exc:
            return f"unreadable checkpoint: {exc}", 0
        through = checkpoint.through_seq
        if checkpoint.stream != subjects.stream_name(self.tenant):
            return f"checkpoint of stream {checkpoint.stream!r}", through
        if through >= seq:
            return f"checkpoint stored at {seq} states sequence {through}, which is not before it", through
        stated = self._heads.get(through)
        if stated is None:
            return f"checkpoint states sequence {through}, outside what this run can check", through
        head, root = stated
        if head != checkpoint.head:
            return f"checkpoint through {through} states another chain head", through
        if (checkpoint.tree_root is not None or checkpoint.tree_size is not None) and (
            checkpoint.tree_size != through or (self._whole_tree and root != checkpoint.tree_root)
        ):
            return f"checkpoint through {through} states another Merkle tree head", through
        return None, through


def signer_problem(tenant: str, subject: str, envelope: Envelope, role: str) -> str | None:
    """Why the signer may not have written on ``subject``, or None.

    A decision must come from a coordinator key, an effect record from the
    agent the subject names: a valid signature by anyone else is a forgery of
    the log, even where the server's permissions would have stopped it. An
    agent's own envelope of another kind on its effect subject is no effect record.
    """
    sender = envelope.sender
    if subjects.is_decision(tenant, subject) and role != "coordinator":
        return f"decision signed by a {role} key ({sender})"
    parsed = subjects.parse(subject)
    on_effects = parsed is not None and parsed.tenant == tenant and parsed.channel == "effect" and parsed.depth >= 1
    if on_effects and parsed is not None and parsed.owner != sender:
        return f"effect record of {parsed.owner!r} signed by {sender!r}"
    if on_effects and envelope.kind != "effect":
        return f"{sender}'s {envelope.kind} on its effect subject"
    return None
