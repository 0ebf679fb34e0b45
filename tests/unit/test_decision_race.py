"""Two coordinators racing on one decision log, in-process (bus.testing): one conflict, no double decision.

Each coordinator here is the loop the Coordinator runs (``DecisionLog.record_group`` and
``DecisionLog.record``) over its own view of one shared :class:`~bus.testing.MemoryStream`, signing
with its own coordinator key. The stream yields to the event loop on every call, so two coordinators
started together interleave as two processes would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field

import pytest

from trustbus.agents import _decision_log, parse_policy
from trustbus.agents._decision import CoordinatorState, Decision, Deferral, decide
from trustbus.agents._decision_log import CONFLICT_LOGGED, Conflicts, DecisionLog
from trustbus.bus import (
    Appended,
    Conflict,
    Envelope,
    Identity,
    KeyGrant,
    Keyring,
    Sealed,
    StoredMessage,
    Timeout,
    new_envelope,
    open_envelope,
    recorded_decisions,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus.testing import MemoryStream, MemorySubjectLog

T0 = time.time_ns()
TENANT = "acme"
SUBJECT = subjects.decision(TENANT, 0)
BUDGET = 3
GROUP = 10  # envelopes decided together, recorded in one record
POLICY = parse_policy(
    {
        "limits": {"budget_per_correlation": BUDGET},
        "rules": [{"from": "triage", "to": ["billing"], "kinds": ["event"]}],
    }
)
ADMIN = Identity.generate()
KEYS = {"c1": Identity.generate(), "c2": Identity.generate()}


def keyring() -> Keyring:
    """Both coordinators' keys, with the coordinator role."""
    ring = Keyring(tenant=TENANT, admin_key_id=ADMIN.key_id)
    for owner, identity in KEYS.items():
        grant = KeyGrant(
            tenant=TENANT, key_id=identity.key_id, owner=owner, role="coordinator", valid_from=T0 - 3600 * 10**9
        )
        ring.add(identity.key_id, sign_grant(grant, ADMIN))
    return ring


@dataclass(frozen=True)
class CoordinatorKey:
    """What signs one coordinator's decision records (a connected Bus, in production)."""

    tenant: str
    name: str
    identity: Identity
    clock: Callable[[], int] = time.time_ns

    def seal(self, envelope: Envelope) -> Sealed:
        return seal(envelope, self.identity)


@dataclass(frozen=True)
class Outboxed:
    """An envelope as read from its sender's outbox, at ``seq``."""

    envelope: Envelope
    seq: int


class Watched:
    """A coordinator's view of the decision log that counts the conflicts its appends got."""

    def __init__(self, inner: MemorySubjectLog) -> None:
        self.inner = inner
        self.stream, self.subject = inner.stream, inner.subject
        self.conflicts = 0

    async def append(self, body: bytes, headers: dict[str, str], *, after: int | None) -> Appended:
        try:
            return await self.inner.append(body, headers, after=after)
        except Conflict:
            self.conflicts += 1
            raise

    async def append_batch(self, records: Sequence[tuple[bytes, dict[str, str]]], *, after: int, batch_id: str) -> int:
        try:
            return await self.inner.append_batch(records, after=after, batch_id=batch_id)
        except Conflict:
            self.conflicts += 1
            raise

    async def get(self, seq: int) -> StoredMessage:
        return await self.inner.get(seq)

    async def last(self) -> StoredMessage | None:
        return await self.inner.last()

    def read(self, *, after: int = 0) -> AsyncIterator[StoredMessage]:
        return self.inner.read(after=after)

    async def find(self, msg_id: str, *, after: int = 0) -> StoredMessage | None:
        return await self.inner.find(msg_id, after=after)


@dataclass
class Racer:
    """One coordinator: decides what it is given against its own state, appends to the shared log."""

    name: str
    log: DecisionLog
    watched: Watched
    decided: list[str] = field(default_factory=list)  # envelope ids it called decide() for, in order

    @property
    def key(self) -> CoordinatorKey:
        return CoordinatorKey(TENANT, self.name, KEYS[self.name])

    async def decide(self, item: Outboxed) -> Decision:
        result = decide(POLICY, item.envelope, self.log.state, received_ns=T0, source_seq=item.seq)
        assert isinstance(result, Decision)
        self.decided.append(item.envelope.id)
        return result

    async def mediate(self, items: Sequence[Outboxed]) -> None:
        """What the Coordinator does with a fetched batch of plain envelopes."""
        await self.log.record_group(items, self.decide, by=self.key)

    async def record(self, item: Outboxed) -> Decision | Deferral | None:
        """What the Coordinator does with one envelope decided alone (an effect, an approval, a memory write)."""

        def make() -> Decision | Deferral | None:
            if self.log.state.decided_about(item.envelope):
                return None  # decided by the other coordinator
            self.decided.append(item.envelope.id)
            return decide(POLICY, item.envelope, self.log.state, received_ns=T0, source_seq=item.seq)

        return await self.log.record(item.envelope, make, by=self.key)


def racer(stream: MemoryStream, name: str) -> Racer:
    watched = Watched(stream.log(SUBJECT))
    return Racer(name, DecisionLog(watched, keyring(), POLICY), watched)


async def fold(stream: MemoryStream) -> CoordinatorState:
    """The state a coordinator starting now would rebuild from the log."""
    log = DecisionLog(stream.log(SUBJECT), keyring(), POLICY)
    await log.catch_up()
    return log.state


def records(stream: MemoryStream) -> list[tuple[str, Decision]]:
    """Every decision on the log, oldest first: who signed its record and what it decided."""
    ring, found = keyring(), []
    for message in stream.messages:
        opened = open_envelope(message.body, message.headers, keyring=ring, received_ns=message.stored_ns)
        found += [(opened.grant.owner, decision) for _, decision in recorded_decisions(opened.envelope)]
    return found


def times_decided(stream: MemoryStream) -> Counter[str]:
    """How many decision records name each envelope."""
    return Counter(decision.envelope_id for _, decision in records(stream))


def outboxed(count: int, *, correlation_id: str | None = None, first_seq: int = 1) -> list[Outboxed]:
    envelopes = [
        new_envelope(tenant=TENANT, kind="event", sender="triage", to=("billing",), correlation_id=correlation_id)
        for _ in range(count)
    ]
    return [Outboxed(envelope, seq) for seq, envelope in enumerate(envelopes, start=first_seq)]


async def test_two_coordinators_deciding_one_envelope_record_it_once_and_the_loser_catches_up() -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    [item] = outboxed(1)

    await asyncio.gather(c1.mediate([item]), c2.mediate([item]))

    assert times_decided(stream) == {item.envelope.id: 1}
    assert c1.watched.conflicts + c2.watched.conflicts == 1
    loser = c1 if c1.watched.conflicts else c2
    assert loser.decided == [item.envelope.id]  # decided before it lost, not again after catching up
    folded = await fold(stream)
    assert c1.log.state == folded == c2.log.state
    assert c1.log.decision_ids == c2.log.decision_ids  # both forward under the one record's id


async def test_a_correlations_budget_is_spent_once_by_two_coordinators() -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    [first] = outboxed(1)
    correlation = first.envelope.correlation_id
    mine = [first, *outboxed(BUDGET - 1, correlation_id=correlation, first_seq=2)]
    theirs = outboxed(BUDGET, correlation_id=correlation, first_seq=10)

    await asyncio.gather(c1.mediate(mine), c2.mediate(theirs))

    decisions = [decision for _, decision in records(stream)]
    assert times_decided(stream) == Counter({item.envelope.id: 1 for item in mine + theirs})
    assert [d.verdict for d in decisions].count("accept") == BUDGET
    assert [d.reasons for d in decisions if d.verdict != "accept"] == [("budget",)] * BUDGET
    assert c1.watched.conflicts + c2.watched.conflicts >= 1
    folded = await fold(stream)
    assert folded.correlation(correlation).spent == BUDGET
    for coordinator in (c1, c2):  # the first to finish has not read the other's later records yet
        await coordinator.log.catch_up()
        assert coordinator.log.state == folded


async def test_a_group_record_that_loses_the_race_stores_nothing() -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    mine, theirs = outboxed(GROUP), outboxed(GROUP, first_seq=100)

    await asyncio.gather(c1.mediate(mine), c2.mediate(theirs))

    assert c1.watched.conflicts + c2.watched.conflicts == 1
    winner, loser = (c2, c1) if c1.watched.conflicts else (c1, c2)
    signers = [owner for owner, _ in records(stream)]
    assert signers == [winner.name] * len(mine) + [loser.name] * len(theirs)  # nothing of the lost batch between
    assert len(stream.messages) == 2  # each group stored as one record
    assert times_decided(stream) == Counter({item.envelope.id: 1 for item in mine + theirs})
    folded = await fold(stream)
    assert loser.log.state == folded  # it took its provisional decisions back out, read the winner's, appended
    await winner.log.catch_up()
    assert winner.log.state == folded


async def test_a_lost_race_is_counted_and_logged_with_what_it_cost(caplog: pytest.LogCaptureFixture) -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    mine, theirs = outboxed(GROUP), outboxed(GROUP, first_seq=100)

    with caplog.at_level(logging.WARNING, logger="trustbus.coordinator"):
        await asyncio.gather(c1.mediate(mine), c2.mediate(theirs))

    winner, loser = (c2, c1) if c1.watched.conflicts else (c1, c2)
    assert winner.log.conflicts == Conflicts()
    counted = loser.log.conflicts
    assert (counted.conflicts, counted.caught_up, counted.discarded) == (1, len(mine), len(theirs))
    assert counted.catch_up_s > 0
    [line] = [record for record in caplog.records if record.getMessage() == CONFLICT_LOGGED]
    logged = {key: getattr(line, key) for key in ("subject", "conflicts", "caught_up", "catch_up_s", "discarded")}
    assert logged == {"subject": SUBJECT, **asdict(counted)}  # the first conflict: its cost is the totals


async def test_two_coordinators_deciding_one_batch_record_each_envelope_once() -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    items = outboxed(GROUP)

    await asyncio.gather(c1.mediate(items), c2.mediate(items))

    assert times_decided(stream) == Counter({item.envelope.id: 1 for item in items})
    assert len(stream.messages) == 1
    loser = c1 if c1.watched.conflicts else c2
    assert loser.decided == [item.envelope.id for item in items]  # once each, before it lost
    folded = await fold(stream)
    assert c1.log.state == folded == c2.log.state


@pytest.mark.parametrize("size", [1, GROUP])
async def test_a_decision_stored_whose_ack_was_lost_is_not_recorded_again(size: int) -> None:
    stream = MemoryStream()
    c1 = racer(stream, "c1")
    items = outboxed(size)
    stream.fail_next(Timeout("append: no ack"), after_storing=True)

    with pytest.raises(Timeout):
        await c1.mediate(items)
    assert c1.log.state == CoordinatorState()  # not known to be stored: taken back out
    await c1.mediate(items)  # redelivered: the append finds its own records there, and reads them

    assert times_decided(stream) == Counter({item.envelope.id: 1 for item in items})
    assert c1.watched.conflicts == 1
    assert c1.log.state == await fold(stream)


async def test_two_coordinators_recording_one_envelope_alone_decide_it_once() -> None:
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    [item] = outboxed(1)

    results = await asyncio.gather(c1.record(item), c2.record(item))

    assert times_decided(stream) == {item.envelope.id: 1}
    assert c1.watched.conflicts + c2.watched.conflicts == 1
    loser = c1 if c1.watched.conflicts else c2
    assert results[[c1, c2].index(loser)] is None  # caught up and found it decided: nothing more to record
    assert loser.decided == [item.envelope.id]
    assert c1.log.state == await fold(stream) == c2.log.state


async def test_a_group_too_large_for_one_record_is_recorded_in_several_and_decided_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_decision_log, "GROUP_RECORD_BYTES", 1000)  # a few decisions a record
    stream = MemoryStream()
    c1, c2 = racer(stream, "c1"), racer(stream, "c2")
    mine, theirs = outboxed(GROUP), outboxed(GROUP, first_seq=100)

    await asyncio.gather(c1.mediate(mine), c2.mediate(theirs))

    assert len(stream.messages) > 2  # each group split
    assert all(len(m.body) < 2000 for m in stream.messages)
    assert times_decided(stream) == Counter({item.envelope.id: 1 for item in mine + theirs})
    folded = await fold(stream)
    await c1.log.catch_up()
    await c2.log.catch_up()
    assert c1.log.state == folded == c2.log.state
    assert c1.log.decision_ids == c2.log.decision_ids
    assert len(set(c1.log.decision_ids.values())) == 2 * GROUP  # one id a decision: its record's and position
