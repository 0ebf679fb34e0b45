"""A coordinator that keeps few correlations in memory decides exactly as one that keeps them all (bus.testing).

Random decision sequences (many correlations, causes from any of them, replies, instructions held
under taint, approvals and denials, tool results, checkpoints, a rate limit that defers, idle spells
after which every correlation has expired) are decided
by two coordinators, each on its own log: one whose state holds every correlation, and one whose
:class:`~agents._correlation_store.CorrelationStore` keeps at most one or two in memory between
envelopes (so almost every envelope loads its correlation back), which sometimes stores a snapshot
(carrying the correlations changed since they were stored), and which is sometimes restarted
(from its last snapshot, the log after it and the stored correlations). Every decision must be the same.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit import test_decision_race as race
from tests.unit.test_decision_race import (
    KEYS,
    TENANT,
    CoordinatorKey,
    Racer,
    Watched,
    fold,
    keyring,
    outboxed,
    records,
    times_decided,
)
from trustbus.agents import parse_policy
from trustbus.agents._correlation_store import (
    CarriedCorrelation,
    CorrelationStore,
    StoredSnapshot,
    correlation_key,
    snapshot_key,
)
from trustbus.agents._decision import (
    CoordinatorState,
    Correlation,
    Deferral,
    decide,
    decide_approval,
    record_effect,
)
from trustbus.agents._decision_log import DecisionLog
from trustbus.agents._signed_value import state_value
from trustbus.bus import Approval, Decision, Envelope, new_envelope, subjects
from trustbus.bus.testing import MemoryBucket, MemoryStream

T0 = time.time_ns()
STEP_NS = 300_000_000  # between two envelopes: a third of a token of the rate below
AGENTS = ("triage", "billing", "research")
POLICY = parse_policy(
    {
        "limits": {
            "hop_limit": 4,
            "budget_per_correlation": 5,
            "rate": {"per_second": 1, "burst": 3, "over_limit": "delay"},
        },
        "taint": {"on_tainted_instruction": "hold"},
        "rules": [
            {"from": "triage", "to": ["billing", "research"], "kinds": ["instruction"], "verbs": ["refund"]},
            {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
        ],
    }
)
KINDS = (
    "event",
    "event",
    "reply",
    "instruction",
    "effect",
    "checkpoint",
    "approve",
    "deny",
    "snapshot",
    "snapshot",
    "restart",
    "idle",
)
IDLE_NS = 8 * 86_400 * 1_000_000_000  # an "idle" step: past limits.correlation_idle_s (7 days), all expire

Step = tuple[str, int, int, int, int, bool]


@dataclass
class Side:
    """One coordinator: its log, its state (and, when bounded, its store)."""

    log: DecisionLog
    key: CoordinatorKey

    async def record(self, cause: Envelope, make: object) -> Decision | Deferral | None:
        return await self.log.record(cause, make, by=self.key)  # type: ignore[arg-type]


def side(stream: MemoryStream, bucket: MemoryBucket | None, capacity: int) -> Side:
    ring = keyring()
    store = None
    if bucket is not None:
        store = CorrelationStore(
            bucket,
            identity=KEYS["c2"],
            name="c2",
            tenant=TENANT,
            keyring=ring,
            partition=0,
            capacity=capacity,
            clock=time.time_ns,
            changed_at_most=1,  # the changed correlations are stored between envelopes too (but the last)
        )
    log = DecisionLog(stream.log(subjects.decision(TENANT, 0)), ring, POLICY, store=store)
    return Side(log, CoordinatorKey(TENANT, "c2" if store else "c1", KEYS["c2" if store else "c1"]))


def envelope_for(step: Step, sent: list[Envelope], correlations: list[str]) -> Envelope | None:
    """The envelope a step sends (None: an approval or a restart)."""
    kind, sender, to, correlation, cause, tainted = step
    if kind in ("approve", "deny", "snapshot", "restart", "idle"):
        return None
    cause_of = sent[cause % len(sent)] if sent and cause % 3 else None
    if kind == "reply" and cause_of is not None:
        correlation_id = cause_of.correlation_id if cause % 5 else correlations[correlation]
    else:
        correlation_id = correlations[correlation]
    sender_name = AGENTS[sender]
    recipients = (sender_name,) if kind == "checkpoint" else tuple(dict.fromkeys((AGENTS[to], AGENTS[(to + 1) % 3])))
    return new_envelope(
        tenant=TENANT,
        kind="effect" if kind == "effect" else kind,  # type: ignore[arg-type]
        sender=sender_name,
        to=() if kind == "effect" else recipients[: 1 + cause % 2],
        correlation_id=correlation_id,
        causation_id=None if cause_of is None else cause_of.id,
        hop=cause % 3,
        taint=["web"] if tainted else [],
        payload=b'{"verb":"refund"}' if kind == "instruction" else b"{}",
        now_ns=T0,
    )


def approval_of(target: Decision, verdict: str) -> Envelope:
    """An operator's approval (or denial) of the held ``target``."""
    return new_envelope(
        tenant=TENANT,
        kind="approval",
        sender="ops",
        to=(),
        correlation_id=target.correlation_id,
        causation_id=target.envelope_id,
        payload=Approval(envelope_id=target.envelope_id, verdict=verdict).encode(),  # type: ignore[arg-type]
        now_ns=T0,
    )


async def answer(s: Side, approval: Envelope, target: str, *, approve: bool, at: int) -> Decision | Deferral | None:
    """What the coordinator does with an operator's answer about the held envelope ``target``."""

    def release() -> Decision | None:
        held_now = s.log.state.decision(approval.correlation_id, target)
        if held_now is None or held_now.verdict != "hold":
            return None
        return decide_approval(held_now, approval, approve=approve, received_ns=at)

    return await s.record(approval, release)


async def mediate(s: Side, envelope: Envelope, *, at: int, seq: int, tool_taint: bool) -> Decision | Deferral | None:
    """What the coordinator does with an envelope from an outbox (or a completed tool call's record)."""

    def make() -> Decision | Deferral | None:
        if s.log.state.decided_about(envelope):
            return None
        if envelope.kind == "effect":
            return record_effect(envelope, ("tool",) if tool_taint else (), received_ns=at, source_seq=seq)
        return decide(POLICY, envelope, s.log.state, received_ns=at, source_seq=seq)

    return await s.record(envelope, make)


async def play(steps: list[Step], capacity: int) -> None:
    correlations = [f"corr-{i}" for i in range(8)]
    full = side(MemoryStream(), None, capacity)
    stream, bucket = MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT))
    bounded = side(stream, bucket, capacity)
    sent: list[Envelope] = []
    idle = 0
    for index, step in enumerate(steps):
        at = T0 + index * STEP_NS + idle
        kind = step[0]
        if kind == "idle":
            idle += IDLE_NS
            continue
        if kind == "snapshot":
            await bounded.log.snapshot()
            continue
        if kind == "restart":  # from the last snapshot, if any, and the log after it
            bounded = side(stream, bucket, capacity)
            await bounded.log.restore()
            continue
        if kind in ("approve", "deny"):
            held = full.log.state.held()
            if not held:
                continue
            target = held[step[3] % len(held)]
            approval = approval_of(target, kind)
            results = [
                await answer(s, approval, target.envelope_id, approve=kind == "approve", at=at) for s in (full, bounded)
            ]
        else:
            envelope = envelope_for(step, sent, correlations)
            assert envelope is not None
            sent.append(envelope)
            results = [await mediate(s, envelope, at=at, seq=index + 1, tool_taint=step[5]) for s in (full, bounded)]
        assert results[0] == results[1], (index, step, results)
        await bounded.log.trim()
        assert len(bounded.log.state.correlations) <= capacity

    await compare(full.log.state, bounded)
    if len(full.log.state.correlations) > capacity:
        assert bucket.memory.messages, "nothing was stored though the cache was exceeded"
    assert all(
        m.subject.startswith(bucket.subject("c0.")) or m.subject == bucket.subject(snapshot_key(0))
        for m in bucket.memory.messages
    )


async def compare(full: CoordinatorState, bounded: Side) -> None:
    """Every correlation, loaded back, and what the partition keeps are the same in both."""
    assert (full.buckets, full.holds, full.suspensions) == (
        bounded.log.state.buckets,
        bounded.log.state.holds,
        bounded.log.state.suspensions,
    )
    for correlation_id, mine in full.correlations.items():
        await bounded.log.resident([correlation_id])
        theirs = bounded.log.state.correlation(correlation_id)
        assert (mine.decided, mine.spent, mine.hops, mine.seen_taint) == (
            theirs.decided,
            theirs.spent,
            theirs.hops,
            theirs.seen_taint,
        ), correlation_id


steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 2),
        st.integers(0, 2),
        st.integers(0, 7),
        st.integers(0, 1000),
        st.booleans(),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, capacity=st.integers(1, 2))
def test_bounded_state_decides_exactly_as_the_unbounded_one(steps: list[Step], capacity: int) -> None:
    asyncio.run(play(steps, capacity))


async def test_a_foreign_stored_correlation_is_rebuilt_from_the_log_not_believed() -> None:
    stream, bucket = MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT))
    full, bounded = side(MemoryStream(), None, 1), side(stream, bucket, 1)
    spent = [
        envelope_for(("event", 0, 1, 0, 0, True), [], ["corr-a"]),
        envelope_for(("event", 1, 0, 0, 0, False), [], ["corr-a"]),
        envelope_for(("event", 0, 1, 0, 0, False), [], ["corr-b"]),
    ]
    for index, envelope in enumerate(spent):
        assert envelope is not None
        for s in (full, bounded):
            await mediate(s, envelope, at=T0 + index * STEP_NS, seq=index + 1, tool_taint=False)
        await bounded.log.trim()
    assert "corr-a" not in bounded.log.state.correlations
    assert bounded.log.store is not None
    bounded.log.store.changed_at_most = 0
    await bounded.log.trim()  # corr-b stored too
    key, other = correlation_key(0, "corr-a"), await bucket.get(correlation_key(0, "corr-b"))
    assert other is not None
    for forged in (b"not a signed value", other.value):
        await bucket.put(key, forged)  # garbage, then corr-b's genuine value copied to corr-a's key
        bounded.log.state.correlations.pop("corr-a", None)
        await bounded.log.resident(["corr-a"])
        rebuilt, mine = bounded.log.state.correlation("corr-a"), full.log.state.correlation("corr-a")
        assert (rebuilt.decided, rebuilt.spent, rebuilt.seen_taint) == (mine.decided, mine.spent, mine.seen_taint)
        assert rebuilt.spent == 2 and rebuilt.dirty  # stored again, over the foreign value, at its next trim
    # In one batched load beside a genuine and a never-stored correlation, the foreign one is rebuilt alone.
    for correlation_id in ("corr-a", "corr-b"):
        bounded.log.state.correlations.pop(correlation_id, None)
    await bounded.log.resident(["corr-b", "corr-a", "corr-new"])
    state = bounded.log.state
    assert state.correlation("corr-a").spent == 2 and state.correlation("corr-a").dirty  # rebuilt from the log
    assert state.correlation("corr-b").decided == full.log.state.correlation("corr-b").decided
    assert not state.correlation("corr-b").dirty and state.correlation("corr-b").revision == other.revision
    assert state.correlation("corr-new").decided == {} and state.correlation("corr-new").revision == 0


async def test_two_coordinators_keeping_one_correlation_each_spend_every_budget_once() -> None:
    """Racing on one log and one state bucket, each storing and loading back at every envelope."""
    stream, bucket = MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT))

    def bounded(name: str) -> Racer:
        watched = Watched(stream.log(race.SUBJECT))
        store = CorrelationStore(
            bucket, identity=KEYS[name], name=name, tenant=TENANT, keyring=keyring(), partition=0, capacity=1,
            clock=time.time_ns,
        )  # fmt: skip
        return Racer(name, DecisionLog(watched, keyring(), race.POLICY, store=store), watched)

    c1, c2 = bounded("c1"), bounded("c2")
    correlations = [f"race-{i}" for i in range(4)]

    async def send(racer: Racer, first_seq: int) -> None:
        for _ in range(race.BUDGET + 1):
            for correlation in correlations:
                await racer.mediate(outboxed(1, correlation_id=correlation, first_seq=first_seq))
                await racer.log.trim()

    await asyncio.gather(send(c1, 1), send(c2, 1000))

    assert c1.watched.conflicts + c2.watched.conflicts >= 1
    assert all(r.log.store is not None and r.log.store.loads > 10 for r in (c1, c2))
    assert set(times_decided(stream).values()) == {1}
    accepted = Counter(d.correlation_id for _, d in records(stream) if d.verdict == "accept")
    assert accepted == {correlation: race.BUDGET for correlation in correlations}
    folded = await fold(stream)
    for racer in (c1, c2):
        await racer.log.catch_up()
        for correlation in correlations:
            await racer.log.resident([correlation])
            mine, theirs = racer.log.state.correlation(correlation), folded.correlation(correlation)
            assert (mine.decided, mine.spent) == (theirs.decided, race.BUDGET)
        assert racer.log.state.buckets == folded.buckets


async def test_a_correlation_too_large_to_store_stays_in_memory_without_holding_the_others_back() -> None:
    bucket = MemoryBucket(subjects.state_bucket(TENANT))
    s = side(MemoryStream(), bucket, 1)
    store = s.log.store
    assert store is not None
    decision = fold_one("huge", "x" * 60_000)
    huge = Correlation(decided={f"e{i}": decision for i in range(20)}, dirty=True)  # over a stored value's size
    state = s.log.state
    state.correlations = {"huge": huge, "small": Correlation(decided={"e": fold_one("small", "")}, dirty=True)}
    state.correlations["recent"] = Correlation(dirty=True)
    state.last_seq = 3
    await store.trim(state)
    assert list(state.correlations) == ["recent", "huge"]  # small stored and dropped; huge kept, now last used
    assert await bucket.get(correlation_key(0, "small")) is not None
    assert await bucket.get(correlation_key(0, "huge")) is None
    assert not await store.snapshot(state)  # so no snapshot claims to cover it


async def test_changed_correlations_beyond_the_bound_are_stored_between_batches_the_longest_changed_first() -> None:
    """So a snapshot, which carries (or stores) every changed correlation, stays small and quick."""
    bucket = MemoryBucket(subjects.state_bucket(TENANT))
    s = side(MemoryStream(), bucket, 100)
    store = s.log.store
    assert store is not None
    store.changed_at_most = 2
    state = s.log.state
    for index, correlation_id in enumerate(("a", "b", "c", "d", "e")):
        state.apply(fold_one(correlation_id, ""), POLICY, seq=index + 1)
    state.apply(fold_one("a", ""), POLICY, seq=6)  # changed again: still the longest changed
    await s.log.trim()
    stored = {cid for cid in "abcde" if await bucket.get(correlation_key(0, cid)) is not None}
    assert stored == {"a", "b", "c"}
    assert [cid for cid, c in state.correlations.items() if c.dirty] == ["d", "e"]
    assert list(state.changed) == ["d", "e"] and len(state.correlations) == 5  # stored, still in memory


async def test_a_snapshot_carries_the_changed_correlations_in_one_write_and_a_restore_gets_them_back() -> None:
    """The coordinator mediates nothing while a snapshot is stored: one signed write, not one per changed
    correlation; the restored state is the one snapshotted, and the carried correlations are stored later."""
    stream, bucket = MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT))
    s = side(stream, bucket, 100)
    store = s.log.store
    assert store is not None
    state = s.log.state
    for index, correlation_id in enumerate(("a", "b", "c")):
        state.apply(fold_one(correlation_id, ""), POLICY, seq=index + 1)
    store.changed_at_most = 2
    await s.log.trim()  # a stored under its own key; b and c changed since
    writes = store.writes
    assert await store.snapshot(state)
    assert store.writes == writes and await bucket.get(correlation_key(0, "b")) is None  # carried, not stored
    assert [cid for cid, c in state.correlations.items() if c.dirty] == ["b", "c"]  # still to store

    again = side(stream, bucket, 100)
    assert again.log.store is not None and await again.log.store.restore(again.log.state)
    restored = again.log.state
    assert again.log.store.carried == 2 and list(restored.correlations) == ["b", "c"]
    assert list(restored.changed) == ["b", "c"] and all(c.dirty for c in restored.correlations.values())
    for correlation_id in "bc":
        mine, theirs = restored.correlations[correlation_id], state.correlations[correlation_id]
        assert (mine.decided, mine.spent, mine.hops, mine.seen_taint, mine.records, mine.last_ns) == (
            theirs.decided,
            theirs.spent,
            theirs.hops,
            theirs.seen_taint,
            theirs.records,
            theirs.last_ns,
        )
    await again.log.resident(["a"])
    assert restored.correlation("a").decided == state.correlation("a").decided  # loaded from its own key
    again.log.store.changed_at_most = 0
    await again.log.trim()
    assert await bucket.get(correlation_key(0, "c")) is not None  # stored under its own key at last


async def test_a_snapshot_carrying_another_partitions_correlation_is_foreign_and_the_whole_log_is_read() -> None:
    """A coordinator's snapshot that carries a correlation under a key not its own is not believed."""
    stream, bucket = MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT))
    s = side(stream, bucket, 100)
    assert s.log.store is not None
    s.log.state.apply(fold_one("a", ""), POLICY, seq=1)
    stored = msgspec.structs.replace(
        s.log.store._stored(s.log.state, "a", s.log.state.correlations["a"]), key=correlation_key(1, "a")
    )
    forged = StoredSnapshot(
        key=snapshot_key(0),
        partition=0,
        covered=1,
        buckets={},
        holds=[],
        suspensions=[],
        carried=[msgspec.Raw(msgspec.msgpack.encode(CarriedCorrelation(revision=0, state=stored)))],
    )
    value = state_value(KEYS["c2"], "c2", msgspec.msgpack.encode(forged), tenant=TENANT, now_ns=time.time_ns())
    await bucket.put(snapshot_key(0), value)
    again = side(stream, bucket, 100)
    assert again.log.store is not None and not await again.log.store.restore(again.log.state)
    assert not again.log.state.correlations


async def test_a_snapshot_stores_what_it_has_no_room_to_carry() -> None:
    bucket = MemoryBucket(subjects.state_bucket(TENANT))
    s = side(MemoryStream(), bucket, 100)
    store = s.log.store
    assert store is not None
    state = s.log.state
    big = fold_one("big", "x" * 400_000)  # fits a value of its own, not beside the other in the room carried
    state.apply(big, POLICY, seq=1)
    state.apply(msgspec.structs.replace(big, envelope_id="e2"), POLICY, seq=2)
    state.apply(fold_one("small", ""), POLICY, seq=3)
    assert await store.snapshot(state)
    assert await bucket.get(correlation_key(0, "big")) is not None and not state.correlations["big"].dirty
    assert await bucket.get(correlation_key(0, "small")) is None and state.correlations["small"].dirty


def fold_one(correlation_id: str, padding: str) -> Decision:
    """A decision in ``correlation_id`` whose taint label is ``padding`` long."""
    return Decision(
        envelope_id="e",
        source_seq=1,
        sender="triage",
        kind="event",
        correlation_id=correlation_id,
        causation_id=None,
        verdict="accept",
        reasons=(),
        deliver_to=("billing",),
        dropped=(),
        hop=0,
        declared_taint=(padding,) if padding else (),
        effective_taint=(),
        decided_ns=T0,
    )


async def test_an_expired_correlation_returns_empty_with_its_whole_budget_and_no_taint() -> None:
    """Idle for ``limits.correlation_idle_s`` (7 days), a correlation starts again as a new one would,
    in memory and loaded back alike; a day idle it still has its spent budget and its taint."""
    full, bounded = side(MemoryStream(), None, 1), side(MemoryStream(), MemoryBucket(subjects.state_bucket(TENANT)), 1)
    day = 86_400 * 1_000_000_000
    seq = 0

    async def both(step: Step, at: int) -> Decision | Deferral | None:
        nonlocal seq
        seq += 1
        envelope = envelope_for(step, [], ["corr-a", "corr-b"])
        assert envelope is not None
        results = [await mediate(s, envelope, at=at, seq=seq, tool_taint=False) for s in (full, bounded)]
        await bounded.log.trim()  # capacity 1: corr-a leaves memory whenever corr-b is used
        assert results[0] == results[1]
        return results[0]

    for i in range(POLICY.limits.budget_per_correlation):  # triage -> billing, web-tainted: corr-a's budget spent
        await both(("event", 0, 1, 0, 0, True), T0 + i * 3 * STEP_NS)
    await both(("event", 0, 1, 1, 0, False), T0 + day)  # corr-b: corr-a stored and out of memory
    refused = await both(("event", 1, 0, 0, 0, False), T0 + day + STEP_NS)  # billing, a day later
    assert isinstance(refused, Decision) and refused.reasons == ("budget",)
    await both(("event", 0, 1, 1, 0, False), T0 + 9 * day)
    back = await both(("event", 1, 0, 0, 0, False), T0 + 9 * day + STEP_NS)  # 8 days after corr-a's last
    assert isinstance(back, Decision) and back.verdict == "accept" and back.effective_taint == ()
    await bounded.log.resident(["corr-a"])
    assert bounded.log.state.correlation("corr-a").spent == full.log.state.correlation("corr-a").spent == 1


def test_a_hold_waiting_in_an_expired_correlation_can_still_be_answered() -> None:
    """A correlation started again after its idle time keeps the decisions still held for an operator."""
    state, day = CoordinatorState(), 86_400 * 1_000_000_000
    held = msgspec.structs.replace(fold_one("corr-a", ""), envelope_id="held", verdict="hold", deliver_to=())
    state.apply(held, POLICY, seq=1, record_id="r-held")
    state.apply(fold_one("corr-a", ""), POLICY, seq=2, record_id="r-e")  # "e", decided at T0 too
    later = msgspec.structs.replace(fold_one("corr-a", ""), envelope_id="late", decided_ns=T0 + 8 * day)
    state.apply(later, POLICY, seq=3, record_id="r-late")
    assert set(state.correlation("corr-a").decided) == {"held", "late"}  # "e" forgotten, the hold kept
    assert state.correlation("corr-a").spent == 1 and state.decision("corr-a", "held") == held
