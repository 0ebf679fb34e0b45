"""Retention: history archived into signed segments and purged from the live stream still verifies and replays as
one run; a changed segment fails, named; a purge that would cut what a coordinator or a consumer needs is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from tests.conftest import Tenant, provisioned
from tests.integration.test_bounded_coordinator import correlation_in_partition_0, decided, event_of, running
from trustbus.agents import retention_needs
from trustbus.bus import Bus, ConfigError, EmbeddedServer, Identity, TenantStream, provision, subjects
from trustbus.ledger import (
    GENESIS,
    ArchiveError,
    BundleEntry,
    Need,
    archive,
    chain_hash,
    consumer_needs,
    load_across,
    purge_archived,
    read_bundle,
    segments,
    verify_archive,
)
from trustbus.ledger._anchors import sign_checkpoint
from trustbus.ledger._bundle import signed_bundle, write_bundle


@pytest.fixture
async def purgeable(nats_server: EmbeddedServer) -> AsyncIterator[Tenant]:
    async with provisioned(nats_server, purgeable=True) as kit:
        yield kit


async def _sent(bus: Bus, count: int) -> None:
    for _ in range(count):
        envelope = event_of(bus, "bob", correlation_in_partition_0(bus))
        await bus.publish(bus.outbox(envelope), bus.seal(envelope))


async def test_archived_and_purged_history_verifies_and_replays_with_the_live_stream(
    purgeable: Tenant, tmp_path: Path
) -> None:
    tenant, archived = purgeable, tmp_path / "archive"
    signer: Identity = await tenant.add("ledger", role="ledger")
    alice = await tenant.bus("alice")
    await _sent(alice, 30)
    async with await TenantStream.connect([tenant.url], tenant.name) as reader:
        first = await archive(reader, archived, signer=signer, signer_name="ledger", through=10, segment_messages=6)
        assert [(s.first_seq, s.last_seq) for s in first] == [(1, 6), (7, 10)]
        second = await archive(reader, archived, signer=signer, signer_name="ledger", through=20)
        assert [(s.first_seq, s.last_seq) for s in second] == [(11, 20)]  # chains from the last segment's head

        assert await purge_archived(reader, archived, through=20, needs=await consumer_needs(reader)) == 21
        assert await reader.span() == (21, 30)
        with pytest.raises(ArchiveError, match="no segment holds"):
            await purge_archived(reader, archived, through=25)
        async with asyncio.timeout(10):
            assert await reader.first_stored_at(time.time_ns() + 10**10) == 31

        across = await verify_archive(archived, reader=reader)
        assert across.ok, across.breaks
        assert (across.first_seq, across.last_seq, across.verified) == (1, 30, 30)
        alone = await verify_archive(archived)
        assert alone.ok and alone.last_seq == 20, alone.breaks
        messages, _, _ = await load_across(archived, reader)
        assert [m.seq for m in messages] == list(range(1, 31))

        middle = segments(archived)[1]
        path = middle.path / "messages.msgpack"
        entries = msgspec.msgpack.decode(path.read_bytes(), type=list[BundleEntry])
        changed = msgspec.structs.replace(entries[1], body=entries[1].body.replace(b"bob", b"eve"))
        path.write_bytes(msgspec.msgpack.encode([entries[0], changed, *entries[2:]]))
        tampered = await verify_archive(archived, reader=reader)
    assert not tampered.ok
    assert tampered.first_break is not None and tampered.first_break.seq == 8
    named = [b for b in tampered.breaks if middle.first_seq <= b.seq <= middle.last_seq]
    assert named and all(middle.name in b.detail for b in named), tampered.breaks
    assert any("end checkpoint" in b.detail for b in named)  # the signed head no longer matches its messages


async def test_a_purge_that_would_cut_what_a_coordinator_snapshot_needs_is_refused(
    purgeable: Tenant, tmp_path: Path
) -> None:
    tenant, archived = purgeable, tmp_path / "archive"
    await tenant.add("c1", role="coordinator")
    await tenant.add("bob")
    signer = await tenant.add("ledger", role="ledger")
    alice, coordinator_bus = await tenant.bus("alice"), await tenant.bus("c1")
    async with running(coordinator_bus) as coordinator:
        sent = [event_of(alice, "bob", correlation_in_partition_0(alice)) for _ in range(4)]
        for envelope in sent[:2]:
            await alice.publish(alice.outbox(envelope), alice.seal(envelope))
            await decided(tenant, alice, envelope.id)
        assert await coordinator.log.snapshot()
        covered = coordinator.state.last_seq
        for envelope in sent[2:]:
            await alice.publish(alice.outbox(envelope), alice.seal(envelope))
            await decided(tenant, alice, envelope.id)
    async with await TenantStream.connect([tenant.url], tenant.name) as reader:
        _, last = await reader.span()
        await archive(reader, archived, signer=signer, signer_name="ledger", through=last)
        needs = [Need(seq, who) for seq, who in await retention_needs(reader)]
        assert min(n.from_seq for n in needs) == covered + 1
        with pytest.raises(ArchiveError, match=f"snapshot of partition 0 covers its decisions through {covered}"):
            await purge_archived(reader, archived, through=last, needs=needs)
        with pytest.raises(ArchiveError, match="consumer in-bob has not settled what it reads from 1"):
            await purge_archived(reader, archived, through=covered, needs=[*needs, *await consumer_needs(reader)])
        assert (await reader.span())[0] == 1  # nothing was purged


async def test_a_stream_that_denies_purges_keeps_its_history_and_says_why(tenant: Tenant, tmp_path: Path) -> None:
    signer = await tenant.add("ledger", role="ledger")
    await _sent(await tenant.bus("alice"), 3)
    async with await TenantStream.connect([tenant.url], tenant.name) as reader:
        await archive(reader, tmp_path, signer=signer, signer_name="ledger", through=3)
        with pytest.raises(ArchiveError, match="init --purgeable"):
            await purge_archived(reader, tmp_path, through=3)
        assert await reader.span() == (1, 3)
        assert (await verify_archive(tmp_path, reader=reader)).ok


async def test_a_forged_archive_breaks_at_the_live_streams_first_checkpoint(purgeable: Tenant, tmp_path: Path) -> None:
    """An admin holding a ledger seed signs segments of another history and purges the real one: the checkpoint
    the live stream kept states a head that history cannot compute."""
    tenant, real, forged = purgeable, tmp_path / "real", tmp_path / "forged"
    signer = await tenant.add("ledger", role="ledger")
    await _sent(await tenant.bus("alice"), 12)
    async with await TenantStream.connect([tenant.url], tenant.name) as reader:
        await archive(reader, real, signer=signer, signer_name="ledger", through=10)
        honest = await verify_archive(real, reader=reader)
        stated = sign_checkpoint(tenant.name, signer, "ledger", through_seq=12, head=honest.head)
        await tenant.js.publish(subjects.checkpoint(tenant.name), stated.body, headers=stated.headers)  # seq 13
        await purge_archived(reader, real, through=10)

        bundle = read_bundle(segments(real)[0].path)
        entries, head = [], GENESIS
        for e in bundle.entries:  # message 7 swapped for a checkpoint the forger can sign, the rest re-chained
            if e.seq == 7:
                swap = sign_checkpoint(tenant.name, signer, "ledger", through_seq=6, head=head)
                e = BundleEntry(7, subjects.checkpoint(tenant.name), e.stored_ns, swap.headers, swap.body, b"")
            head = chain_hash(head, e.seq, e.subject, e.headers, e.body)
            entries.append(msgspec.structs.replace(e, chain=head))
        copy = signed_bundle(tenant.name, str(bundle.manifest["admin_key"]), entries, bundle.keyring_revisions,
                             first=1, head=head, previous=GENESIS, signer=signer, name="ledger")  # fmt: skip
        write_bundle(forged / "000000000001-000000000010", copy)

        assert (await verify_archive(real, reader=reader)).ok
        alone = await verify_archive(forged)
        assert alone.ok, alone.breaks  # a forged archive holds by itself
        across = await verify_archive(forged, reader=reader)
    assert [(b.seq, b.reason) for b in across.breaks] == [(13, "checkpoint")], across.breaks


async def test_purges_are_decided_when_the_stream_is_made(tenant: Tenant, purgeable: Tenant) -> None:
    with pytest.raises(ConfigError, match="cannot lift that"):
        await provision(tenant.js, tenant.name, admin_key_id=tenant.admin.key_id, purgeable=True)
    again = await provision(purgeable.js, purgeable.name, admin_key_id=purgeable.admin.key_id)
    assert again.updated == [] and not (await purgeable.js.stream_info(f"TB_{purgeable.name}")).config.deny_purge
