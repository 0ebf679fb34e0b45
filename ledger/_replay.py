"""An incident: every stored message of one correlation, as a timeline and a causal tree.

Pure: built from stored messages (a live stream or a bundle) and the keyring.
What belongs to a correlation: the envelopes sent in it (outboxes), their
deliveries (inboxes, topics), the decisions about them, the effects recorded
in it, and the quarantine records of envelopes that claimed it.

A message on an effect subject that is not that agent's effect record (another
signer's envelope re-published there, another kind, an unreadable record) is
not an effect: it is shown in the tree as a rejected step, and the rest of the
incident is built as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trustbus.bus import (
    Decision,
    EffectRecord,
    Envelope,
    Keyring,
    StoredMessage,
    VerificationError,
    decode_decisions,
    decode_effect,
    decode_envelope,
    decode_json,
    decode_quarantine_record,
    open_envelope,
    subjects,
)
from trustbus.ledger._rejections import read_summary


@dataclass
class Step:
    """One envelope sent in the incident, what was decided about it, what it caused."""

    seq: int
    stored_ns: int
    envelope: Envelope
    decisions: list[Decision] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    effects: list[EffectRecord] = field(default_factory=list)
    quarantined: str | None = None
    children: list[Step] = field(default_factory=list)


@dataclass
class Incident:
    """The steps of one correlation in stream order, the roots of its causal tree, its tool calls."""

    correlation_id: str
    steps: list[Step]
    roots: list[Step]
    effects: list[tuple[int, int, Envelope, EffectRecord]] = field(default_factory=list)
    rejected: list[Step] = field(default_factory=list)  # in the tree, not among ``steps``: nothing was sent
    held: set[str] = field(default_factory=set)  # idempotency keys of the tool calls the coordinator held


def _channel(tenant: str, subject: str) -> subjects.Subject:
    parsed = subjects.parse(subject)
    return parsed if parsed is not None and parsed.tenant == tenant else subjects.Subject(tenant, "other")


def build_incident(messages: Sequence[StoredMessage], keyring: Keyring, tenant: str, correlation_id: str) -> Incident:
    """Collect and link everything of ``correlation_id`` among ``messages`` (verified; failures noted)."""
    steps: dict[str, Step] = {}
    order: list[Step] = []
    pending: list[tuple[str, Any]] = []  # records about envelopes, attached once all steps are known
    effects: list[tuple[int, int, Envelope, EffectRecord]] = []
    rejected: list[Step] = []
    asks: dict[str, str] = {}  # requested effect records by envelope id: their keys
    for message in messages:
        parsed = _channel(tenant, message.subject)
        where = parsed.channel
        try:
            envelope = decode_envelope(message.body)
        except VerificationError:
            continue
        if where == "quarantine":
            _quarantine_note(message, keyring, correlation_id, pending)
            if (summary := read_summary(message, keyring, tenant)) is not None:  # refused in aggregate: by sequence
                by = summary[0]
                pending.extend(
                    ("quarantine", (None, seq, f"{why} by {by}")) for seq, _, why, _, _ in summary[1].rejected()
                )
            continue
        if envelope.correlation_id != correlation_id and not (where == "decision" and _about(envelope, correlation_id)):
            continue
        try:
            opened = open_envelope(
                message.body,
                message.headers,
                keyring=keyring,
                received_ns=message.stored_ns,
                recipient=subjects.mediated_recipient(tenant, message.subject),
                at_store=subjects.judged_at_store(tenant, message.subject),
            )
        except VerificationError as exc:
            if where == "outbox":
                step = Step(message.seq, message.stored_ns, envelope, quarantined=f"unverified: {exc.reason}")
                steps.setdefault(envelope.id, step)
                order.append(step)
            continue
        envelope = opened.envelope
        if where == "outbox":
            step = Step(message.seq, message.stored_ns, envelope)
            steps.setdefault(envelope.id, step)
            order.append(step)
        elif where in ("inbox", "topic"):
            pending.append(("delivery", (envelope.id, parsed.owner or "")))
        elif where == "decision" and opened.grant.role == "coordinator":
            try:
                decisions, _ = decode_decisions(envelope.payload)
            except (msgspec.DecodeError, ValueError):
                continue
            pending.extend(("decision", d) for d in decisions if d.correlation_id == correlation_id)
        elif where == "effect":
            effect, why = _effect_of(tenant, message.subject, envelope)
            if effect is None:
                rejected.append(Step(message.seq, message.stored_ns, envelope, quarantined=f"rejected: {why}"))
                continue
            pending.append(("effect", (envelope.causation_id, effect)))
            effects.append((message.seq, message.stored_ns, envelope, effect))
            if effect.phase == "requested":
                asks[envelope.id] = effect.idempotency_key
    by_seq = {step.seq: step for step in (*order, *rejected)}
    held: set[str] = set()
    for kind, item in pending:
        if kind == "quarantine" and item[1] in by_seq:  # the record names the very message it refused
            by_seq[item[1]].quarantined = item[2]
        elif kind == "decision" and item.envelope_id in steps:
            steps[item.envelope_id].decisions.append(item)
        elif kind == "decision" and item.envelope_id in asks and item.verdict == "hold":
            held.add(asks[item.envelope_id])
        elif kind == "delivery" and item[0] in steps:
            steps[item[0]].deliveries.append(item[1])
        elif kind == "effect" and item[0] in steps:
            steps[item[0]].effects.append(item[1])
        elif kind == "quarantine" and item[0] in steps:
            steps[item[0]].quarantined = item[2]
    roots: list[Step] = []
    for step in sorted((*order, *rejected), key=lambda s: s.seq):
        parent = steps.get(step.envelope.causation_id or "")
        (parent.children if parent is not None and parent is not step else roots).append(step)
    return Incident(correlation_id, order, roots, effects, rejected, held)


def _effect_of(tenant: str, subject: str, envelope: Envelope) -> tuple[EffectRecord | None, str]:
    """The effect record ``envelope`` carries on ``subject``, or None and why it is not one."""
    owner = subjects.effect_owner(tenant, subject)
    if envelope.sender != owner or envelope.kind != "effect":
        return None, f"{envelope.sender}'s {envelope.kind} on {owner}'s effect subject"
    try:
        return decode_effect(envelope.payload), ""
    except (msgspec.DecodeError, ValueError) as exc:
        return None, f"unreadable effect record: {exc}"


def checkpoint_before(
    messages: Sequence[StoredMessage], keyring: Keyring, tenant: str, agent_id: str, before_seq: int
) -> dict[str, Any] | None:
    """The state in ``agent_id``'s last checkpoint a coordinator accepted before stream sequence ``before_seq``.

    What a process of the agent started then would have been handed (None: it had
    none). Only the candidates, checkpoints from its outbox and decisions about
    checkpoints, are verified.
    """
    sent: dict[str, bytes] = {}  # the agent's checkpoint envelopes by id: their payloads
    accepted: bytes | None = None
    for message in messages:
        if message.seq >= before_seq:
            break
        where = _channel(tenant, message.subject).channel
        if where not in ("outbox", "decision"):
            continue
        try:
            claimed = decode_envelope(message.body)
            if where == "outbox" and (claimed.kind != "checkpoint" or claimed.sender != agent_id):
                continue
            decision = None
            if where == "decision":
                about_sent = (d for d in decode_decisions(claimed.payload)[0] if d.envelope_id in sent)
                decision = next((d for d in about_sent if d.verdict == "accept"), None)
                if decision is None:
                    continue
            opened = open_envelope(
                message.body,
                message.headers,
                keyring=keyring,
                received_ns=message.stored_ns,
                at_store=subjects.judged_at_store(tenant, message.subject),
            )
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
        if decision is None:
            sent[opened.envelope.id] = opened.envelope.payload
        elif opened.grant.role == "coordinator":
            accepted = sent[decision.envelope_id]
    if accepted is None:
        return None
    state: dict[str, Any] = decode_json(accepted, type=dict[str, Any])
    return state


def _about(record: Envelope, correlation_id: str) -> bool:
    """Whether a decision record (unverified yet) claims a decision about ``correlation_id``: a group's record has
    a correlation of its own."""  # noqa: D205, D209
    try:
        return any(d.correlation_id == correlation_id for d in decode_decisions(record.payload)[0])
    except (msgspec.DecodeError, ValueError):
        return False


def _quarantine_note(
    message: StoredMessage, keyring: Keyring, correlation_id: str, pending: list[tuple[str, Any]]
) -> None:
    try:
        opened = open_envelope(
            message.body, message.headers, keyring=keyring, received_ns=message.stored_ns, at_store=True
        )
        record = decode_quarantine_record(opened.envelope.payload)
        claimed = decode_envelope(record.body) if not record.truncated else None
    except (VerificationError, msgspec.DecodeError, ValueError):
        return
    if claimed is not None and claimed.correlation_id == correlation_id and record.claimed_id:
        note = f"{record.reason} by {opened.envelope.sender}"
        pending.append(("quarantine", (record.claimed_id, record.stream_seq, note)))


def step_dict(step: Step) -> dict[str, Any]:
    """A step and its descendants as JSON-ready data (payloads summarised, not repeated)."""
    env = step.envelope
    return {
        "seq": step.seq,
        "id": env.id,
        "kind": env.kind,
        "sender": env.sender,
        "to": list(env.to),
        "hop": env.hop,
        "declared_taint": list(env.taint),
        "payload_size": len(env.payload),
        "decisions": [
            {
                "verdict": d.verdict,
                "reasons": list(d.reasons),
                "deliver_to": list(d.deliver_to),
                "effective_taint": list(d.effective_taint),
                "approver": d.approver,
            }
            for d in step.decisions
        ],
        "delivered_to": sorted(step.deliveries),
        "effects": [
            {"tool": e.tool, "phase": e.phase, "key": e.idempotency_key, "taint": list(e.taint)} for e in step.effects
        ],
        "quarantined": step.quarantined,
        "children": [step_dict(child) for child in step.children],
    }
