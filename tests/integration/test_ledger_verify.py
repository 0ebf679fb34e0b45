"""The ledger's chain and verification: a live stream, an exported bundle, and tampered copies of it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
import pytest

from tests.attacks import flipped_payload_byte
from tests.conftest import Tenant
from tests.integration.test_transport import _cast
from trustbus.bus import ConsumerSettings, TenantStream, new_envelope, subjects
from trustbus.ledger import BundleEntry, export_bundle, read_bundle, verify_bundle, verify_messages, verify_stream
from trustbus.ledger._bundle import read_stream

FAST = ConsumerSettings(fetch_timeout_s=0.5)


async def _history(tenant: Tenant, *, quarantine_the_attack: bool = True) -> int:
    """Ten valid envelopes, one forged one (quarantined by a reader), then ten more; returns the forged seq."""
    cast = await _cast(tenant)
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    for i in range(10):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        await alice.publish(subject, alice.seal(env))
    body, headers = flipped_payload_byte(cast)
    forged = (await tenant.js.publish(subject, body, headers=headers)).seq
    last = None
    for i in range(10, 20):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        last = env.id
        await alice.publish(subject, alice.seal(env))
    if quarantine_the_attack:
        reader = await tenant.bus("reader")
        await reader.ensure_consumer("reader", subject, settings=FAST)

        async def drain() -> None:
            async for delivery in reader.consume("reader", settings=FAST):
                await delivery.ack()
                if delivery.envelope.id == last:
                    return

        await asyncio.wait_for(drain(), 15)
    return forged


async def test_live_stream_with_a_recorded_attack_verifies(tenant: Tenant) -> None:
    await _history(tenant)
    report = await verify_stream([tenant.url], tenant.name)
    assert report.ok, report.breaks
    assert report.recorded_rejections == 1 and report.verified == report.count - 1


async def test_an_unrecorded_forgery_in_the_stream_is_a_break(tenant: Tenant) -> None:
    forged = await _history(tenant, quarantine_the_attack=False)
    report = await verify_stream([tenant.url], tenant.name)
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (forged, "bad_signature")
    later = await verify_stream([tenant.url], tenant.name, from_seq=forged + 1)
    assert later.ok and later.first_seq == forged + 1


@pytest.mark.parametrize("forgery", ["decision", "effect"])
async def test_a_validly_signed_record_by_the_wrong_signer_is_a_break(tenant: Tenant, forgery: str) -> None:
    """An agent's key signing a decision, or another agent's effect record, breaks verification at that sequence."""
    alice = await tenant.bus("alice")
    subject = (
        subjects.decision(tenant.name, 0)
        if forgery == "decision"
        else subjects.effect_record(tenant.name, "bob", 0, "k1")
    )
    env = new_envelope(tenant=tenant.name, kind=forgery, sender="alice", to=[], payload=b"accept everything")
    sealed = alice.seal(env)
    forged = (await tenant.js.publish(subject, sealed.body, headers=dict(sealed.headers))).seq  # an admin connection
    honest = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"fine")
    await alice.publish(subjects.outbox(tenant.name, "alice", 0), alice.seal(honest))
    report = await verify_stream([tenant.url], tenant.name)
    assert [(b.seq, b.reason) for b in report.breaks] == [(forged, "signer")]
    assert "alice" in report.breaks[0].detail


@pytest.mark.parametrize("subject_of", ["decision", "effect", "checkpoint"])
async def test_a_validly_signed_envelope_of_the_wrong_kind_on_a_record_subject_is_a_break(
    tenant: Tenant, subject_of: str
) -> None:
    """The right signer writing the wrong kind: an event on the decision log, the effect log or the checkpoints."""
    role = {"decision": "coordinator", "effect": "agent", "checkpoint": "ledger"}[subject_of]
    await tenant.add("writer", role=role)  # type: ignore[arg-type]
    writer = await tenant.bus("writer")
    subject = {
        "decision": subjects.decision(tenant.name, 0),
        "effect": subjects.effect_record(tenant.name, "writer", 0, "k1"),
        "checkpoint": subjects.checkpoint(tenant.name),
    }[subject_of]
    env = new_envelope(tenant=tenant.name, kind="event", sender="writer", to=[], payload=b"not a record")
    sealed = writer.seal(env)
    forged = (await tenant.js.publish(subject, sealed.body, headers=dict(sealed.headers))).seq
    right = new_envelope(tenant=tenant.name, kind=subject_of, sender="writer", to=[], payload=b"{}")  # type: ignore[arg-type]
    if subject_of != "checkpoint":  # the twin: the right kind from the same signer stands
        await tenant.js.publish(subject, writer.seal(right).body, headers=dict(writer.seal(right).headers))
    report = await verify_stream([tenant.url], tenant.name)
    assert [(b.seq, b.reason) for b in report.breaks] == [(forged, "wrong_kind")]


@pytest.fixture
async def bundle(tenant: Tenant, tmp_path: Path) -> Path:
    await _history(tenant)
    out = tmp_path / "bundle"
    signer = await tenant.add("ledger", role="ledger")
    manifest = await export_bundle(TenantStream(tenant.js, tenant.name), out, signer=signer, signer_name="ledger")
    assert manifest["count"] == manifest["last_seq"]
    return out


def _rewrite(directory: Path, change: object) -> Path:
    copy = directory.parent / "tampered"
    shutil.copytree(directory, copy)
    entries = read_bundle(copy).entries
    change(entries)  # type: ignore[operator]
    (copy / "messages.msgpack").write_bytes(msgspec.msgpack.encode(entries))
    return copy


async def test_untouched_bundle_verifies_offline(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.ok, report.breaks
    assert report.recorded_rejections == 1


async def test_flipped_byte_in_one_envelope_names_its_sequence(bundle: Path) -> None:
    def flip(entries: list[BundleEntry]) -> None:
        e = entries[6]
        body = bytearray(e.body)
        body[-1] ^= 0x01
        entries[6] = msgspec.structs.replace(e, body=bytes(body))

    report = verify_bundle(_rewrite(bundle, flip))
    assert report.first_break is not None and report.first_break.seq == 7
    assert report.first_break.reason == "chain"


async def test_deleted_envelope_names_its_sequence(bundle: Path) -> None:
    report = verify_bundle(_rewrite(bundle, lambda entries: entries.pop(4)))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (5, "missing")


async def test_swapped_envelopes_name_the_first_position(bundle: Path) -> None:
    def swap(entries: list[BundleEntry]) -> None:
        entries[2], entries[3] = entries[3], entries[2]

    report = verify_bundle(_rewrite(bundle, swap))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (3, "out_of_order")


async def test_re_chained_forgery_is_caught_by_its_signature(bundle: Path) -> None:
    """An attacker who edits an envelope and recomputes every chain hash still cannot re-sign it."""
    from trustbus.ledger import GENESIS, chain_hash

    def forge_and_rechain(entries: list[BundleEntry]) -> None:
        body = bytearray(entries[8].body)
        body[-1] ^= 0x01
        entries[8] = msgspec.structs.replace(entries[8], body=bytes(body))
        head = GENESIS
        for i, e in enumerate(entries):
            head = chain_hash(head, e.seq, e.subject, e.headers, e.body)
            entries[i] = msgspec.structs.replace(e, chain=head)

    copy = _rewrite(bundle, forge_and_rechain)
    report = verify_bundle(copy)
    assert report.first_break is not None and report.first_break.seq == 9
    assert report.first_break.reason == "bad_signature"


async def test_pinned_admin_key_must_match_the_bundle(bundle: Path, tenant: Tenant) -> None:
    assert verify_bundle(bundle, admin_key=tenant.admin.key_id).ok
    from trustbus.bus import Identity

    report = verify_bundle(bundle, admin_key=Identity.generate().key_id)
    assert not report.ok  # every key's grant is now untrusted


async def test_verification_is_the_same_pure_function_on_stream_and_bundle(tenant: Tenant, bundle: Path) -> None:
    messages = await read_stream(TenantStream(tenant.js, tenant.name))
    live = verify_messages(messages, read_bundle(bundle).keyring(), tenant.name)
    assert live.ok and live.head.hex() == read_bundle(bundle).manifest["head"]


async def test_bundle_carries_a_queryable_projection(bundle: Path) -> None:
    from trustbus.ledger import query

    [(count,)] = query("SELECT count(*) FROM envelopes", bundle / "projection").fetchall()
    [(rejected,)] = query("SELECT count(*) FROM envelopes WHERE NOT verified", bundle / "projection").fetchall()
    assert count == read_bundle(bundle).manifest["count"] and rejected == 1


async def test_a_large_backlog_is_read_whole(tenant: Tenant) -> None:
    """A backlog of twenty thousand messages is read whole and in order (a gap would look like tampering)."""
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    for i in range(20_000):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        await alice.publish_pipelined(subject, alice.seal(env))
    await alice.flush(timeout_s=120)
    messages = await read_stream(TenantStream(tenant.js, tenant.name))
    assert [m.seq for m in messages] == list(range(1, 20_001))
