"""One contract for a Bucket and a SubjectLog, held by the NATS adapters on a real server and by the in-memory fakes.

Each test runs against ``nats`` (the tenant's memory bucket and decision logs,
through a Bus), ``nats direct`` (the same bucket read with direct gets) and
``memory`` (:mod:`trustbus.bus.testing`), so the fakes are what the adapters are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.conftest import Tenant
from trustbus.bus import Appended, Bucket, Conflict, NotFound, Refused, SubjectLog, subjects
from trustbus.bus.testing import MemoryBucket, MemoryStream

EXPECTED = "Nats-Expected-Last-Subject-Sequence"
MSG_ID = "Nats-Msg-Id"
SLACK_NS = 1_000_000  # the adapters' store times are rounded to microseconds; the server's clock is this host's
SHORTEST_WINDOW_S = 0.1  # the shortest duplicate window the server accepts


@pytest.fixture(params=["nats", "nats direct", "memory"])
def bucket_kind(request: pytest.FixtureRequest) -> tuple[str, Tenant | None]:
    return request.param, None if request.param == "memory" else request.getfixturevalue("tenant")


@pytest.fixture
async def bucket(bucket_kind: tuple[str, Tenant | None]) -> Bucket:
    kind, tenant = bucket_kind
    if tenant is None:
        return MemoryBucket("mem")
    bus = await tenant.bus("coordinator")
    return bus.bucket(subjects.memory_bucket(tenant.name), direct=kind == "nats direct")


@dataclass
class Logs:
    log: SubjectLog  # partition 0's decision log
    other: SubjectLog  # partition 1's, on the same stream
    every: SubjectLog  # every partition's (a wildcard subject)
    window_passes: Callable[[], Awaitable[None]]  # the stream's duplicate window passes: it forgets the ids it saw


@pytest.fixture(params=["nats", "nats in batches", "memory"])
def log_kind(request: pytest.FixtureRequest) -> tuple[str, Tenant | None]:
    return request.param, None if request.param == "memory" else request.getfixturevalue("tenant")


@pytest.fixture
async def logs(log_kind: tuple[str, Tenant | None]) -> Logs:
    kind, tenant = log_kind
    if tenant is None:
        memory = MemoryStream("TB_t")

        async def forget() -> None:
            memory.forget_ids()

        return Logs(memory.log("tb.t.decision.0"), memory.log("tb.t.decision.1"), memory.log("tb.t.decision.*"), forget)
    bus = await tenant.bus("coordinator")
    batched = kind == "nats in batches"
    name = tenant.name

    async def shorten_the_window() -> None:
        info = await tenant.js.stream_info(subjects.stream_name(name))
        await tenant.js.update_stream(dataclasses.replace(info.config, duplicate_window=SHORTEST_WINDOW_S))
        await asyncio.sleep(3 * SHORTEST_WINDOW_S)  # the time itself is what is waited for

    return Logs(
        bus.log(subjects.decision(name, 0), in_batches=batched),
        bus.log(subjects.decision(name, 1), in_batches=batched),
        bus.log(subjects.all_decisions(name), in_batches=batched),
        shorten_the_window,
    )


def _stored_between(stored_ns: int, before: int, after: int) -> bool:
    return before - SLACK_NS <= stored_ns <= after + SLACK_NS


# -- Bucket ---------------------------------------------------------------------------------------------------------


async def test_a_key_never_written_has_no_entry_and_no_history(bucket: Bucket) -> None:
    await bucket.put("other", b"v")
    assert await bucket.get("never") is None
    assert [e async for e in bucket.history("never")] == []


async def test_put_stores_the_next_revision_with_its_store_time_and_headers(bucket: Bucket) -> None:
    before = time.time_ns()
    first = await bucket.put("k", b"one", headers={"X-Why": "test"})
    after = time.time_ns()
    entry = await bucket.get("k")
    assert entry is not None
    assert (entry.key, entry.revision, entry.value, entry.deleted) == ("k", first, b"one", False)
    assert entry.headers == {"X-Why": "test"}
    assert _stored_between(entry.stored_ns, before, after)
    second = await bucket.put("k", b"two")
    assert second > first
    latest = await bucket.get("k")
    assert latest is not None and (latest.revision, latest.value, latest.headers) == (second, b"two", {})
    assert bucket.subject("k") == f"$KV.{bucket.name}.k"
    resent = {MSG_ID: "put-1"}  # the bucket is a stream: a repeated message id is stored once
    assert await bucket.put("m", b"v", headers=resent) == await bucket.put("m", b"v2", headers=resent)


async def test_put_with_a_revision_is_a_compare_and_set(bucket: Bucket) -> None:
    created = await bucket.put("k", b"one", revision=0)  # 0: only while the key has no revision
    with pytest.raises(Conflict):
        await bucket.put("k", b"again", revision=0)
    updated = await bucket.put("k", b"two", revision=created)
    with pytest.raises(Conflict):
        await bucket.put("k", b"late", revision=created)  # lost the race to the write of `updated`
    elsewhere = await bucket.put("j", b"x")
    with pytest.raises(Conflict):
        await bucket.put("k", b"wrong key", revision=elsewhere)  # a revision is the key's own, not the stream's
    entry = await bucket.get("k")
    assert entry is not None and (entry.revision, entry.value) == (updated, b"two")
    assert entry.headers == {EXPECTED: str(created)}  # the expectation is stored with the value


async def test_a_delete_is_a_tombstone_that_counts_as_a_revision(bucket: Bucket) -> None:
    written = await bucket.put("k", b"one")
    with pytest.raises(Conflict):
        await bucket.delete("k", revision=written + 1)
    deleted = await bucket.delete("k", revision=written)
    assert deleted > written
    entry = await bucket.get("k")
    assert entry is not None
    assert (entry.revision, entry.value, entry.deleted) == (deleted, b"", True)
    assert entry.headers == {"KV-Operation": "DEL", EXPECTED: str(written)}
    with pytest.raises(Conflict):
        await bucket.put("k", b"new", revision=0)  # the tombstone is a revision
    rewritten = await bucket.put("k", b"new", revision=deleted)
    entry = await bucket.get("k")
    assert entry is not None and (entry.revision, entry.value, entry.deleted) == (rewritten, b"new", False)
    fresh = await bucket.delete("fresh", revision=0)  # a tombstone for a key never written
    entry = await bucket.get("fresh")
    assert entry is not None and entry.deleted and entry.revision == fresh
    assert (await bucket.delete("fresh")) > fresh  # unconditionally


async def test_history_is_every_revision_oldest_first_after_a_revision_and_by_wildcard(bucket: Bucket) -> None:
    ax1 = await bucket.put("a.x", b"1")
    ay = await bucket.put("a.y", b"2")
    b = await bucket.put("b", b"3")
    axz = await bucket.put("a.x.z", b"4")
    a = await bucket.put("a", b"5")
    ax2 = await bucket.delete("a.x")
    everything = [(e.key, e.revision, e.deleted) async for e in bucket.history()]
    assert everything == [("a.x", ax1, False), ("a.y", ay, False), ("b", b, False), ("a.x.z", axz, False),
                          ("a", a, False), ("a.x", ax2, True)]  # fmt: skip
    assert [e.revision async for e in bucket.history("a.x")] == [ax1, ax2]
    assert [e.value async for e in bucket.history("a.x")] == [b"1", b""]
    assert [e.revision async for e in bucket.history("a.x", after=ax1)] == [ax2]
    assert [e.revision async for e in bucket.history("a.x", after=ax2)] == []
    assert [e.revision async for e in bucket.history(after=ay)] == [b, axz, a, ax2]
    assert [e.key async for e in bucket.history("a.*")] == ["a.x", "a.y", "a.x"]  # one token
    assert [e.key async for e in bucket.history("a.>")] == ["a.x", "a.y", "a.x.z", "a.x"]  # the rest
    assert [e.key async for e in bucket.history("*")] == ["b", "a"]
    last_of_a = await bucket.get("a.*")  # the last revision of any key matching
    assert last_of_a is not None and (last_of_a.key, last_of_a.revision) == ("a.x", ax2)


async def test_history_read_by_pages_matches_get(bucket: Bucket) -> None:
    revisions = [await bucket.put("k", str(i).encode()) for i in range(5)]
    entries = [e async for e in bucket.history("k")]
    assert [e.revision for e in entries] == revisions
    assert entries[-1] == await bucket.get("k")


async def test_a_bucket_keeps_the_last_64_revisions_of_each_key(bucket: Bucket) -> None:
    revisions = [await bucket.put("k", str(i).encode()) for i in range(66)]
    other = await bucket.put("j", b"kept")
    assert [e.revision async for e in bucket.history("k")] == revisions[2:]
    assert [e.revision async for e in bucket.history()] == [*revisions[2:], other]
    assert [e.revision async for e in bucket.history("k", after=revisions[0])] == revisions[2:]


async def test_get_many_is_the_last_revision_of_each_key_written_as_get_has_it(bucket: Bucket) -> None:
    await bucket.put("a", b"1")
    await bucket.put("a", b"2", headers={"X-Why": "test"})
    await bucket.put("empty", b"")
    await bucket.put("gone", b"x")
    await bucket.delete("gone")
    found = await bucket.get_many(["a", "never", "empty", "gone"])
    assert sorted(found) == ["a", "empty", "gone"]  # a key never written is absent
    for key, entry in found.items():
        assert entry == await bucket.get(key)
    assert found["gone"].deleted and found["a"].headers == {"X-Why": "test"}
    assert await bucket.get_many(["never", "nor this"]) == {} and await bucket.get_many([]) == {}


async def test_get_many_of_more_keys_than_one_request_names(bucket: Bucket) -> None:
    written = [f"k{i}" for i in range(0, 600, 3)]
    for key in written:
        await bucket.put(key, key.encode())
    found = await bucket.get_many([f"k{i}" for i in range(600)])
    assert sorted(found) == sorted(written)
    assert all(entry.value == key.encode() for key, entry in found.items())


# -- SubjectLog -----------------------------------------------------------------------------------------------------


async def test_an_empty_log_has_no_last_and_reads_nothing(logs: Logs) -> None:
    await logs.other.append(b"elsewhere", {}, after=None)
    assert await logs.log.last() is None
    assert [m async for m in logs.log.read()] == []


async def test_append_after_a_sequence_is_a_compare_and_set(logs: Logs) -> None:
    before = time.time_ns()
    first = await logs.log.append(b"one", {"Tb-X": "1"}, after=0)  # 0: the log is still empty
    after = time.time_ns()
    assert first == Appended(first.seq, duplicate=False)
    with pytest.raises(Conflict):
        await logs.log.append(b"late", {}, after=0)
    second = await logs.log.append(b"two", {}, after=first.seq)
    with pytest.raises(Conflict):
        await logs.log.append(b"late", {}, after=first.seq)
    with pytest.raises(Conflict):
        await logs.log.append(b"ahead", {}, after=second.seq + 1)
    last = await logs.log.last()
    assert last is not None and (last.seq, last.body) == (second.seq, b"two")
    stored = [m async for m in logs.log.read()]
    assert [(m.seq, m.subject, m.body) for m in stored] == [
        (first.seq, logs.log.subject, b"one"),
        (second.seq, logs.log.subject, b"two"),
    ]
    assert stored[0].headers == {"Tb-X": "1", EXPECTED: "0"}
    assert stored[1].headers == {EXPECTED: str(first.seq)}
    assert _stored_between(stored[0].stored_ns, before, after)


async def test_append_without_after_is_unconditional(logs: Logs) -> None:
    first = await logs.log.append(b"one", {}, after=None)
    second = await logs.log.append(b"two", {}, after=None)
    assert second.seq > first.seq and not second.duplicate
    assert [m.body async for m in logs.log.read()] == [b"one", b"two"]
    assert (await logs.log.get(second.seq)).headers == {}


async def test_sequences_are_the_streams_and_an_expectation_is_the_subjects(logs: Logs) -> None:
    mine = await logs.log.append(b"a", {}, after=0)
    theirs = await logs.other.append(b"b", {}, after=0)  # another subject: its own expectation
    assert theirs.seq > mine.seq
    with pytest.raises(Conflict):
        await logs.log.append(b"c", {}, after=theirs.seq)  # the stream's last, not this subject's
    again = await logs.log.append(b"c", {}, after=mine.seq)
    assert again.seq > theirs.seq
    assert [m.seq async for m in logs.log.read()] == [mine.seq, again.seq]


async def test_a_repeated_message_id_is_stored_once(logs: Logs) -> None:
    first = await logs.log.append(b"one", {MSG_ID: "m1"}, after=None)
    assert await logs.log.append(b"resent", {MSG_ID: "m1"}, after=None) == Appended(first.seq, duplicate=True)
    assert await logs.log.append(b"resent", {MSG_ID: "m1"}, after=first.seq) == Appended(first.seq, duplicate=True)
    # The expectation is checked before the id: a resend after another record is a conflict.
    await logs.log.append(b"two", {}, after=None)
    with pytest.raises(Conflict):
        await logs.log.append(b"resent", {MSG_ID: "m1"}, after=first.seq)
    # Ids are the stream's: the same id on another subject is the first message too.
    assert await logs.other.append(b"x", {MSG_ID: "m1"}, after=0) == Appended(first.seq, duplicate=True)
    assert [m.body async for m in logs.every.read()] == [b"one", b"two"]
    # A failed compare-and-set does not consume the id.
    with pytest.raises(Conflict):
        await logs.log.append(b"three", {MSG_ID: "m3"}, after=0)
    third = await logs.log.append(b"three", {MSG_ID: "m3"}, after=None)
    assert not third.duplicate and (await logs.log.get(third.seq)).body == b"three"


async def test_a_batch_is_stored_whole_after_a_sequence(logs: Logs) -> None:
    start = await logs.log.append(b"start", {}, after=0)
    records = [(b"b1", {"Tb-N": "1"}), (b"b2", {MSG_ID: "b2"}), (b"b3", {})]
    last = await logs.log.append_batch(records, after=start.seq, batch_id="batch-1")
    stored = [m async for m in logs.log.read(after=start.seq)]
    assert [m.body for m in stored] == [b"b1", b"b2", b"b3"]
    assert [m.seq for m in stored] == [last - 2, last - 1, last]  # stored together
    batch = {"Nats-Batch-Id": "batch-1"}
    assert [m.headers for m in stored] == [
        {"Tb-N": "1", **batch, "Nats-Batch-Sequence": "1", EXPECTED: str(start.seq)},
        {MSG_ID: "b2", **batch, "Nats-Batch-Sequence": "2"},
        {**batch, "Nats-Batch-Sequence": "3", "Nats-Batch-Commit": "1"},
    ]
    assert await logs.log.append(b"resent", {MSG_ID: "b2"}, after=None) == Appended(last - 1, duplicate=True)
    one = await logs.other.append_batch([(b"only", {})], after=0, batch_id="batch-2")
    assert (await logs.other.get(one)).headers == {
        "Nats-Batch-Id": "batch-2", "Nats-Batch-Sequence": "1", EXPECTED: "0", "Nats-Batch-Commit": "1"
    }  # fmt: skip


async def test_a_conflicting_batch_stores_nothing(logs: Logs) -> None:
    start = await logs.log.append(b"start", {MSG_ID: "seen"}, after=None)
    batches: list[tuple[list[tuple[bytes, dict[str, str]]], int]] = [
        ([(b"x1", {}), (b"x2", {})], 0),  # a stale expectation
        ([(b"x1", {}), (b"x2", {MSG_ID: "seen"})], start.seq),  # an id the stream has
        ([(b"x1", {MSG_ID: "twice"}), (b"x2", {MSG_ID: "twice"})], start.seq),  # an id twice in the batch
    ]
    for number, (records, after) in enumerate(batches):
        with pytest.raises(Conflict):
            await logs.log.append_batch(records, after=after, batch_id=f"conflicting-{number}")
    assert [m.body async for m in logs.log.read()] == [b"start"]
    assert [m.body async for m in logs.every.read()] == [b"start"]


async def test_a_landed_batch_retried_is_a_conflict_and_stored_once(logs: Logs) -> None:
    records: list[tuple[bytes, dict[str, str]]] = [(b"d1", {}), (b"d2", {})]
    last = await logs.log.append_batch(records, after=0, batch_id="retried")
    with pytest.raises(Conflict):
        await logs.log.append_batch(records, after=0, batch_id="retried")
    assert [m.body async for m in logs.log.read()] == [b"d1", b"d2"]
    # The server keeps no record of batch ids: only the expectation (or a message id) refuses a retry.
    again = await logs.log.append_batch([(b"d3", {})], after=last, batch_id="retried")
    assert [m.seq async for m in logs.log.read(after=last)] == [again]


async def test_read_after_a_sequence_is_oldest_first_and_bounded(logs: Logs) -> None:
    seqs = []
    for body in (b"0", b"1", b"2"):
        seqs.append((await logs.log.append(body, {}, after=None)).seq)
        await logs.other.append(body, {}, after=None)
    assert [m.seq async for m in logs.log.read()] == seqs
    assert [m.seq async for m in logs.log.read(after=seqs[0])] == seqs[1:]
    assert [m.seq async for m in logs.log.read(after=seqs[0] + 1)] == seqs[1:]  # after a sequence of another subject
    assert [m.seq async for m in logs.log.read(after=seqs[2])] == []
    assert [m.seq async for m in logs.log.read(after=seqs[2] + 100)] == []
    everything = [(m.subject, m.body) async for m in logs.every.read()]
    assert everything == [(s, b) for b in (b"0", b"1", b"2") for s in (logs.log.subject, logs.other.subject)]
    last = await logs.every.last()  # the last on any subject matching
    assert last is not None and (last.subject, last.body) == (logs.other.subject, b"2")


async def test_a_long_read_is_every_record_once_in_order(logs: Logs) -> None:
    seqs = []
    for index in range(300):
        await logs.other.append(b"o%d" % index, {}, after=None)
        seqs.append((await logs.log.append(b"%d" % index, {"Tb-I": str(index)}, after=None)).seq)
    read = [m async for m in logs.log.read()]
    assert [m.seq for m in read] == seqs
    assert [(m.body, m.headers) for m in read] == [(b"%d" % i, {"Tb-I": str(i)}) for i in range(300)]
    assert {m.subject for m in read} == {logs.log.subject}
    assert [m.seq async for m in logs.log.read(after=seqs[99])] == seqs[100:]
    assert len([m async for m in logs.every.read(after=seqs[0])]) == 598
    first = await logs.log.get(seqs[0])
    assert abs((await anext(aiter(logs.log.read()))).stored_ns - first.stored_ns) <= SLACK_NS


async def test_a_long_read_sees_what_is_appended_while_it_runs(logs: Logs) -> None:
    for index in range(200):
        await logs.log.append(b"%d" % index, {}, after=None)
    seen = []
    async for message in logs.log.read(after=0):
        seen.append(message.body)
        if len(seen) == 1:
            await logs.log.append(b"late", {}, after=None)
    assert seen == [b"%d" % i for i in range(200)] + [b"late"]


async def test_read_sees_what_is_appended_while_it_runs(logs: Logs) -> None:
    await logs.log.append(b"0", {}, after=None)
    seen = []
    async for message in logs.log.read():
        seen.append(message.body)
        if len(seen) == 1:
            await logs.log.append(b"1", {}, after=None)
    assert seen == [b"0", b"1"]


async def test_get_returns_the_message_of_any_subject_at_a_sequence(logs: Logs) -> None:
    mine = await logs.log.append(b"mine", {"Tb-X": "1"}, after=None)
    theirs = await logs.other.append(b"theirs", {}, after=None)
    message = await logs.log.get(theirs.seq)
    assert (message.seq, message.subject, message.body, message.headers) == (
        theirs.seq, logs.other.subject, b"theirs", {}
    )  # fmt: skip
    assert (await logs.log.get(mine.seq)).headers == {"Tb-X": "1"}
    assert await logs.log.get(mine.seq) == await logs.log.last()
    with pytest.raises(NotFound):
        await logs.log.get(theirs.seq + 1)
    with pytest.raises(Refused):
        await logs.log.get(0)


async def test_find_returns_the_record_with_a_message_id_or_none(logs: Logs) -> None:
    await logs.other.append(b"elsewhere", {MSG_ID: "theirs"}, after=None)
    for index in range(80):  # a long run before it: a log read in batches searches through a consumer
        await logs.log.append(b"%d" % index, {MSG_ID: f"plain-{index}"}, after=None)
    mine = await logs.log.append(b"mine", {MSG_ID: "mine", "Tb-X": "1"}, after=None)
    await logs.log.append(b"after", {}, after=None)
    found = await logs.log.find("mine")
    assert found is not None
    assert (found.seq, found.subject, found.body) == (mine.seq, logs.log.subject, b"mine")
    assert found.headers == {MSG_ID: "mine", "Tb-X": "1"}
    assert await logs.log.find("absent") is None
    assert await logs.log.find("theirs") is None  # on another subject: not in this log
    elsewhere = await logs.every.find("theirs")
    assert elsewhere is not None and elsewhere.body == b"elsewhere"


async def test_find_looks_only_after_a_sequence(logs: Logs) -> None:
    first = await logs.log.append(b"one", {MSG_ID: "m"}, after=None)
    await logs.log.append(b"two", {MSG_ID: "n"}, after=None)
    found = await logs.log.find("m", after=first.seq - 1)
    assert found is not None and found.seq == first.seq
    assert await logs.log.find("m", after=first.seq) is None
    assert await logs.log.find("n", after=first.seq) is not None


async def test_find_returns_the_first_of_two_records_with_one_id(logs: Logs) -> None:
    first = await logs.log.append(b"one", {MSG_ID: "m"}, after=None)
    await logs.window_passes()  # then the same id is stored again (a forward repeated after the window)
    second = await logs.log.append(b"two", {MSG_ID: "m"}, after=None)
    deadline = time.monotonic() + 10
    while second.duplicate and time.monotonic() < deadline:
        # The server forgets ids on a timer of its own, late on a loaded machine; a duplicate stores nothing.
        await asyncio.sleep(SHORTEST_WINDOW_S)
        second = await logs.log.append(b"two", {MSG_ID: "m"}, after=None)
    assert second.seq > first.seq and not second.duplicate
    found = await logs.log.find("m")
    assert found is not None and (found.seq, found.body) == (first.seq, b"one")
    later = await logs.log.find("m", after=first.seq)
    assert later is not None and (later.seq, later.body) == (second.seq, b"two")
