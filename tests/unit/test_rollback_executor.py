"""The rollback executor in-process (bus.testing): resumes without compensating twice, stops where one fails.

The operator's connection is an in-memory tenant stream; what the coordinator and the agent do with a
compensation (run it once per idempotency key, and record its effect) is played by :class:`Bank`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from trustbus.bus import (
    Decision,
    EffectRecord,
    Envelope,
    Identity,
    KeyGrant,
    Keyring,
    MemoryValue,
    SubjectLog,
    Unavailable,
    decode_effect,
    decode_memory_value,
    encode_decision,
    encode_effect,
    memory_value,
    new_envelope,
    open_envelope,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus.testing import MemoryBucket, MemoryStream
from trustbus.ledger import LedgerError, compensated_keys, verified_effects
from trustbus.ledger._rollback import Compensation, MemoryRevert, RollbackPlan
from trustbus.ledger._rollback_executor import run_rollback

T0 = time.time_ns()
TENANT = "acme"
ADMIN, OPS, BANK, COORDINATOR = Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate()


def keyring() -> Keyring:
    ring = Keyring(tenant=TENANT, admin_key_id=ADMIN.key_id)
    for identity, owner, role in ((OPS, "ops", "operator"), (BANK, "bank", "agent"), (COORDINATOR, "c", "coordinator")):
        grant = KeyGrant(tenant=TENANT, key_id=identity.key_id, owner=owner, role=role, valid_from=T0 - 3600 * 10**9)
        ring.add(identity.key_id, sign_grant(grant, ADMIN))
    return ring


class Crash(Exception):
    """The operator's process died."""


@dataclass
class Bank:
    """The agent ``bank`` behind its coordinator: runs each compensation it is instructed to once per key."""

    stream: MemoryStream
    ran: list[str] = field(default_factory=list)  # the effects it compensated, in order
    failing: set[str] = field(default_factory=set)  # effects whose compensation fails
    crash_after: str | None = None  # the operator's process dies once this effect's compensation is sent
    holding: bool = False  # instructions wait in its queue until work_off()
    queue: list[Envelope] = field(default_factory=list)

    async def work_off(self) -> None:
        while self.queue:
            await self.run(self.queue.pop(0))

    async def record(self, key: str, record: EffectRecord) -> int:
        effect = new_envelope(
            tenant=TENANT, kind="effect", sender="bank", to=(), content_type="application/msgpack",
            payload=encode_effect(record),
        )  # fmt: skip
        sealed = seal(effect, BANK)
        log = self.stream.log(subjects.effect_record(TENANT, "bank", 0, key))
        return (await log.append(sealed.body, dict(sealed.headers), after=None)).seq

    async def refund(self, order: int) -> int:
        """An effect of the incident: a completed refund of ``order``; its stream sequence."""
        args = json.dumps({"order": order}).encode()
        completed = EffectRecord(
            phase="completed", tool="refund", idempotency_key=f"refund-{order}", args=args, result=b"{}",
            effect_class="reversible", compensating_tool="charge_back",
        )  # fmt: skip
        return await self.record(f"refund-{order}", completed)

    async def instructed(self, instruction: Envelope) -> None:
        """What an instruction to charge back comes to: a compensation, run unless its key has completed."""
        if self.holding:
            self.queue.append(instruction)
            return
        await self.run(instruction)

    async def run(self, instruction: Envelope) -> None:
        request = json.loads(instruction.payload)
        undone = request["compensates"]
        key = hashlib.sha256(f"{instruction.idempotency_key}:charge_back".encode()).hexdigest()[:32]
        last = await self.stream.log(subjects.effect_record(TENANT, "bank", 0, key)).last()
        if (
            last is None
            or decode_effect(
                open_envelope(last.body, last.headers, keyring=keyring(), received_ns=last.stored_ns).envelope.payload
            ).phase
            != "completed"
        ):
            args = json.dumps({"compensates": undone, "order": request["original"]["order"]}).encode()
            call = EffectRecord(phase="requested", tool="charge_back", idempotency_key=key, args=args,
                                effect_class="reversible")  # fmt: skip
            await self.record(key, call)
            self.ran.append(undone)
            if undone in self.failing:
                failed = EffectRecord(phase="failed", tool="charge_back", idempotency_key=key, args=args,
                                      error="card expired", effect_class="reversible")  # fmt: skip
                await self.record(key, failed)
            else:
                completed = EffectRecord(phase="completed", tool="charge_back", idempotency_key=key, args=args,
                                         result=b"{}", effect_class="reversible")  # fmt: skip
                await self.record(key, completed)
        if undone == self.crash_after:
            self.crash_after = None
            raise Crash(f"the operator's process died after compensating {undone}")


@dataclass
class Operator:
    """The operator's connection, on the in-memory tenant stream; what it sends reaches :class:`Bank`."""

    stream: MemoryStream
    bank: Bank
    memory: MemoryBucket = field(default_factory=lambda: MemoryBucket(subjects.memory_bucket(TENANT)))
    tenant: str = TENANT
    name: str = "ops"
    sent: list[Envelope] = field(default_factory=list)
    refusing: bool = False  # the coordinator refuses memory writes
    meanwhile: Callable[[], Awaitable[None]] | None = None  # what others do while it reads the stream's end

    def partition(self, correlation_id: str) -> int:
        return 0

    async def send(self, envelope: Envelope) -> object:
        sealed = seal(envelope, OPS)
        outbox = self.stream.log(subjects.outbox(TENANT, "ops", 0))
        appended = await outbox.append(sealed.body, dict(sealed.headers), after=None)
        self.sent.append(envelope)
        if envelope.kind == "memory_write":
            await self.mediate_write(envelope)
        else:
            await self.bank.instructed(envelope)
        return appended

    async def mediate_write(self, write: Envelope) -> None:
        """What the coordinator does with a memory write: decide (on the key's revision), record, store."""
        request = json.loads(write.payload)
        key = f"{write.to[0]}.{request['key']}"
        entry = await self.memory.get(key)
        current = 0 if entry is None else entry.revision
        accepted = request["expected_revision"] == current and not self.refusing
        decision = Decision(
            envelope_id=write.id, source_seq=0, sender=write.sender, kind=write.kind,
            correlation_id=write.correlation_id, causation_id=None, verdict="accept" if accepted else "reject",
            reasons=() if accepted else ("stale_revision",), deliver_to=write.to, dropped=(), hop=0,
            declared_taint=(), effective_taint=(), decided_ns=time.time_ns(),
        )  # fmt: skip
        record = new_envelope(
            tenant=TENANT, kind="decision", sender="c", to=(), correlation_id=write.correlation_id,
            causation_id=write.id, content_type="application/msgpack", payload=encode_decision(decision),
        )  # fmt: skip
        sealed = seal(record, COORDINATOR)
        decisions = self.stream.log(subjects.decision(TENANT, 0))
        await decisions.append(sealed.body, dict(sealed.headers), after=None)
        if accepted:
            await self.memory.put(key, stored(request["value"], write.id, decision_id=record.id))

    async def last_seq(self) -> int:
        if self.meanwhile is not None:
            await self.meanwhile()
        last = await self.stream.log(">").last()
        return 0 if last is None else last.seq

    def log(self, subject: str) -> SubjectLog:
        return self.stream.log(subject)

    def bucket(self, name: str) -> MemoryBucket:
        assert name == self.memory.name
        return self.memory


def stored(value: object, envelope_id: str, *, decision_id: str = "d", key: str = "bank.limit") -> bytes:
    """A memory value as the coordinator stores it: signed, for its key."""
    written = MemoryValue(
        key=key, value=json.dumps(value).encode(), envelope_id=envelope_id, writer="ops", effective_taint=(),
        decision_id=decision_id,
    )  # fmt: skip
    return memory_value(COORDINATOR, "c", written, tenant=TENANT, now_ns=time.time_ns())


async def incident() -> tuple[Operator, RollbackPlan]:
    """Three refunds made in an incident, and the plan to charge them back, latest first."""
    bank = Bank(MemoryStream(f"TB_{TENANT}"))
    refunds = [(order, await bank.refund(order)) for order in (1, 2, 3)]
    plan = RollbackPlan(correlation_id="incident")
    for order, seq in reversed(refunds):
        plan.compensate.append(
            Compensation(
                seq=seq, agent="bank", tool="refund", effect_class="reversible", compensating_tool="charge_back",
                idempotency_key=f"refund-{order}", args={"order": order}, result={},
            )
        )  # fmt: skip
    return Operator(bank.stream, bank), plan


def compensated(operator: Operator) -> set[str]:
    """What the ledger says is compensated."""
    return compensated_keys(verified_effects(operator.stream.messages, keyring(), TENANT))


async def test_each_compensation_is_sent_and_awaited_latest_first() -> None:
    operator, plan = await incident()

    done = await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert done == operator.bank.ran == ["refund-3", "refund-2", "refund-1"]
    assert [e.idempotency_key for e in operator.sent] == [
        "compensate:refund-3",
        "compensate:refund-2",
        "compensate:refund-1",
    ]
    assert compensated(operator) == {"refund-1", "refund-2", "refund-3"}


async def test_a_rollback_run_again_with_its_old_plan_after_a_crash_sends_only_what_is_left() -> None:
    operator, plan = await incident()
    operator.bank.crash_after = "refund-2"

    with pytest.raises(Crash):
        await run_rollback(plan, operator, keyring=keyring(), wait_s=1)
    assert operator.bank.ran == ["refund-3", "refund-2"]
    done = await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert done == ["refund-3", "refund-2", "refund-1"]
    assert operator.bank.ran == ["refund-3", "refund-2", "refund-1"]  # none twice
    assert len(operator.sent) == 3  # the completed ones were not even sent again


async def test_a_compensation_whose_instruction_was_lost_on_the_way_is_sent_again_and_runs_once() -> None:
    operator, plan = await incident()
    operator.stream.fail_next(Unavailable("no connection"))  # the first instruction never leaves

    with pytest.raises(Unavailable):
        await run_rollback(plan, operator, keyring=keyring(), wait_s=1)
    done = await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert done == operator.bank.ran == ["refund-3", "refund-2", "refund-1"]


async def test_a_compensation_completing_while_it_is_sent_again_runs_once_and_is_found() -> None:
    operator, plan = await incident()
    operator.bank.holding = True  # the agent is slow: instructions wait in its queue
    with pytest.raises(LedgerError, match="no completed charge_back for refund-3"):
        await run_rollback(plan, operator, keyring=keyring(), wait_s=0.2)
    operator.bank.holding = False
    operator.meanwhile = operator.bank.work_off  # it gets to the first one just as the rollback is run again

    done = await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert done == operator.bank.ran == ["refund-3", "refund-2", "refund-1"]
    assert [e.idempotency_key for e in operator.sent].count("compensate:refund-3") == 2  # sent twice, ran once


async def test_a_rollback_run_again_when_all_is_done_sends_nothing() -> None:
    operator, plan = await incident()
    await run_rollback(plan, operator, keyring=keyring(), wait_s=1)
    ledger = list(operator.stream.messages)

    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == ["refund-3", "refund-2", "refund-1"]

    assert operator.bank.ran == ["refund-3", "refund-2", "refund-1"]
    assert operator.stream.messages == ledger  # not one message more


async def test_a_failed_compensation_stops_the_rollback_and_says_where() -> None:
    operator, plan = await incident()
    operator.bank.failing = {"refund-2"}

    with pytest.raises(LedgerError) as stopped:
        await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    message = str(stopped.value)
    assert "stopped at compensation 2 of 3" in message
    assert "compensating refund (refund-2) failed: card expired" in message
    assert "compensated before it: refund-3" in message
    assert operator.bank.ran == ["refund-3", "refund-2"]  # refund-1 was not touched
    assert compensated(operator) == {"refund-3"}


async def test_a_compensation_that_failed_is_sent_again_by_the_next_run() -> None:
    operator, plan = await incident()
    operator.bank.failing = {"refund-2"}
    with pytest.raises(LedgerError):
        await run_rollback(plan, operator, keyring=keyring(), wait_s=1)
    operator.bank.failing = set()  # the card was renewed

    done = await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert done == ["refund-3", "refund-2", "refund-1"]  # the earlier failure is not this run's
    assert operator.bank.ran == ["refund-3", "refund-2", "refund-2", "refund-1"]


async def memory_incident(*, changed_since: bool = False) -> tuple[Operator, RollbackPlan]:
    """The incident raised the bank's limit (write ``w1``); the plan puts the limit back."""
    operator, _ = await incident()
    await operator.memory.put("bank.limit", stored({"limit": 100}, "w0"))
    await operator.memory.put("bank.limit", stored({"limit": 10**6}, "w1"))
    if changed_since:
        await operator.memory.put("bank.limit", stored({"limit": 500}, "w2"))
    plan = RollbackPlan(correlation_id="incident", memory=[MemoryRevert("bank", "limit", ("w1",))])
    return operator, plan


async def limit(operator: Operator) -> object:
    entry = await operator.memory.get("bank.limit")
    assert entry is not None
    return json.loads(decode_memory_value(entry.value).value)


async def test_a_memory_key_the_incident_wrote_is_put_back_once() -> None:
    operator, plan = await memory_incident()

    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == ["memory:bank.limit"]
    assert await limit(operator) == {"limit": 100}
    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == []  # reverted already

    assert len(operator.sent) == 1


async def test_a_memory_key_changed_since_the_incident_is_left_for_a_person() -> None:
    operator, plan = await memory_incident(changed_since=True)

    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == []

    assert await limit(operator) == {"limit": 500} and operator.sent == []


async def test_a_memory_revert_the_coordinator_refuses_stops_the_rollback() -> None:
    operator, plan = await memory_incident()
    operator.refusing = True

    with pytest.raises(LedgerError, match=r"reverting bank\.limit was refused: stale_revision"):
        await run_rollback(plan, operator, keyring=keyring(), wait_s=1)

    assert await limit(operator) == {"limit": 10**6}


def forged(value: object, envelope_id: str, signer: Identity, name: str) -> bytes:
    """A memory value as ``signer`` (not a coordinator) would write it, if it could write the bucket."""
    written = MemoryValue(
        key="bank.limit", value=json.dumps(value).encode(), envelope_id=envelope_id, writer="ops",
        effective_taint=(), decision_id="d",
    )  # fmt: skip
    return memory_value(signer, name, written, tenant=TENANT, now_ns=time.time_ns())


async def test_a_value_no_coordinator_signed_is_never_what_a_rollback_restores() -> None:
    operator, _ = await incident()
    await operator.memory.put("bank.limit", stored({"limit": 100}, "w0"))
    await operator.memory.put("bank.limit", forged({"limit": 10**9}, "w0b", BANK, "bank"))  # an agent's own
    await operator.memory.put("bank.limit", b"")  # what the server stores for a request's reply subject
    await operator.memory.put("bank.limit", stored({"limit": 10**6}, "w1"))
    plan = RollbackPlan(correlation_id="incident", memory=[MemoryRevert("bank", "limit", ("w1",))])

    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == ["memory:bank.limit"]

    assert await limit(operator) == {"limit": 100}  # the last value a coordinator signed before the incident


async def test_a_forged_value_naming_the_incidents_write_does_not_make_a_rollback_overwrite_a_later_one() -> None:
    operator, plan = await memory_incident(changed_since=True)  # w2 came after the incident: a person decides
    await operator.memory.put("bank.limit", forged({"limit": 10**6}, "w1", OPS, "ops"))  # "still the incident's"

    assert await run_rollback(plan, operator, keyring=keyring(), wait_s=1) == []

    assert operator.sent == []
