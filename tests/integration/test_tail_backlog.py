"""Readers of a large backlog: every message exactly once, in order, however slowly they are read.

The backlogs are several times the 4,096 messages a push subscription used to
hold before dropping the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.js.api import AckPolicy

from tests.conftest import Tenant
from trustbus.bus import Bus, ConsumerSettings, Sealed, decode_quarantine_record, new_envelope, subjects
from trustbus.bus._in_order import read_in_order
from trustbus.bus._tail import tail

BACKLOG = 20_000


async def _backlog(bus: Bus, subject: str, count: int) -> list[Sealed]:
    """Publish ``count`` small envelopes from ``bus`` to ``subject``, pipelined; return them in order."""
    sealed = [
        bus.seal(new_envelope(tenant=bus.tenant, kind="event", sender=bus.name, to=["bob"], payload=b"%d" % i))
        for i in range(count)
    ]
    for one in sealed:
        await bus.publish_pipelined(subject, one)
    await bus.flush(timeout_s=60)
    return sealed


def _dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    words = ("slow consumer", "dropped", "went missing")
    return [r.getMessage() for r in caplog.records if any(w in r.getMessage().lower() for w in words)]


async def test_tail_of_a_large_backlog_into_a_slow_reader_yields_every_message_once_in_order(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    sent = await _backlog(alice, subject, BACKLOG)
    last = await alice.reader().last_seq()

    caplog.set_level(logging.WARNING)
    seqs: list[int] = []
    ids: list[str] = []
    async with asyncio.timeout(60):
        async for item in tail(tenant.js, tenant.keyring, tenant.name, subject=subject, idle_timeout_s=2.0):
            assert item.opened is not None, item.error
            seqs.append(item.stream_seq)
            ids.append(item.opened.envelope.id)
            await asyncio.sleep(0)  # the reader lets the connection run: a push subscription fills meanwhile
            if len(seqs) in (1_500, 9_000):
                await asyncio.sleep(1.0)  # and now and then stops for a while

    assert len(seqs) == BACKLOG
    assert seqs == sorted(set(seqs)) and seqs[-1] == last
    assert ids == [s.envelope.id for s in sent]
    assert _dropped(caplog) == []


async def test_tail_follows_new_messages_after_the_backlog_and_starts_where_asked(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    await _backlog(alice, subject, 3)
    after = await alice.reader().last_seq()
    got: list[int] = []

    async def follow() -> None:
        async for item in tail(tenant.js, tenant.keyring, tenant.name, new_only=True, idle_timeout_s=3.0):
            got.append(item.stream_seq)

    following = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    await _backlog(alice, subject, 2)
    await asyncio.sleep(0.5)
    await _backlog(alice, subject, 1)
    await asyncio.wait_for(following, 15)
    assert got == [after + 1, after + 2, after + 3]

    from_third = [
        i.stream_seq async for i in tail(tenant.js, tenant.keyring, tenant.name, from_seq=3, idle_timeout_s=1)
    ]
    assert from_third == list(range(3, after + 4))
    later = time.time_ns() + 3_600 * 10**9
    assert [i async for i in tail(tenant.js, tenant.keyring, tenant.name, since_ns=later, idle_timeout_s=1)] == []


async def test_a_read_whose_deliveries_are_taken_by_another_reads_again_from_the_last_message_it_saw(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries that never reach the reader (here another client fetches them) are read again, not skipped."""
    alice = await tenant.bus("alice")
    await _backlog(alice, subjects.outbox(tenant.name, "alice", 0), 500)
    last = await alice.reader().last_seq()
    stream = subjects.stream_name(tenant.name)

    caplog.set_level(logging.WARNING)
    seqs: list[int] = []
    reading = read_in_order(tenant.js, stream, [subjects.all_subjects(tenant.name)], last=last, batch=100)
    async for msgs in reading:
        seqs += [m.metadata.sequence.stream for m in msgs]
        if len(seqs) == 100:
            [consumer] = [c for c in await tenant.js.consumers_info(stream) if c.config.ack_policy == AckPolicy.NONE]
            thief = await tenant.js.pull_subscribe_bind(consumer.name, stream=stream)
            assert len(await thief.fetch(50, timeout=5)) == 50
            await thief.unsubscribe()

    assert seqs == list(range(1, last + 1))
    assert any("went missing" in message for message in _dropped(caplog))


async def test_replays_of_a_backlog_are_refused_after_a_restart(tenant: Tenant) -> None:
    """The read-back at start knows every id its consumer was handed in the replay window, not the first 4,096."""
    count = 12_000
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    settings = ConsumerSettings(batch=500, max_ack_pending=2_000, fetch_timeout_s=0.5)
    reader = await tenant.bus("reader")
    await reader.ensure_consumer("reader", subject, settings=settings)
    sent = await _backlog(alice, subject, count)

    handled = 0
    async with asyncio.timeout(60):
        async for batch in reader.consume_batches("reader", settings=settings):
            for delivery in batch:
                await delivery.ack()
            handled += len(batch)
            if handled == count:
                break
    await reader.aclose()

    replayed = [*sent[:: count // 8], sent[-1]]
    restarted = await tenant.bus("reader-restarted", identity_of="reader")
    for one in replayed:
        await tenant.js.publish(subject, one.body, headers={**one.headers, "Nats-Msg-Id": f"again-{one.envelope.id}"})
    twin = await _backlog(alice, subject, 1)

    delivered = []
    async with asyncio.timeout(60):
        async for delivery in restarted.consume("reader", settings=settings):
            delivered.append(delivery.envelope.id)
            await delivery.ack()
            if delivery.envelope.id == twin[0].envelope.id:
                break

    assert delivered == [twin[0].envelope.id]
    quarantined = subjects.quarantine(tenant.name)
    records = [
        decode_quarantine_record(item.opened.envelope.payload)
        async for item in tail(tenant.js, tenant.keyring, tenant.name, subject=quarantined, idle_timeout_s=1.0)
        if item.opened is not None
    ]
    assert [(r.reason, r.claimed_sender) for r in records] == [("replayed", "alice")] * len(replayed)
