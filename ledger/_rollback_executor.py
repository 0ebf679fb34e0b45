"""Carrying out a rollback plan (:mod:`ledger._rollback`): each compensation sent as the operator's instruction.

Progress is the ledger itself: a compensation is done once its agent has
recorded a completed effect naming the effect it undoes
(:func:`~ledger.compensated_keys`). Before sending one, :func:`run_rollback`
looks for that record since the effect itself, and counts it done if it is
there; so a rollback run again (after a crash mid-way, even with the plan made
before it) sends only what is not done yet. A compensation that is sent twice
all the same (its first instruction was still on its way) runs once: both carry
``idempotency_key = compensate:<key>``, and an agent runs a call of a key it
has completed no more.

The executor runs over an :class:`Operator`, what it needs of a connection;
:func:`execute_rollback` connects a :class:`~bus.Bus` as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

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
    SubjectLog,
    VerificationError,
    current_trace,
    decode_decisions,
    decode_effect,
    decode_json,
    new_envelope,
    open_envelope,
    open_memory_value,
    subjects,
    traced,
)
from trustbus.ledger._errors import LedgerError
from trustbus.ledger._rollback import COMPENSATES, Compensation, MemoryRevert, RollbackPlan, compensated_keys

log = logging.getLogger("trustbus.ledger")

POLL_S = 0.05  # how often a rollback re-reads the stream while it waits for the coordinator and agents


class Operator(Protocol):
    """What a rollback needs of its connection, made as the operator (a :class:`~bus.Bus` is one)."""

    @property
    def tenant(self) -> str:
        """The tenant rolled back."""

    @property
    def name(self) -> str:
        """The operator's name: the sender of every compensation."""

    def partition(self, correlation_id: str) -> int:
        """The tenant partition of ``correlation_id``."""

    async def send(self, envelope: Envelope) -> object:
        """Sign ``envelope`` as the operator and publish it to the operator's outbox."""

    async def last_seq(self) -> int:
        """The tenant stream's last sequence now."""

    def log(self, subject: str) -> SubjectLog:
        """The tenant stream's records on ``subject``."""

    def bucket(self, name: str) -> Bucket:
        """The tenant's bucket ``name``."""


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
    """Connect as the operator and carry out ``plan`` (:func:`run_rollback`); the keys compensated, in order."""
    async with await Bus.connect(
        list(servers),
        tenant=tenant,
        name=operator_name,
        identity=operator,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(operator_name) if nkey_auth else None,
    ) as bus:
        return await run_rollback(plan, bus, keyring=bus.keyring.keyring, wait_s=wait_s)


async def run_rollback(plan: RollbackPlan, via: Operator, *, keyring: Keyring, wait_s: float = 30.0) -> list[str]:
    """Compensate each effect of ``plan``, latest first, waiting until its compensating effect has completed.

    Each is an ``instruction`` from the operator to the agent that made the
    effect, through the coordinator like any other (the policy must let the
    operator give that agent the compensating tool's verb). Then each memory
    key the incident wrote is put back. Returns the compensated keys (by this
    run or an earlier one) and the reverted memory keys, in order.

    With tracing on, the rollback is a ``rollback`` span, a child of the span
    that sent the incident's origin (from its signed trace context), and every
    envelope it sends carries it: the rollback joins the incident's trace.

    Raises:
        LedgerError: a compensation failed or did not complete within ``wait_s``;
            the rollback stops there and says which, and what was done before it.
    """
    correlation = rollback_correlation(plan.correlation_id)
    attributes: dict[str, str | int] = {
        "gen_ai.conversation.id": plan.correlation_id,
        "trustbus.operator": via.name,
        "trustbus.rollback.correlation_id": correlation,
        "trustbus.rollback.compensations": len(plan.compensate),
    }
    with traced("rollback", attributes, parent=plan):
        return await _rollback(plan, via, keyring, correlation, wait_s=wait_s)


async def _rollback(
    plan: RollbackPlan, via: Operator, keyring: Keyring, correlation: str, *, wait_s: float
) -> list[str]:
    done: list[str] = []
    for position, item in enumerate(plan.compensate, start=1):
        try:
            await _compensate(via, keyring, item, correlation, wait_s=wait_s)
        except LedgerError as exc:
            before = ", ".join(done) or "none"
            raise LedgerError(
                f"rollback of {plan.correlation_id} stopped at compensation {position} of {len(plan.compensate)}: "
                f"{exc} (compensated before it: {before})"
            ) from exc
        done.append(item.idempotency_key)
    for revert in plan.memory:
        if await _revert_memory(via, keyring, revert, correlation, wait_s=wait_s):
            done.append(f"memory:{revert.agent}.{revert.key}")
    return done


def rollback_correlation(incident: str) -> str:
    """The correlation a rollback of ``incident`` runs in: the same every time, so a rollback run again (or
    twice at once) lands in the same partition, where each compensation's effect key is already recorded."""  # noqa: D205, D209
    return str(uuid.uuid5(_ROLLBACKS, incident))


_ROLLBACKS = uuid.UUID("6f1d7c2e-5b1a-4c3e-9a57-2f4e8d0b6a11")


async def _compensate(via: Operator, keyring: Keyring, item: Compensation, correlation: str, *, wait_s: float) -> None:
    """Send ``item``'s compensation unless it has completed already, and wait until it has."""
    effects = f"{subjects.effect(via.tenant, item.agent)}.>"
    after = item.seq  # its compensation, sent by an earlier run, may have completed since the effect itself
    async for seq, effect in _effects(via, keyring, item, effects, after=after):
        after = seq
        if item.idempotency_key in compensated_keys([effect]):
            return
    start = await via.last_seq() + 1
    payload = {"verb": item.compensating_tool, **item.arguments()}
    instruction = new_envelope(
        tenant=via.tenant,
        kind="instruction",
        sender=via.name,
        to=(item.agent,),
        payload=json.dumps(payload).encode(),
        correlation_id=correlation,
        idempotency_key=f"compensate:{item.idempotency_key}",
        trace=current_trace(),
    )
    await via.send(instruction)
    deadline = time.monotonic() + wait_s
    while True:
        async for seq, effect in _effects(via, keyring, item, effects, after=after):
            after = seq
            if item.idempotency_key in compensated_keys([effect]):
                return
            if seq >= start and effect.phase == "failed" and _names(effect, item.idempotency_key):
                raise LedgerError(f"compensating {item.tool} ({item.idempotency_key}) failed: {effect.error}")
        if time.monotonic() >= deadline:
            raise LedgerError(
                f"no completed {item.compensating_tool} for {item.idempotency_key} within {wait_s:.0f}s: "
                f"is the coordinator running, and does the policy let the operator instruct {item.agent} "
                f"with verb {item.compensating_tool!r}?"
            )
        await asyncio.sleep(POLL_S)


async def _effects(
    via: Operator, keyring: Keyring, item: Compensation, subject: str, *, after: int
) -> AsyncIterator[tuple[int, EffectRecord]]:
    """The effect records ``item``'s agent signed on ``subject`` after ``after`` (those stored now), with their
    sequences."""  # noqa: D205, D209
    async for message in via.log(subject).read(after=after):
        try:
            opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
        except VerificationError:
            continue
        envelope = opened.envelope
        if envelope.sender != item.agent or envelope.kind != "effect":
            continue  # not the agent's record: refused by the coordinator, nothing to wait on
        try:
            yield message.seq, decode_effect(envelope.payload)
        except (msgspec.DecodeError, ValueError):
            continue


def _names(effect: EffectRecord, key: str) -> bool:
    try:
        args = decode_json(effect.args)
    except MalformedPayload:
        return False
    return isinstance(args, dict) and args.get(COMPENSATES) == key


async def _revert_memory(
    via: Operator, keyring: Keyring, revert: MemoryRevert, correlation: str, *, wait_s: float
) -> bool:
    """Write the key's value from before the incident, if the incident's write is still the current one."""
    memory = via.bucket(subjects.memory_bucket(via.tenant))
    key = f"{revert.agent}.{revert.key}"
    history: list[tuple[int, MemoryValue]] = []  # the values a coordinator signed for this key
    last = 1
    async for entry in memory.history(key):
        last = entry.revision
        try:
            history.append(
                (entry.revision, open_memory_value(entry.value, keyring=keyring, key=key, stored_ns=entry.stored_ns))
            )
        except ValueError as exc:
            log.warning("memory value skipped as foreign", extra={"subject": memory.subject(key), "detail": str(exc)})
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
    start = await via.last_seq() + 1
    write = new_envelope(
        tenant=via.tenant,
        kind="memory_write",
        sender=via.name,
        to=(revert.agent,),
        payload=json.dumps(payload).encode(),
        correlation_id=correlation,
        trace=current_trace(),
    )
    await via.send(write)
    decisions = subjects.decision(via.tenant, via.partition(correlation))
    async for envelope in _verified(via, keyring, decisions, start, wait_s):
        for decision in decode_decisions(envelope.payload)[0]:
            if decision.envelope_id != write.id:
                continue
            if decision.verdict != "accept":
                raise LedgerError(f"reverting {revert.agent}.{revert.key} was refused: {', '.join(decision.reasons)}")
            await _stored(memory, keyring, key, write.id, wait_s=wait_s)
            return True
    raise LedgerError(f"no decision about reverting {revert.agent}.{revert.key} within {wait_s:.0f}s")


async def _verified(
    via: Operator, keyring: Keyring, subject: str, from_seq: int, wait_s: float
) -> AsyncIterator[Envelope]:
    """Verified envelopes stored on ``subject`` from ``from_seq`` on, as they arrive, for ``wait_s`` at most.

    Read by message gets, the one way every role (an operator's included) may
    read the stream; no consumer is made.
    """
    deadline = time.monotonic() + wait_s
    records = via.log(subject)
    after = from_seq - 1
    while time.monotonic() < deadline:
        async for message in records.read(after=after):
            after = message.seq
            try:
                opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
            except VerificationError:
                continue
            yield opened.envelope
            if time.monotonic() >= deadline:
                return
        await asyncio.sleep(POLL_S)


async def _stored(memory: Bucket, keyring: Keyring, key: str, envelope_id: str, *, wait_s: float) -> None:
    """Wait until the coordinator has stored the value ``envelope_id`` wrote (it writes after deciding)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        entry = await memory.get(key)
        with contextlib.suppress(ValueError):  # not there yet, or a foreign value to replace
            if (
                entry is not None
                and open_memory_value(entry.value, keyring=keyring, key=key, stored_ns=entry.stored_ns).envelope_id
                == envelope_id
            ):
                return
        await asyncio.sleep(POLL_S)
    raise LedgerError(f"the reverted value of {memory.subject(key)} was not stored within {wait_s:.0f}s")
