"""The compensation plan for an incident: what to undo, in reverse order, and what a person must handle.

Pure: built from an :class:`~ledger.Incident` and the idempotency keys already
compensated anywhere in the ledger. Every effect record carries its effect
class and compensating tool, so the plan never needs the tool registry.

A compensation is itself an effect whose JSON arguments name the effect it
undoes: ``{"compensates": <idempotency key>, ...}``. An effect with a completed
compensation is left out, so planning (and executing) twice undoes nothing
twice. Carrying a plan out is :mod:`ledger._rollback_executor`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trustbus.bus import (
    EffectRecord,
    Envelope,
    Keyring,
    MalformedPayload,
    StoredMessage,
    VerificationError,
    decode_effect,
    decode_json,
    open_envelope,
    subjects,
)
from trustbus.ledger._replay import Incident

COMPENSATES = "compensates"


@dataclass(frozen=True)
class Compensation:
    """One completed effect and how to undo it (``compensating_tool``), or why a person must."""

    seq: int
    agent: str
    tool: str
    effect_class: str
    compensating_tool: str | None
    idempotency_key: str
    args: Any
    result: Any

    def arguments(self) -> dict[str, Any]:
        """The compensating call's arguments: the original call, its result, and what it compensates."""
        return {COMPENSATES: self.idempotency_key, "original": self.args, "result": self.result}


@dataclass(frozen=True)
class MemoryRevert:
    """A memory key the incident wrote, to put back as it was before (as a new revision)."""

    agent: str
    key: str
    written_by: tuple[str, ...]


@dataclass
class RollbackPlan:
    """Reversible effects to compensate (latest first), irreversible ones for a person, what is already undone."""

    correlation_id: str
    trace: tuple[str, str] | None = None  # the incident's origin's signed trace context: the rollback joins its trace
    compensate: list[Compensation] = field(default_factory=list)
    for_a_person: list[Compensation] = field(default_factory=list)
    already_compensated: list[Compensation] = field(default_factory=list)
    memory: list[MemoryRevert] = field(default_factory=list)


def verified_effects(messages: Sequence[StoredMessage], keyring: Keyring, tenant: str) -> list[EffectRecord]:
    """Every effect record in ``messages`` whose envelope verifies, signed by the agent whose subject it is on."""
    records = []
    for message in messages:
        owner = subjects.effect_owner(tenant, message.subject)
        if owner is None:
            continue
        try:
            opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
            if opened.envelope.sender == owner and opened.envelope.kind == "effect":
                records.append(decode_effect(opened.envelope.payload))
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
    return records


def compensated_keys(effects: Iterable[EffectRecord]) -> set[str]:
    """Idempotency keys that completed compensations name."""
    keys: set[str] = set()
    for record in effects:
        if record.phase != "completed":
            continue
        try:
            args = decode_json(record.args)
        except MalformedPayload:
            continue
        if isinstance(args, dict) and isinstance(args.get(COMPENSATES), str):
            keys.add(args[COMPENSATES])
    return keys


def plan_rollback(incident: Incident, *, compensated: set[str], from_seq: int = 0) -> RollbackPlan:
    """Plan the rollback of every completed effect of ``incident`` at or after ``from_seq``."""
    plan = RollbackPlan(
        correlation_id=incident.correlation_id, trace=incident.roots[0].envelope.trace if incident.roots else None
    )
    completed: dict[str, tuple[int, Envelope, EffectRecord]] = {}
    for seq, _, envelope, record in incident.effects:
        if record.phase == "completed" and seq >= from_seq:
            completed.setdefault(record.idempotency_key, (seq, envelope, record))
    for seq, envelope, record in sorted(completed.values(), key=lambda item: item[0], reverse=True):
        if record.effect_class == "read" or _is_compensation(record):
            continue
        readable = True
        try:
            args, result = decode_json(record.args), decode_json(record.result) if record.result else None
        except MalformedPayload as exc:  # nothing to compensate with: a person looks at it
            args, result, readable = {"malformed": exc.detail}, None, False
        item = Compensation(
            seq=seq,
            agent=envelope.sender,
            tool=record.tool,
            effect_class=record.effect_class,
            compensating_tool=record.compensating_tool,
            idempotency_key=record.idempotency_key,
            args=args,
            result=result,
        )
        if record.idempotency_key in compensated:
            plan.already_compensated.append(item)
        elif record.effect_class == "reversible" and record.compensating_tool and readable:
            plan.compensate.append(item)
        else:
            plan.for_a_person.append(item)
    plan.memory = memory_written(incident, from_seq=from_seq)
    return plan


def memory_written(incident: Incident, *, from_seq: int = 0) -> list[MemoryRevert]:
    """The memory keys the incident's accepted writes changed, with the envelopes that wrote them."""
    writers: dict[tuple[str, str], list[str]] = {}
    for step in incident.steps:
        envelope = step.envelope
        accepted = any(d.verdict == "accept" for d in step.decisions)
        if envelope.kind != "memory_write" or not accepted or step.seq < from_seq or len(envelope.to) != 1:
            continue
        try:
            key = decode_json(envelope.payload)["key"]
        except (ValueError, KeyError, TypeError):  # MalformedPayload is a ValueError
            continue
        writers.setdefault((envelope.to[0], str(key)), []).append(envelope.id)
    return [MemoryRevert(agent, key, tuple(ids)) for (agent, key), ids in writers.items()]


def _is_compensation(record: EffectRecord) -> bool:
    return bool(compensated_keys([record]))
