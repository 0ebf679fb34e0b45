"""The bus's stream readers: the whole stream in batches, the durable reader resumed after a position, a work queue."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import RetentionPolicy

from tests.conftest import Tenant
from trustbus.bus import ConfigError, DurableSettings, TenantStream, WorkQueueSettings, new_envelope, subjects

SETTINGS = DurableSettings(batch=8, ack_wait_s=30.0, max_ack_pending=64)


async def _publish(tenant: Tenant, count: int, *, subject: str | None = None) -> list[int]:
    alice = await tenant.bus("alice")
    seqs = []
    for i in range(count):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        seqs.append((await alice.publish(subject or subjects.outbox(tenant.name, "alice", 0), alice.seal(env))).seq)
    return seqs


async def _all(reader: TenantStream, *, last: int, from_seq: int = 1, only: tuple[str, ...] = ()) -> list[int]:
    return [m.seq async for batch in reader.batches(last=last, from_seq=from_seq, only=only) for m in batch]


async def test_batches_run_from_a_sequence_through_the_last_asked_for_and_on_some_subjects_only(
    tenant: Tenant,
) -> None:
    seqs = await _publish(tenant, 5)
    checkpoints = await _publish(tenant, 2, subject=subjects.checkpoint(tenant.name))
    reader = TenantStream(tenant.js, tenant.name)
    last = await reader.last_seq()
    assert last == checkpoints[-1]
    assert await _all(reader, last=last) == list(range(1, last + 1))
    assert await _all(reader, last=seqs[3], from_seq=seqs[1]) == seqs[1:4]
    assert await _all(reader, last=last, only=(subjects.checkpoint(tenant.name),)) == checkpoints
    assert await _all(reader, last=last, only=(subjects.quarantine(tenant.name),)) == []
    assert await _all(reader, last=last, from_seq=last + 1) == []


async def test_a_reader_of_a_tenant_never_provisioned_says_so(tenant: Tenant) -> None:
    async with await TenantStream.connect([tenant.url], f"{tenant.name}nobody") as reader:
        with pytest.raises(ConfigError, match="not provisioned"):
            await reader.last_seq()


async def test_a_connected_reader_gives_the_keyring_and_the_pinned_admin_key(tenant: Tenant) -> None:
    await tenant.add("alice")
    async with await TenantStream.connect([tenant.url], tenant.name) as reader:
        assert await reader.admin_key() == tenant.admin.key_id
        keyring = await reader.keyring()
        assert keyring.resolve(tenant.identities["alice"].key_id).owner == "alice"
        assert {r.key for r in await reader.keyring_revisions()} >= {tenant.admin.key_id}


async def _read(reader_after: int, tenant: Tenant, *, reuse: bool, want: int) -> list[int]:
    """Open the durable reader after ``reader_after``, read ``want`` messages, ack them."""
    bus = await tenant.bus("ledger")
    reader = bus.durable_reader(SETTINGS)
    stop = asyncio.Event()
    await reader.open(reader_after, reuse=reuse, stop=stop)
    got: list[int] = []
    try:
        async with asyncio.timeout(10):
            while len(got) < want:
                batch, intact = await reader.next_batch(stop, wait_s=0.5)
                assert intact
                got += [m.seq for m in batch]
        await reader.ack()
    finally:
        await reader.aclose()
    return got


async def test_the_durable_reader_resumes_exactly_after_the_committed_position(tenant: Tenant) -> None:
    await _publish(tenant, 6)
    assert await _read(0, tenant, reuse=True, want=6) == [1, 2, 3, 4, 5, 6]
    await _publish(tenant, 2)
    assert await _read(6, tenant, reuse=True, want=2) == [7, 8]  # in step: kept
    # A position behind the consumer (a projection restored from a backup): made anew from there.
    assert await _read(3, tenant, reuse=True, want=5) == [4, 5, 6, 7, 8]
    # A delivery went missing: made anew even though in step.
    assert await _read(8, tenant, reuse=False, want=0) == []
    await _publish(tenant, 1)
    assert await _read(8, tenant, reuse=True, want=1) == [9]


async def test_a_deleted_durable_consumer_shows_as_a_broken_batch(tenant: Tenant) -> None:
    await _publish(tenant, 2)
    bus = await tenant.bus("ledger")
    reader = bus.durable_reader(SETTINGS)
    stop = asyncio.Event()
    await reader.open(0, reuse=True, stop=stop)
    try:
        batch, intact = await reader.next_batch(stop, wait_s=1.0)
        assert [m.seq for m in batch] == [1, 2] and intact
        await tenant.js.delete_consumer(subjects.stream_name(tenant.name), "ledger")
        _, intact = await reader.next_batch(stop, wait_s=1.0)
        assert not intact
        await reader.open(2, reuse=False, stop=stop)
        await _publish(tenant, 1)
        batch, intact = await reader.next_batch(stop, wait_s=2.0)
        assert [m.seq for m in batch] == [3] and intact
    finally:
        await reader.aclose()


async def test_a_work_queue_item_nakd_comes_back_and_one_acked_is_gone(tenant: Tenant) -> None:
    stream = f"WQ_{tenant.name}"
    await tenant.js.add_stream(name=stream, subjects=[f"wq.{tenant.name}"], retention=RetentionPolicy.WORK_QUEUE)
    for body in (b"first", b"second"):
        await tenant.js.publish(f"wq.{tenant.name}", body)
    bus = await tenant.bus("ledger")
    queue = bus.work_queue(stream, "worker", WorkQueueSettings(ack_wait_s=30.0, batch=4, retry_s=0.2))
    stop = asyncio.Event()
    seen: list[bytes] = []
    async with asyncio.timeout(10):
        async for item in queue.items(stop):
            seen.append(item.body)
            if item.body == b"first" and seen.count(b"first") == 1:
                await item.nak(delay_s=0.1)
            else:
                await item.ack()
            if seen.count(b"first") == 2 and b"second" in seen:
                stop.set()
    assert sorted(seen) == [b"first", b"first", b"second"]
    deadline = time.monotonic() + 5  # an ack is a plain publish, with no answer: the item goes soon after
    while (left := (await tenant.js.stream_info(stream)).state.messages) != 0:
        assert time.monotonic() < deadline, f"{left} items left in the queue"
        await asyncio.sleep(0.05)
