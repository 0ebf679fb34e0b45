"""Tampered copies of a real exported bundle: every checkpoint checked, the tail and head anchored, excuses bound.

The bundle is made by real components against a real nats-server: agents'
traffic with a forgery a reader quarantined, the ledger service's periodic
checkpoints, and ``export_bundle`` signing the export checkpoint with a ledger key.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.conftest import Tenant
from tests.integration.test_ledger_verify import _history
from trustbus.bus import TenantStream, decode_checkpoint, decode_envelope, new_envelope, subjects
from trustbus.ledger import (
    GENESIS,
    BundleEntry,
    chain_hash,
    export_bundle,
    read_bundle,
    read_stream,
    verify_bundle,
    verify_messages,
    verify_stream,
)
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._projector import Position
from trustbus.ledger._segments import SegmentStore
from trustbus.ledger._service import LedgerService, ServiceSettings


async def _checkpointed(tenant: Tenant, data: Path) -> None:
    """Run the ledger service until a checkpoint states the last sequence stored before it started."""
    last = (await tenant.js.stream_info(subjects.stream_name(tenant.name))).state.last_seq
    ledger = await tenant.bus("ledger")
    stated: asyncio.Queue[int] = asyncio.Queue()

    async def on_checkpoint(msg: object) -> None:
        stated.put_nowait(decode_checkpoint(decode_envelope(msg.data).payload).through_seq)  # type: ignore[attr-defined]

    sub = await tenant.nc.subscribe(subjects.checkpoint(tenant.name), cb=on_checkpoint)
    settings = ServiceSettings(checkpoint_every=7, checkpoint_seconds=0.2, flush_messages=7, flush_seconds=0.05)
    service = LedgerService(ledger, SegmentStore.open(data, tenant.name), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(30):
            while await stated.get() < last:
                pass
    finally:
        stop.set()
        await task
        service.store.close()
        await sub.unsubscribe()


@pytest.fixture
async def history(tenant: Tenant, tmp_path: Path) -> Tenant:
    """Twenty-one envelopes (one forged and quarantined), a checkpoint, five more, another checkpoint, three more."""
    await _history(tenant)
    await tenant.add("ledger", role="ledger")
    await _checkpointed(tenant, tmp_path / "ledger-data")
    alice = await tenant.bus("alice")
    for i in range(5):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"more %d" % i)
        await alice.publish(subjects.outbox(tenant.name, "alice", 0), alice.seal(env))
    await _checkpointed(tenant, tmp_path / "ledger-data")
    for i in range(3):  # a tail no periodic checkpoint covers: only the export checkpoint will
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"tail %d" % i)
        await alice.publish(subjects.outbox(tenant.name, "alice", 0), alice.seal(env))
    return tenant


async def _export(tenant: Tenant, out: Path, *, from_seq: int = 1) -> Path:
    await export_bundle(
        TenantStream(tenant.js, tenant.name),
        out,
        signer=tenant.identities["ledger"],
        signer_name="ledger",
        from_seq=from_seq,
    )
    return out


@pytest.fixture
async def bundle(history: Tenant, tmp_path: Path) -> Path:
    return await _export(history, tmp_path / "bundle")


def _copy(directory: Path, change: Callable[[list[BundleEntry]], object], *, rechain: bool = True) -> Path:
    """A copy of the bundle with its messages changed, renumbered, re-chained and its manifest rewritten to match."""
    copy = directory.parent / f"tampered-{len(list(directory.parent.iterdir()))}"
    shutil.copytree(directory, copy)
    bundle = read_bundle(copy)
    entries = bundle.entries
    change(entries)
    if rechain:
        first = int(str(bundle.manifest["first_seq"]))
        head = GENESIS
        for i, e in enumerate(entries):
            head = chain_hash(head, first + i, e.subject, e.headers, e.body)
            entries[i] = msgspec.structs.replace(e, seq=first + i, chain=head)
    (copy / "messages.msgpack").write_bytes(msgspec.msgpack.encode(entries))
    manifest = {**bundle.manifest, "last_seq": entries[-1].seq, "count": len(entries), "head": entries[-1].chain.hex()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _checkpoints(directory: Path) -> list[tuple[int, int]]:
    """(stored at, states) of every checkpoint message in the bundle."""
    bundle = read_bundle(directory)
    subject = subjects.checkpoint(str(bundle.manifest["tenant"]))
    return [
        (e.seq, decode_checkpoint(decode_envelope(e.body).payload).through_seq)
        for e in bundle.entries
        if e.subject == subject
    ]


async def test_an_untouched_exported_bundle_is_covered_by_signatures_to_its_last_sequence(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.ok, report.breaks
    assert report.covered == (1, report.last_seq) and report.uncovered is None
    assert report.checkpoints == len(_checkpoints(bundle)) >= 2 and report.recorded_rejections == 1
    assert [a["holds"] for a in report.anchors] == [True] and "export checkpoint" in str(report.anchors[0]["source"])
    assert report.admin_key_pinned is False


async def test_messages_deleted_and_renumbered_before_the_last_checkpoint_break_at_that_checkpoint(
    bundle: Path,
) -> None:
    """The issue's attack: cut two messages, renumber, re-chain; the last checkpoint now states a later sequence."""
    stored, states = _checkpoints(bundle)[-1]
    assert states == stored - 1

    def cut_two(entries: list[BundleEntry]) -> None:
        del entries[stored - 3 : stored - 1]

    report = verify_bundle(_copy(bundle, cut_two))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (stored - 2, "checkpoint")
    assert "not before it" in report.first_break.detail


async def test_a_checkpoint_stating_a_sequence_the_run_cannot_check_is_a_break(history: Tenant) -> None:
    """A checkpoint whose sequence has no known head in the run is a break, never skipped and counted."""
    messages = await read_stream(TenantStream(history.js, history.name))
    head = GENESIS
    for m in messages[:5]:
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
    ledger = await history.bus("ledger")
    old = checkpoint_envelope(history.name, "ledger", Position(last_seq=5, head=head, count=5))
    stored = (await ledger.publish(subjects.checkpoint(history.name), ledger.seal(old))).seq
    assert (await verify_stream([history.url], history.name, from_seq=10)).ok  # the twin: the head of 5 is known
    messages = await read_stream(TenantStream(history.js, history.name))
    previous = GENESIS
    for m in messages[:9]:
        previous = chain_hash(previous, m.seq, m.subject, m.headers, m.body)
    report = verify_messages(messages[9:], history.keyring.keyring, history.name, first_seq=10, previous=previous)
    assert [(b.seq, b.reason) for b in report.breaks] == [(stored, "checkpoint")]
    assert "outside what this run can check" in report.breaks[0].detail


async def test_a_tail_cut_off_with_its_export_checkpoint_removed_is_unanchored_from_the_last_signed_head(
    bundle: Path,
) -> None:
    _, states = _checkpoints(bundle)[-1]
    copy = _copy(bundle, lambda entries: entries.pop(), rechain=False)
    (copy / "end.checkpoint").unlink()
    report = verify_bundle(copy)
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (states + 1, "unanchored")
    assert report.covered == (1, states) and report.uncovered == (states + 1, report.last_seq)


async def test_a_tail_cut_off_under_its_export_checkpoint_is_truncated_at_the_first_missing_sequence(
    bundle: Path,
) -> None:
    last = read_bundle(bundle).entries[-1].seq
    report = verify_bundle(_copy(bundle, lambda entries: entries.pop(), rechain=False))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (last, "truncated")


async def test_a_head_cut_off_and_rechained_from_zero_is_unanchored_at_its_new_first_sequence(bundle: Path) -> None:
    def drop_three(entries: list[BundleEntry]) -> None:
        del entries[:3]

    copy = _copy(bundle, drop_three, rechain=False)
    head, fixed = GENESIS, []
    for e in read_bundle(copy).entries:
        head = chain_hash(head, e.seq, e.subject, e.headers, e.body)
        fixed.append(msgspec.structs.replace(e, chain=head))
    (copy / "messages.msgpack").write_bytes(msgspec.msgpack.encode(fixed))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "first_seq": 4, "head": head.hex()}))
    report = verify_bundle(copy)
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (4, "unanchored")
    assert report.covered is None


async def test_an_honest_partial_bundle_verifies_from_its_start_checkpoint(history: Tenant, tmp_path: Path) -> None:
    partial = await _export(history, tmp_path / "partial", from_seq=12)
    manifest = read_bundle(partial).manifest
    first = int(str(manifest["first_seq"]))
    assert 1 < first <= 12 and (partial / "start.checkpoint").exists()
    report = verify_bundle(partial)
    assert report.ok, report.breaks
    assert report.covered == (first, report.last_seq)
    (partial / "start.checkpoint").unlink()
    report = verify_bundle(partial)
    assert report.first_break is not None and report.first_break.seq == first
    assert ("unanchored", first) in [(b.reason, b.seq) for b in report.breaks]


async def test_an_outside_anchor_must_match_and_be_reached(bundle: Path, history: Tenant, tmp_path: Path) -> None:
    """An auditor's kept head (SEQ:HEAD or a later export's checkpoint file) catches a bundle that stops short."""
    entries = read_bundle(bundle).entries
    at = entries[9]
    assert verify_bundle(bundle, expect=[f"{at.seq}:{at.chain.hex()}"]).ok
    wrong = verify_bundle(bundle, expect=[f"{at.seq}:{'00' * 32}"])
    assert wrong.first_break is not None and (wrong.first_break.seq, wrong.first_break.reason) == (at.seq, "anchor")
    later_alice = await history.bus("alice")
    env = new_envelope(tenant=history.name, kind="event", sender="alice", to=["bob"], payload=b"later")
    await later_alice.publish(subjects.outbox(history.name, "alice", 0), later_alice.seal(env))
    later = await _export(history, tmp_path / "later")
    kept = tmp_path / "kept.checkpoint"
    shutil.copy(later / "end.checkpoint", kept)
    assert verify_bundle(later, expect=[str(kept)]).ok
    short = verify_bundle(bundle, expect=[str(kept)])
    assert short.first_break is not None
    assert (short.first_break.seq, short.first_break.reason) == (entries[-1].seq + 1, "truncated")


async def test_a_quarantined_message_replaced_by_other_bytes_is_no_longer_excused(bundle: Path) -> None:
    """The quarantine record binds the refused message's subject and body hash, not only its sequence."""
    forged = 11  # _history's forgery, refused and quarantined by a reader
    assert "out.alice" in read_bundle(bundle).entries[forged - 1].subject
    assert verify_bundle(bundle).recorded_rejections == 1

    def forge_a_decision(entries: list[BundleEntry]) -> None:
        e = entries[forged - 1]
        fields = msgspec.msgpack.decode(e.body)
        fields["kind"] = "decision"
        tenant = fields["tenant"]
        entries[forged - 1] = msgspec.structs.replace(
            e, subject=subjects.decision(tenant, 0), body=msgspec.msgpack.encode(fields)
        )

    report = verify_bundle(_copy(bundle, forge_a_decision))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (forged, "bad_signature")

    def move_it(entries: list[BundleEntry]) -> None:
        e = entries[forged - 1]
        entries[forged - 1] = msgspec.structs.replace(e, subject=subjects.decision(str(e.subject.split(".")[1]), 0))

    report = verify_bundle(_copy(bundle, move_it))
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.reason) == (forged, "bad_signature")
