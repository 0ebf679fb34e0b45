"""The compensation plan for an incident: what to undo, in reverse order, and what a person must handle.

Pure: built from an :class:`~ledger.Incident` and the idempotency keys already
compensated anywhere in the ledger. Every effect record carries its effect
class and compensating tool, so the plan never needs the tool registry.

A compensation is itself an effect whose JSON arguments name the effect it
undoes: ``{"compensates": <idempotency key>, ...}``. An effect with a completed
compensation is left out, so planning (and executing) twice undoes nothing
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trustbus.bus import (
    Bucket,
    Bus,
    EffectRecord,
    Envelope,
    Identity,
    Keyring,
    MalformedPayload,
    MemoryValue,
    StoredMessage,
    VerificationError,
    decode_decision,
    decode_effect,
    decode_json,
    decode_memory_value,
    new_envelope,
    open_envelope,
    subjects,
)
from trustbus.ledger._errors import LedgerError
from trustbus.ledger._replay import Incident

POLL_S = 0.05  # how often a rollback re-reads the stream while it waits for the coordinator and agents
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
    plan = RollbackPlan(correlation_id=incident.correlation_id)
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


async def execute_rollback(
    servers: Sequence[str],
    tenant: str,
    plan: RollbackPlan,
    *,
    operator: Identity,
    operator_name: str,
    wait_s: float = 30.0,
    nkey_auth: bool = False,
) -> list[str]:
    """Send each compensation, latest first, and wait until its compensating effect has completed.

    Each is an ``instruction`` from the operator to the agent that made the
    effect, through the coordinator like any other (the policy must let the
    operator give that agent the compensating tool's verb), carrying
    ``idempotency_key = compensate:<key>`` so that sending it again can never
    run the compensation twice. Returns the compensated keys, in order.
    """
    done: list[str] = []
    async with await Bus.connect(
        list(servers),
        tenant=tenant,
        name=operator_name,
        identity=operator,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(operator_name) if nkey_auth else None,
    ) as bus:
        correlation = rollback_correlation(plan.correlation_id)
        for item in plan.compensate:
            start = await bus.last_seq() + 1
            payload = {"verb": item.compensating_tool, **item.arguments()}
            instruction = new_envelope(
                tenant=tenant,
                kind="instruction",
                sender=operator_name,
                to=(item.agent,),
                payload=json.dumps(payload).encode(),
                correlation_id=correlation,
                idempotency_key=f"compensate:{item.idempotency_key}",
            )
            await bus.send(instruction)
            await _completed(bus, tenant, item, from_seq=start, wait_s=wait_s)
            done.append(item.idempotency_key)
        for revert in plan.memory:
            if await _revert_memory(bus, tenant, revert, operator_name, correlation, wait_s=wait_s):
                done.append(f"memory:{revert.agent}.{revert.key}")
    return done


def rollback_correlation(incident: str) -> str:
    """The correlation a rollback of ``incident`` runs in: the same every time, so a rollback run again (or
    twice at once) lands in the same partition, where each compensation's effect key is already recorded."""  # noqa: D205, D209
    return str(uuid.uuid5(_ROLLBACKS, incident))


_ROLLBACKS = uuid.UUID("6f1d7c2e-5b1a-4c3e-9a57-2f4e8d0b6a11")


async def _revert_memory(
    bus: Bus, tenant: str, revert: MemoryRevert, operator_name: str, correlation: str, *, wait_s: float
) -> bool:
    """Write the key's value from before the incident, if the incident's write is still the current one."""
    memory = bus.bucket(subjects.memory_bucket(tenant))
    key = f"{revert.agent}.{revert.key}"
    history: list[tuple[int, MemoryValue]] = []  # the values the coordinator wrote (foreign ones are skipped)
    last = 1
    async for entry in memory.history(key):
        last = entry.revision
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            history.append((entry.revision, decode_memory_value(entry.value)))
    if not history or history[-1][1].envelope_id not in revert.written_by:
        return False  # reverted already, or changed since: a person decides
    first = next(i for i, (_, value) in enumerate(history) if value.envelope_id in revert.written_by)
    earlier = decode_json(history[first - 1][1].value) if first > 0 else None
    payload = {
        "key": revert.key,
        "value": earlier,
        "expected_revision": last,
        "reverts": list(revert.written_by),
    }
    start = await bus.last_seq() + 1
    write = new_envelope(
        tenant=tenant,
        kind="memory_write",
        sender=operator_name,
        to=(revert.agent,),
        payload=json.dumps(payload).encode(),
        correlation_id=correlation,
    )
    await bus.send(write)
    decisions = subjects.decision(tenant, bus.partition(correlation))
    async for envelope in _verified(bus, decisions, start, wait_s):
        decision = decode_decision(envelope.payload)
        if decision.envelope_id == write.id:
            if decision.verdict != "accept":
                raise LedgerError(f"reverting {revert.agent}.{revert.key} was refused: {', '.join(decision.reasons)}")
            await _stored(memory, key, write.id, wait_s=wait_s)
            return True
    raise LedgerError(f"no decision about reverting {revert.agent}.{revert.key} within {wait_s:.0f}s")


async def _verified(bus: Bus, subject: str, from_seq: int, wait_s: float) -> AsyncIterator[Envelope]:
    """Verified envelopes stored on ``subject`` from ``from_seq`` on, as they arrive, for ``wait_s`` at most.

    Read by message gets, the one way every role (an operator's included) may
    read the stream; no consumer is made.
    """
    deadline = time.monotonic() + wait_s
    records = bus.log(subject)
    after = from_seq - 1
    while time.monotonic() < deadline:
        async for message in records.read(after=after):
            after = message.seq
            try:
                opened = open_envelope(
                    message.body, message.headers, keyring=bus.keyring.keyring, received_ns=message.stored_ns
                )
            except VerificationError:
                continue
            yield opened.envelope
            if time.monotonic() >= deadline:
                return
        await asyncio.sleep(POLL_S)


async def _completed(bus: Bus, tenant: str, item: Compensation, *, from_seq: int, wait_s: float) -> None:
    async for envelope in _verified(bus, f"{subjects.effect(tenant, item.agent)}.>", from_seq, wait_s):
        if envelope.sender != item.agent or envelope.kind != "effect":
            continue  # not the agent's record: refused by the coordinator, nothing to wait on
        try:
            effect = decode_effect(envelope.payload)
        except (msgspec.DecodeError, ValueError):
            continue
        if item.idempotency_key in compensated_keys([effect]):
            return
        if effect.phase == "failed" and _names(effect, item.idempotency_key):
            raise LedgerError(f"compensating {item.tool} ({item.idempotency_key}) failed: {effect.error}")
    raise LedgerError(
        f"no completed {item.compensating_tool} for {item.idempotency_key} within {wait_s:.0f}s: "
        f"is the coordinator running, and does the policy let the operator instruct {item.agent} "
        f"with verb {item.compensating_tool!r}?"
    )


def _names(effect: EffectRecord, key: str) -> bool:
    try:
        args = decode_json(effect.args)
    except MalformedPayload:
        return False
    return isinstance(args, dict) and args.get(COMPENSATES) == key


async def _stored(memory: Bucket, key: str, envelope_id: str, *, wait_s: float) -> None:
    """Wait until the coordinator has stored the value ``envelope_id`` wrote (it writes after deciding)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        entry = await memory.get(key)
        with contextlib.suppress(msgspec.DecodeError, ValueError):  # not there yet, or a foreign value to replace
            if entry is not None and decode_memory_value(entry.value).envelope_id == envelope_id:
                return
        await asyncio.sleep(POLL_S)
    raise LedgerError(f"the reverted value of {memory.subject(key)} was not stored within {wait_s:.0f}s")
