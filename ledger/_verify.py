"""Verification of a run of stored messages: sequence, hash chain, and every signature.

Pure: the caller supplies the messages (from the stream or a bundle) and the
keyring. A message that fails signature verification is a break unless a
verified quarantine record names its sequence, or a verified rejection summary
lists it (:mod:`ledger._rejections`): an attack that was refused and recorded
is history, not tampering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from bus import (
    Keyring,
    SeenIds,
    VerificationError,
    decode_checkpoint,
    decode_quarantine_record,
    open_envelope,
    subjects,
)
from ledger._chain import GENESIS, chain_hash
from ledger._rejections import excused_by_summary, summarised_rejections
from ledger._stored import StoredMessage

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

    @property
    def ok(self) -> bool:
        """True when nothing broke."""
        return not self.breaks

    @property
    def first_break(self) -> Break | None:
        """The earliest problem, if any."""
        return min(self.breaks, key=lambda b: b.seq) if self.breaks else None


def quarantined_sequences(messages: Sequence[StoredMessage], keyring: Keyring, tenant: str) -> set[int]:
    """Sequences named by verified quarantine records among ``messages``."""
    subject = subjects.quarantine(tenant)
    found: set[int] = set()
    for message in messages:
        if message.subject != subject:
            continue
        try:
            opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
            record = decode_quarantine_record(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
        if record.stream_seq is not None:
            found.add(record.stream_seq)
    return found


def verify_messages(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    tenant: str,
    *,
    first_seq: int = 1,
    previous: bytes = GENESIS,
    expected_chain: Mapping[int, bytes] | None = None,
) -> VerifyReport:
    """Check sequence continuity, the chain (against ``expected_chain`` if given) and every signature.

    Args:
        messages: stored messages, in the order claimed to be stream order.
        keyring: the tenant's keyring (revocations apply from their time on).
        tenant: the tenant.
        first_seq: the sequence the run must start at.
        previous: the chain hash before ``first_seq`` (genesis for 1).
        expected_chain: recorded chain hashes by sequence (a bundle's), to compare.
    """
    report = VerifyReport(first_seq=first_seq, head=previous)
    present = {m.seq for m in messages}
    excused = quarantined_sequences(messages, keyring, tenant)
    summarised = summarised_rejections(messages, keyring, tenant)
    seen: dict[str, SeenIds] = {}
    expected_seq = first_seq
    heads: dict[int, bytes] = {}  # chain hash by sequence, for checking checkpoints
    checkpoint_subject = subjects.checkpoint(tenant)

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
            )
        except VerificationError as exc:
            if message.seq in excused or excused_by_summary(summarised, message):
                report.recorded_rejections += 1
            else:
                broke(message.seq, exc.reason, exc.detail)
            continue
        per_subject.add(opened.envelope, message.seq)
        report.verified += 1
        if message.subject == checkpoint_subject:
            problem = _check_checkpoint(opened.envelope.payload, opened.grant.role, heads)
            if problem is not None:
                broke(message.seq, "checkpoint", problem)
            else:
                report.checkpoints += 1
        elif (problem := _check_signer(tenant, message.subject, opened.envelope.sender, opened.grant.role)) is not None:
            broke(message.seq, "signer", problem)
    return report


def _check_signer(tenant: str, subject: str, sender: str, role: str) -> str | None:
    """Why the signer may not have written on ``subject``, or None.

    A decision must come from a coordinator key, an effect record from the
    agent the subject names: a valid signature by anyone else is a forgery of
    the log, even where the server's permissions would have stopped it.
    """
    if subjects.is_decision(tenant, subject) and role != "coordinator":
        return f"decision signed by a {role} key ({sender})"
    effects = subjects.effect(tenant, "x")[:-1]
    if subject.startswith(effects) and subject[len(effects) :].split(".", 1)[0] != sender:
        return f"effect record of {subject[len(effects) :].split('.', 1)[0]!r} signed by {sender!r}"
    return None


def _check_checkpoint(payload: bytes, role: str, heads: Mapping[int, bytes]) -> str | None:
    """Why a checkpoint does not hold, or None if it does (or covers messages before this run)."""
    if role != "ledger":
        return f"checkpoint signed by a {role} key"
    try:
        checkpoint = decode_checkpoint(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        return f"unreadable checkpoint: {exc}"
    head = heads.get(checkpoint.through_seq)
    if head is None:
        return None  # covers a sequence before this run (verify --from)
    if head != checkpoint.head:
        return f"checkpoint through {checkpoint.through_seq} states another chain head"
    return None
