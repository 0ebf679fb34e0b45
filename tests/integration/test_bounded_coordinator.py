"""A coordinator that keeps two correlations in memory: one that leaves memory and returns keeps its budget,
its taint and its holds, across a restart too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from tests.conftest import Tenant
from tests.integration.test_decision_catch_up import write_accepted
from trustbus.agents import _coordinator, parse_policy
from trustbus.agents._approvals import list_held
from trustbus.agents._coordinator import Coordinator
from trustbus.agents._correlation_store import correlation_key
from trustbus.agents._decision_log import DecisionLog
from trustbus.agents._policy import Policy
from trustbus.bus import (
    Appended,
    Approval,
    Bus,
    Decision,
    Envelope,
    StoredMessage,
    SubjectLog,
    decode_envelope,
    decode_quarantine_record,
    new_envelope,
    new_id,
    subjects,
)

POLICY = parse_policy(
    {
        "limits": {"budget_per_correlation": 4, "correlations_in_memory": 2},
        "taint": {"on_tainted_instruction": "hold"},
        "rules": [
            {"from": "alice", "to": ["bob"], "kinds": ["instruction"], "verbs": ["go"]},
            {"from": "*", "to": ["*"], "kinds": ["event"]},
        ],
    }
)
WAIT_S = 15.0


@contextlib.asynccontextmanager
async def running(bus: Bus, policy: Policy = POLICY) -> AsyncIterator[Coordinator]:
    """A coordinator of partition 0, mediating until the block ends."""
    coordinator = Coordinator(bus, policy, 0)
    await coordinator.start()
    stop = asyncio.Event()
    task = asyncio.create_task(coordinator.run(stop))
    try:
        yield coordinator
    finally:
        stop.set()
        await task


async def decided(tenant: Tenant, bus: Bus, envelope_id: str, *, released: bool = False) -> Decision:
    """The last decision about ``envelope_id`` on partition 0's log, once there is one (``released``: one that is
    not ``hold``), read by a fresh reader of the whole log."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        log = DecisionLog(bus.log(subjects.decision(tenant.name, 0), in_batches=True), bus.keyring.keyring, POLICY)
        await log.catch_up()
        found = log.state.find(envelope_id)
        if found is not None and not (released and found.verdict == "hold"):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no decision about {envelope_id}")


def correlation_in_partition_0(bus: Bus) -> str:
    while True:
        candidate = new_id()
        if bus.partition(candidate) == 0:
            return candidate


async def send(tenant: Tenant, bus: Bus, envelope: Envelope) -> Decision:
    await bus.publish(bus.outbox(envelope), bus.seal(envelope))
    return await decided(tenant, bus, envelope.id)


async def crowd_out(tenant: Tenant, bob: Bus, coordinator: Coordinator, correlation: str) -> None:
    """Decide envelopes in three other correlations, until ``correlation`` is out of memory."""
    for _ in range(3):
        other = correlation_in_partition_0(bob)
        await send(tenant, bob, event_of(bob, "alice", other))
    assert correlation not in coordinator.state.correlations


def event_of(bus: Bus, to: str, correlation: str, **kw: object) -> Envelope:
    """An envelope (an event unless ``kind`` says otherwise) from ``bus``'s agent to ``to`` in ``correlation``."""
    fields: dict[str, object] = {"kind": "event", **kw}
    return new_envelope(tenant=bus.tenant, sender=bus.name, to=(to,), correlation_id=correlation, **fields)  # type: ignore[arg-type]


async def test_a_correlation_out_of_memory_keeps_its_budget_and_taint_when_it_returns(tenant: Tenant) -> None:
    await tenant.add("c1", role="coordinator")
    fetcher, alice, bob = await tenant.bus("fetcher"), await tenant.bus("alice"), await tenant.bus("bob")
    coordinator_bus = await tenant.bus("c1")
    x = correlation_in_partition_0(alice)
    async with running(coordinator_bus) as coordinator:
        page = await send(tenant, fetcher, event_of(fetcher, "alice", x, taint=["web"]))
        assert page.verdict == "accept"  # 1 of 4 spent; alice has seen web content in x
        await crowd_out(tenant, bob, coordinator, x)
        stored = await coordinator_bus.bucket(subjects.state_bucket(tenant.name)).get(correlation_key(0, x))
        assert stored is not None and stored.value

        told = await send(tenant, alice, event_of(alice, "bob", x))
        assert told.verdict == "accept" and told.effective_taint == ("web",)  # 2 of 4: the taint came back
        await crowd_out(tenant, bob, coordinator, x)
        assert (await send(tenant, alice, event_of(alice, "bob", x))).verdict == "accept"  # 3 of 4
        await crowd_out(tenant, bob, coordinator, x)
        assert coordinator.log.store is not None and coordinator.log.store.loads >= 3

    async with running(coordinator_bus) as again:  # a restart: rebuilt from the log and the stored correlations
        assert len(again.state.correlations) <= 2
        last = await send(tenant, alice, event_of(alice, "bob", x))
        assert last.verdict == "accept" and last.effective_taint == ("web",)  # 4 of 4
        await crowd_out(tenant, bob, again, x)
        over = await send(tenant, alice, event_of(alice, "bob", x))
        assert over.verdict == "reject" and over.reasons == ("budget",)


async def test_a_hold_older_than_the_cache_is_listed_and_released(tenant: Tenant) -> None:
    await tenant.add("c1", role="coordinator")
    await tenant.add("ops", role="operator")
    fetcher, alice, bob, ops = [await tenant.bus(n) for n in ("fetcher", "alice", "bob", "ops")]
    coordinator_bus = await tenant.bus("c1")
    x = correlation_in_partition_0(alice)
    async with running(coordinator_bus) as coordinator:
        await send(tenant, fetcher, event_of(fetcher, "alice", x, taint=["web"]))
        instruction = new_envelope(
            tenant=tenant.name,
            kind="instruction",
            sender="alice",
            to=("bob",),
            correlation_id=x,
            payload=b'{"verb":"go"}',
        )
        await alice.publish(alice.outbox(instruction), alice.seal(instruction))
        held = await decided(tenant, alice, instruction.id)
        assert held.verdict == "hold" and held.reasons == ("tainted_instruction",)
        await crowd_out(tenant, bob, coordinator, x)

        assert [d.envelope_id for d in await list_held([tenant.url], tenant.name)] == [instruction.id]
        assert [d.envelope_id for d in coordinator.state.held()] == [instruction.id]

        approval = new_envelope(
            tenant=tenant.name,
            kind="approval",
            sender="ops",
            to=(),
            correlation_id=x,
            causation_id=instruction.id,
            payload=Approval(envelope_id=instruction.id, verdict="approve").encode(),
        )
        await ops.publish(subjects.approval(tenant.name, 0), ops.seal(approval))
        released = await decided(tenant, alice, instruction.id, released=True)
        assert released.verdict == "accept" and released.approval_id == approval.id
        assert coordinator.state.held() == []
        assert await list_held([tenant.url], tenant.name) == []


BEFORE, TAIL = 3000, 40


class Counting:
    """A decision log that counts the records read from it."""

    def __init__(self, inner: SubjectLog) -> None:
        self.inner = inner
        self.stream, self.subject = inner.stream, inner.subject
        self.read_records = 0

    async def append(self, body: bytes, headers: dict[str, str], *, after: int | None) -> Appended:
        return await self.inner.append(body, headers, after=after)

    async def append_batch(self, records: Sequence[tuple[bytes, dict[str, str]]], *, after: int, batch_id: str) -> int:
        return await self.inner.append_batch(records, after=after, batch_id=batch_id)

    async def get(self, seq: int) -> StoredMessage:
        return await self.inner.get(seq)

    async def last(self) -> StoredMessage | None:
        return await self.inner.last()

    async def read(self, *, after: int = 0) -> AsyncIterator[StoredMessage]:
        async for record in self.inner.read(after=after):
            self.read_records += 1
            yield record


async def started(bus: Bus) -> tuple[Coordinator, Counting]:
    """A coordinator of partition 0 that has restored its state, and what it read of its log."""
    coordinator = Coordinator(bus, POLICY, 0)
    counting = Counting(coordinator.log.log)
    coordinator.log.log = counting
    await coordinator.start()
    return coordinator, counting


async def test_a_restart_reads_the_snapshot_and_only_the_decisions_after_it(tenant: Tenant) -> None:
    await tenant.add("c1", role="coordinator")
    bus = await tenant.bus("c1")
    decisions = bus.log(subjects.decision(tenant.name, 0))
    await write_accepted(bus, decisions, BEFORE)

    first, counting = await started(bus)  # no snapshot yet: the whole log, and says so
    assert counting.read_records == BEFORE and first.state.last_seq == BEFORE
    assert first.log.store is not None and first.log.store.writes >= BEFORE - 2  # all but two stored on the way
    assert await first.log.snapshot()
    # Killed: nothing more is written by it. Meanwhile another coordinator decided more.
    tail = await write_accepted(bus, decisions, TAIL)
    last = await decisions.last()
    assert last is not None

    again, counting = await started(bus)
    assert counting.read_records == TAIL  # the snapshot, then only the tail
    assert again.state.last_seq == last.seq
    assert again.log.store is not None and again.log.store.loads == TAIL  # one get per correlation of the tail
    assert sorted(again.state.correlations) == sorted(tail[-2:])
    await again.log.resident([tail[0]])
    assert again.state.correlation(tail[0]).spent == 1


async def test_a_snapshot_comes_every_snapshot_every_decisions_whatever_else_the_stream_holds(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cadence counts decisions (what a restart catches up on), not the stream sequences between them."""
    monkeypatch.setattr(_coordinator, "SNAPSHOT_EVERY", 3)
    await tenant.add("c1", role="coordinator")
    c1, alice = await tenant.bus("c1"), await tenant.bus("alice")
    decisions = c1.log(subjects.decision(tenant.name, 0))
    coordinator = Coordinator(c1, POLICY, 0)
    await coordinator.start()
    store = coordinator.log.store
    assert store is not None
    for _ in range(5):  # other messages of the stream, between the decisions
        envelope = event_of(alice, "bob", new_id())
        await alice.publish(alice.outbox(envelope), alice.seal(envelope))
    await write_accepted(c1, decisions, 2)
    await coordinator.log.catch_up()
    await coordinator._trim()  # between batches
    assert store.snapshot_covered == 0  # 2 decisions, 7 stream sequences
    await write_accepted(c1, decisions, 1)
    await coordinator.log.catch_up()
    await coordinator._trim()
    assert store.snapshot_covered == coordinator.state.last_seq > 7


async def test_one_sender_cannot_grow_a_correlation_past_its_limit_nor_stall_the_partition(tenant: Tenant) -> None:
    """An attack: alice keeps sending in one correlation; past ``decisions_per_correlation`` each envelope is
    quarantined as ``correlation_full`` (nothing decided, the state stays storable), and others go on."""
    policy = parse_policy(
        {"limits": {"decisions_per_correlation": 3, "correlations_in_memory": 2}, "rules": POLICY.rules}
    )
    await tenant.add("c1", role="coordinator")
    alice, bob, c1 = await tenant.bus("alice"), await tenant.bus("bob"), await tenant.bus("c1")
    x = correlation_in_partition_0(alice)
    async with running(c1, policy) as coordinator:
        for _ in range(3):
            assert (await send(tenant, alice, event_of(alice, "bob", x))).verdict == "accept"
        flood = [event_of(alice, "bob", x) for _ in range(3)]
        for envelope in flood:
            await alice.publish(alice.outbox(envelope), alice.seal(envelope))
        other = await send(tenant, bob, event_of(bob, "alice", correlation_in_partition_0(bob)))
        assert other.verdict == "accept"  # decided after the flood: the partition goes on
        assert len(await full_refusals(c1, 3)) == 3
        await crowd_out(tenant, bob, coordinator, x)  # x, at its limit, is stored and leaves memory
        await coordinator.log.resident([x])
        assert len(coordinator.state.correlation(x).decided) == 3
        assert all(coordinator.state.decision(x, e.id) is None for e in flood)


async def full_refusals(bus: Bus, n: int) -> list[str]:
    """The details of the ``correlation_full`` quarantine records, once there are ``n`` (or ``WAIT_S`` passed)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        records = [
            decode_quarantine_record(decode_envelope(m.body).payload)
            async for m in bus.log(subjects.quarantine(bus.tenant)).read()
        ]
        found = [r.detail for r in records if r.reason == "correlation_full"]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)
