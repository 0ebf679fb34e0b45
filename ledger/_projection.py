"""Stored message -> rows of the projection tables: pure, no I/O.

:func:`project_message` turns one stored message, the outcome of verifying it
and its chain hash into rows. Every message yields exactly one ``envelopes``
row, verified or not (nothing is dropped); a verified message that carries a
record (a decision, an effect, a memory write, a quarantine record, a
checkpoint) also yields a row of that record's table. A verified envelope
whose record cannot be read, or that is signed by a key whose role may not
write it, yields no record row and says why in ``envelopes.record_error``.
"""

from __future__ import annotations

import msgspec

from trustbus.bus import (
    HEADER_KEY,
    Decision,
    Envelope,
    Opened,
    RejectionSummary,
    StoredMessage,
    VerificationError,
    decode_checkpoint,
    decode_effect,
    decode_envelope,
    decode_memory_write,
    decode_quarantine_record,
    decode_rejection_summary,
    recorded_decisions,
    subjects,
)
from trustbus.ledger._rejections import SUMMARY_ROLES
from trustbus.ledger._rows import (
    CheckpointRow,
    DecisionRow,
    DroppedRow,
    EffectRow,
    EnvelopeRow,
    MemoryProposalRow,
    QuarantineRow,
    Rows,
)


def channel_of(tenant: str, subject: str) -> str:
    """What a subject of the tenant is for: ``outbox``, ``inbox``, ``topic``, ``decision``, ``effect``,
    ``approval``, ``quarantine``, ``checkpoint`` (``tb.<tenant>.ledger.checkpoint``), or ``other``."""  # noqa: D205, D209
    parsed = subjects.parse(subject)
    return parsed.channel if parsed is not None and parsed.tenant == tenant else "other"


class RecordError(Exception):
    """A verified envelope's record cannot be projected (the message says why)."""


def project_message(
    message: StoredMessage,
    outcome: Opened | VerificationError,
    *,
    tenant: str,
    chain: bytes,
    into: Rows | None = None,
) -> Rows:
    """The rows of one stored message.

    Args:
        message: the message as stored.
        outcome: the verified envelope, or why verification failed.
        tenant: the tenant whose stream this is.
        chain: the chain hash of the message (see :func:`ledger.chain_hash`).
        into: append the rows to these (and return them) rather than to new ones.
    """
    rows = Rows() if into is None else into
    channel = channel_of(tenant, message.subject)
    opened = outcome if isinstance(outcome, Opened) else None
    envelope = opened.envelope if opened is not None else _claimed(message.body)
    record_error = None
    if opened is not None:
        try:
            _project_record(rows, message.seq, channel, message.subject, opened)
        except RecordError as exc:
            record_error = str(exc)
        except (msgspec.DecodeError, ValueError) as exc:
            record_error = f"unreadable record: {exc}"
    headers = message.headers
    if opened is not None:
        reject_reason = reject_detail = None
        role: str | None = opened.grant.role
    else:
        assert isinstance(outcome, VerificationError)
        reject_reason, reject_detail, role = outcome.reason, outcome.detail, None
    if envelope is not None:
        row = EnvelopeRow(
            seq=message.seq,
            subject=message.subject,
            channel=channel,
            recipient=subjects.mediated_recipient(tenant, message.subject),
            stored_ns=message.stored_ns,
            id=envelope.id,
            tenant=envelope.tenant,
            kind=envelope.kind,
            sender=envelope.sender,
            recipients=envelope.to,
            ts=envelope.ts,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.causation_id,
            hop=envelope.hop,
            taint=envelope.taint,
            idempotency_key=envelope.idempotency_key,
            content_type=envelope.content_type,
            payload_size=len(envelope.payload),
            body_size=len(message.body),
            verified=opened is not None,
            reject_reason=reject_reason,
            reject_detail=reject_detail,
            key_id=opened.grant.key_id if opened is not None else headers.get(HEADER_KEY) or None,
            role=role,
            decision_id=_verified_decision(opened),
            record_error=record_error,
            chain=chain.hex(),
        )
    else:  # not even an envelope: only what the stream says
        row = EnvelopeRow(
            seq=message.seq,
            subject=message.subject,
            channel=channel,
            recipient=subjects.mediated_recipient(tenant, message.subject),
            stored_ns=message.stored_ns,
            id=None,
            tenant=None,
            kind=None,
            sender=None,
            recipients=None,
            ts=None,
            correlation_id=None,
            causation_id=None,
            hop=None,
            taint=None,
            idempotency_key=None,
            content_type=None,
            payload_size=None,
            body_size=len(message.body),
            verified=False,
            reject_reason=reject_reason,
            reject_detail=reject_detail,
            key_id=headers.get(HEADER_KEY) or None,
            role=None,
            decision_id=None,
            record_error=None,
            chain=chain.hex(),
        )
    rows.envelopes.append(row)
    return rows


def _verified_decision(opened: Opened | None) -> str | None:
    """The decision a verified countersignature names; never an unsigned ``Tb-Decision`` header."""
    if opened is None or opened.mediation is None:
        return None
    return opened.mediation.decision_id or None


def _decision_row(seq: int, coordinator: str, decision_id: str, d: Decision) -> DecisionRow:
    """One decision of the decision record stored at ``seq``."""
    return DecisionRow(
        decision_id=decision_id,
        seq=seq,
        coordinator=coordinator,
        envelope_id=d.envelope_id,
        source_seq=d.source_seq,
        sender=d.sender,
        kind=d.kind,
        correlation_id=d.correlation_id,
        causation_id=d.causation_id,
        verdict=d.verdict,
        reasons=d.reasons,
        deliver_to=d.deliver_to,
        dropped=tuple(DroppedRow(recipient=x.recipient, reason=x.reason) for x in d.dropped),
        hop=d.hop,
        declared_taint=d.declared_taint,
        effective_taint=d.effective_taint,
        decided_ns=d.decided_ns,
        approval_id=d.approval_id,
        approver=d.approver,
    )


def _claimed(body: bytes) -> Envelope | None:
    """What an unverified body claims to be, if it decodes at all."""
    try:
        return decode_envelope(body)
    except VerificationError:
        return None


def _project_record(rows: Rows, seq: int, channel: str, subject: str, opened: Opened) -> None:
    env = opened.envelope
    role = opened.grant.role
    if channel == "decision":
        _require(env.kind == "decision", f"a {env.kind} envelope on the decision subject")
        _require(role == "coordinator", f"decision signed by a key of role {role!r}")
        rows.decisions.extend(_decision_row(seq, env.sender, *item) for item in recorded_decisions(env))
    elif channel == "effect":
        _require(env.kind == "effect", f"a {env.kind} envelope on an effect subject")
        parsed = subjects.parse(subject)
        agent = parsed.owner or "" if parsed is not None and parsed.depth in (2, 3) else ""  # [.<partition>].<key>
        _require(agent == env.sender, f"effect record of {env.sender!r} on {agent!r}'s subject")
        e = decode_effect(env.payload)
        rows.effects.append(
            EffectRow(
                seq=seq,
                envelope_id=env.id,
                agent=agent,
                idempotency_key=e.idempotency_key,
                phase=e.phase,
                tool=e.tool,
                effect_class=e.effect_class,
                compensating_tool=e.compensating_tool,
                taint=e.taint,
                correlation_id=env.correlation_id,
                causation_id=env.causation_id,
                error=e.error,
                ts=env.ts,
            )
        )
    elif channel == "outbox" and env.kind == "memory_write":
        w = decode_memory_write(env.payload)
        rows.memory_proposals.append(
            MemoryProposalRow(
                seq=seq,
                envelope_id=env.id,
                agent=env.to[0] if len(env.to) == 1 else env.sender,  # the namespace (an operator's revert names it)
                key=w.key,
                expected_revision=w.expected_revision,
                correlation_id=env.correlation_id,
                taint=env.taint,
            )
        )
    elif channel == "quarantine":
        try:
            q = decode_quarantine_record(env.payload)
        except (msgspec.DecodeError, ValueError):  # or a summary of many refusals (ledger._rejections)
            summary = decode_rejection_summary(env.payload)
            _require(role in SUMMARY_ROLES, f"rejection summary signed by a key of role {role!r}")
            rows.quarantine.extend(summary_rows(seq, env.sender, summary))
            return
        rows.quarantine.append(
            QuarantineRow(
                seq=seq,
                rejected_by=env.sender,
                reason=q.reason,
                detail=q.detail,
                subject=q.subject,
                stream_seq=q.stream_seq,
                claimed_sender=q.claimed_sender,
                claimed_id=q.claimed_id,
                key_id=q.key_id,
                body_size=q.body_size,
                body_sha256=q.body_sha256,
                truncated=q.truncated,
            )
        )
    elif channel == "checkpoint":
        _require(env.kind == "checkpoint", f"a {env.kind} envelope on the checkpoint subject")
        _require(role == "ledger", f"checkpoint signed by a key of role {role!r}")
        c = decode_checkpoint(env.payload)
        rows.checkpoints.append(
            CheckpointRow(
                seq=seq,
                stream=c.stream,
                through_seq=c.through_seq,
                head=c.head.hex(),
                count=c.count,
                signer=env.sender,
                key_id=opened.grant.key_id,
            )
        )


def summary_rows(seq: int, rejected_by: str, summary: RejectionSummary) -> list[QuarantineRow]:
    """One ``quarantine`` row per message a rejection summary lists (its sample's carries the detail)."""
    sample = summary.sample
    details = [summary.detail_of(item) for item in summary.items]
    return [
        QuarantineRow(
            seq=seq,
            rejected_by=rejected_by,
            reason=reason,
            detail=detail,
            subject=subject,
            stream_seq=stream_seq,
            claimed_sender=summary.owner,
            claimed_id=sample.claimed_id if stream_seq == sample.seq else None,
            key_id=sample.key_id if stream_seq == sample.seq else None,
            body_size=size,
            body_sha256=digest.hex(),
            truncated=True,
        )
        for (stream_seq, subject, reason, size, digest), detail in zip(summary.rejected(), details, strict=True)
    ]


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise RecordError(problem)
