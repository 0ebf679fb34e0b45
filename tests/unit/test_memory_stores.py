"""What only the in-memory stores do: an injected clock, injected failures, and yielding like a request.

Everything they share with the NATS adapters is in tests/integration/test_store_contract.py.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
from pathlib import Path

import pytest

from trustbus.bus import Appended, Conflict, NotFound, Timeout, Unavailable, testing
from trustbus.bus._provision import KV_HISTORY
from trustbus.bus.testing import MemoryBucket, MemoryStream, MemorySubjectLog


def test_exports() -> None:
    assert sorted(testing.__all__) == ["MemoryBucket", "MemoryStream", "MemorySubjectLog"]


def test_it_does_not_import_nats() -> None:
    tree = ast.parse(Path(testing.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "nats"]


async def test_store_times_come_from_the_clock() -> None:
    ticks = itertools.count(1000, 10)
    memory = MemoryStream("TB_t", clock=lambda: next(ticks))
    bucket, log = memory.bucket("b"), memory.log("tb.t.x")
    await bucket.put("k", b"v")
    await log.append_batch([(b"1", {}), (b"2", {})], after=0, batch_id="b")
    entry = await bucket.get("k")
    assert entry is not None and entry.stored_ns == 1000
    assert [m.stored_ns async for m in log.read()] == [1010, 1020]


async def test_a_bucket_and_logs_on_one_stream_share_its_sequence() -> None:
    memory = MemoryStream("TB_t")
    bucket, log = memory.bucket("b"), memory.log("tb.t.x")
    assert (bucket.stream, log.stream) == ("TB_t", "TB_t")
    assert await bucket.put("k", b"v") == 1
    assert await log.append(b"r", {}, after=0) == Appended(2)
    assert (await log.get(1)).subject == "$KV.b.k"
    assert [(m.seq, m.subject) for m in memory.messages] == [(1, "$KV.b.k"), (2, "tb.t.x")]
    # Alone, each is a stream of its own, as a bucket is on NATS.
    assert MemoryBucket("b").stream == "KV_b"
    assert MemorySubjectLog("tb.t.x").memory is not MemorySubjectLog("tb.t.x").memory


async def test_a_stream_may_keep_only_the_last_messages_of_each_subject() -> None:
    assert testing._KV_HISTORY == KV_HISTORY  # a bucket of its own keeps what a provisioned one does
    memory = MemoryStream("TB_t", max_per_subject=2)
    log, other = memory.log("tb.t.x"), memory.log("tb.t.y")
    for body in (b"1", b"2", b"3"):
        await log.append(body, {}, after=None)
    await other.append(b"y", {}, after=None)
    assert [m.body async for m in log.read()] == [b"2", b"3"]
    with pytest.raises(NotFound):
        await log.get(1)
    assert [m.seq for m in memory.messages] == [2, 3, 4]


async def test_an_injected_failure_fails_the_next_call_once() -> None:
    memory = MemoryStream("TB_t")
    log, bucket = memory.log("tb.t.x"), memory.bucket("b")
    memory.fail_next()
    with pytest.raises(Unavailable):
        await log.append(b"lost", {}, after=0)
    assert memory.messages == []
    memory.fail_next(Timeout("no answer in time"))
    with pytest.raises(Timeout):
        await bucket.get("k")
    assert await bucket.get("k") is None  # used once
    memory.fail_next()
    with pytest.raises(Unavailable):
        [m async for m in log.read()]


async def test_a_failure_after_storing_stores_the_write_and_a_resend_is_a_duplicate() -> None:
    memory = MemoryStream("TB_t")
    log, bucket = memory.log("tb.t.x"), memory.bucket("b")
    memory.fail_next(Timeout("no answer in time"), after_storing=True)
    with pytest.raises(Timeout):
        await log.append(b"once", {"Nats-Msg-Id": "m"}, after=0)
    assert await log.append(b"once", {"Nats-Msg-Id": "m"}, after=None) == Appended(1, duplicate=True)
    memory.fail_next(Timeout("no answer in time"), after_storing=True)
    with pytest.raises(Timeout):
        await log.append_batch([(b"a", {}), (b"b", {})], after=1, batch_id="x")
    memory.fail_next(Timeout("no answer in time"), after_storing=True)
    with pytest.raises(Timeout):
        await bucket.put("k", b"v")
    assert [m.body for m in memory.messages] == [b"once", b"a", b"b", b"v"]
    memory.fail_next(Unavailable("gone"), after_storing=True)  # a read has nothing to store first
    with pytest.raises(Unavailable):
        await log.last()


async def test_two_writers_racing_on_one_log_interleave_and_one_conflicts() -> None:
    log = MemorySubjectLog("tb.t.decision.0")

    async def decide(body: bytes) -> Appended:
        last = await log.last()
        return await log.append(body, {}, after=0 if last is None else last.seq)

    results = await asyncio.gather(decide(b"a"), decide(b"b"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Appended", "Conflict"]
    assert any(isinstance(r, Conflict) for r in results)
    assert len([m async for m in log.read()]) == 1


async def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        await MemorySubjectLog("tb.t.x").append_batch([], after=0, batch_id="b")
