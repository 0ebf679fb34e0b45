"""Verification of a run of stored messages: sequence, hash chain, and every signature.

Pure: the caller supplies the messages (from the stream or a bundle) and the
keyring. A message that fails signature verification is a break unless a
verified quarantine record names it exactly (sequence, subject, body hash): an
attack that was refused and recorded is history, not tampering
(:mod:`ledger._excuses`). Every checkpoint in the run must be checked: one
stating a sequence the run cannot check is a break. docs/LEDGER.md is the spec.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from bus import (
    Envelope,
    Keyring,
    SeenIds,
    VerificationError,
    decode_checkpoint,
    open_envelope,
    subjects,
)
from ledger._chain import GENESIS, chain_hash
from ledger._excuses import is_excused, quarantine_excuses
from ledger._stored import StoredMessage
from ledger._subject_rules import kind_problem

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


def verify_messages(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    tenant: str,
    *,
    first_seq: int = 1,
    previous: bytes = GENESIS,
    expected_chain: Mapping[int, bytes] | None = None,
    earlier_heads: Mapping[int, bytes] | None = None,
    watch: Collection[int] = (),
) -> VerifyReport:
    """Check sequence continuity, the chain (against ``expected_chain`` if given) and every signature.

    Args:
        messages: stored messages, in the order claimed to be stream order.
        keyring: the tenant's keyring (revocations apply from their time on).
        tenant: the tenant.
        first_seq: the sequence the run must start at.
        previous: the chain hash before ``first_seq`` (genesis for 1).
        expected_chain: recorded chain hashes by sequence (a bundle's), to compare.
        earlier_heads: chain hashes of sequences before ``first_seq`` (``verify --from``), so a
            checkpoint in the run stating one of them can be checked.
        watch: sequences whose chain hash to keep in ``report.watched`` (for outside anchors).
    """
    report = VerifyReport(first_seq=first_seq, head=previous)
    present = {m.seq for m in messages}
    excuses = quarantine_excuses(messages, keyring, tenant)
    seen: dict[str, SeenIds] = {}
    expected_seq = first_seq
    heads: dict[int, bytes] = dict(earlier_heads or {})  # chain hash by sequence, for checking checkpoints
    heads[first_seq - 1] = previous
    watched = set(watch)
    checkpoint_subject = subjects.checkpoint(tenant)
    effect_prefix = subjects.effect(tenant, "x")[:-1]

    def broke(seq: int, reason: str, detail: str) -> None:
        if len(report.breaks) < MAX_BREAKS:
            report.breaks.append(Break(seq, reason, detail))

    for message in messages:
        if message.seq != expected_seq:
            if expected_seq in present:
                broke(expected_seq, "out_of_order", f"sequence {message.seq} stands where {expected_seq} should")
            else:
                broke(expected_seq, "missing", f"sequence {expected_seq} is missing (next found: {message.seq})")
        expected_seq = max(expected_seq, message.seq) + 1
        report.head = chain_hash(report.head, message.seq, message.subject, message.headers, message.body)
        heads[message.seq] = report.head
        if message.seq in watched:
            report.watched[message.seq] = report.head
        if expected_chain is not None:
            recorded = expected_chain.get(message.seq)
            if recorded != report.head:
                broke(message.seq, "chain", "the recorded chain hash does not match the message")
        report.count += 1
        report.last_seq = message.seq
        per_subject = seen.setdefault(message.subject, SeenIds())
        try:
            opened = open_envelope(
                message.body,
                message.headers,
                keyring=keyring,
                received_ns=message.stored_ns,
                seen=per_subject,
                stream_seq=message.seq,
                recipient=subjects.mediated_recipient(tenant, message.subject),
                at_store=subjects.judged_at_store(tenant, message.subject),
            )
        except VerificationError as exc:
            if is_excused(message, excuses):
                report.recorded_rejections += 1
            else:
                broke(message.seq, exc.reason, exc.detail)
            continue
        per_subject.add(opened.envelope, message.seq)
        report.verified += 1
        misfit: tuple[str, str] | None = None
        if (problem := kind_problem(tenant, message.subject, opened.envelope.kind)) is not None:
            misfit = ("wrong_kind", problem)
        elif message.subject == checkpoint_subject:
            problem, through = _check_checkpoint(tenant, opened.envelope.payload, opened.grant.role, heads, message.seq)
            if problem is not None:
                broke(message.seq, "checkpoint", problem)
            else:
                report.checkpoints += 1
                report.signed_through = max(report.signed_through, through)
        elif (problem := _check_signer(tenant, message.subject, opened.envelope, opened.grant.role)) is not None:
            misfit = ("signer", problem)
        if misfit is not None:
            # On an agent's effect subject the agent may publish anything; what its reader
            # refused and recorded there is history, not a forged entry of the log.
            if message.subject.startswith(effect_prefix) and is_excused(message, excuses):
                report.verified -= 1
                report.recorded_rejections += 1
            else:
                broke(message.seq, *misfit)
    return report


def _check_signer(tenant: str, subject: str, envelope: Envelope, role: str) -> str | None:
    """Why the signer may not have written on ``subject``, or None.

    A decision must come from a coordinator key, an effect record from the
    agent the subject names: a valid signature by anyone else is a forgery of
    the log, even where the server's permissions would have stopped it. An
    agent's own envelope of another kind on its effect subject is no effect record.
    """
    sender = envelope.sender
    if subjects.is_decision(tenant, subject) and role != "coordinator":
        return f"decision signed by a {role} key ({sender})"
    effects = subjects.effect(tenant, "x")[:-1]
    if subject.startswith(effects) and subject[len(effects) :].split(".", 1)[0] != sender:
        return f"effect record of {subject[len(effects) :].split('.', 1)[0]!r} signed by {sender!r}"
    if subject.startswith(effects) and envelope.kind != "effect":
        return f"{sender}'s {envelope.kind} on its effect subject"
    return None


def _check_checkpoint(
    tenant: str, payload: bytes, role: str, heads: Mapping[int, bytes], seq: int
) -> tuple[str | None, int]:
    """Why the checkpoint stored at ``seq`` does not hold (None if it does), and the sequence it states.

    It must be signed by a ``ledger`` key, name this tenant's stream, and state
    the recomputed head of a sequence before its own: one stating a sequence the
    run cannot check (beyond it, or before it with no known head) is a break.
    """
    if role != "ledger":
        return f"checkpoint signed by a {role} key", 0
    try:
        checkpoint = decode_checkpoint(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        return f"unreadable checkpoint: {exc}", 0
    through = checkpoint.through_seq
    if checkpoint.stream != subjects.stream_name(tenant):
        return f"checkpoint of stream {checkpoint.stream!r}", through
    if through >= seq:
        return f"checkpoint stored at {seq} states sequence {through}, which is not before it", through
    head = heads.get(through)
    if head is None:
        return f"checkpoint states sequence {through}, outside what this run can check", through
    if head != checkpoint.head:
        return f"checkpoint through {through} states another chain head", through
    return None, through
