"""`trustbus ledger run` as a real process: projection, restarts after SIGKILL, queries while it writes, checkpoints.

A coordinator process mediates the traffic (decisions, deliveries, a
quarantined forgery); effect records and a memory write are published by the
agent's own connection. The ledger service projects all of it into Parquet
segments that the test process queries while the service runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js.api import AckPolicy

from tests.e2e.fleet import Fleet
from tests.processes import TRUSTBUS, one_shot_async
from trustbus._supervisor import Process
from trustbus.bus import (
    Bus,
    EffectRecord,
    TenantStream,
    encode_effect,
    new_envelope,
    subjects,
)
from trustbus.ledger import GENESIS, ProjectionError, chain_hash, query, read_stream, verify_stream
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._projector import Position
from trustbus.ledger._segments import read_catalogue

POLICY = {"rules": [{"from": "*", "to": ["*", "topic:*"], "kinds": ["event", "reply"]}]}


async def until(check: Callable[[], Awaitable[object]], *, limit_s: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + limit_s
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)
    return result


async def start_ledger(fleet: Fleet, data: Path, *extra: str) -> Process:
    if not fleet.keys.path(fleet.tenant, "ledger").exists():
        await fleet.key("ledger", role="ledger")
    return await fleet.spawn("ledger", "run", "-t", fleet.tenant, "--data", str(data), *extra)


async def stream_last_seq(fleet: Fleet) -> int:
    return int((await fleet.nc.jetstream().stream_info(f"TB_{fleet.tenant}")).state.last_seq)


async def settled(fleet: Fleet, data: Path, *, limit_s: float = 30) -> int:
    """Wait until the projection has everything in the stream and its last checkpoint has landed."""

    async def caught_up() -> int | None:
        try:
            catalogue = read_catalogue(data)
        except ProjectionError:
            return None
        last = await stream_last_seq(fleet)
        done = catalogue.last_seq == last and catalogue.since_checkpoint == 0
        return last if done else None

    return int(str(await until(caught_up, limit_s=limit_s, what="the projection to settle")))


async def traffic(fleet: Fleet, alice: Bus, n: int, *, start: int = 0) -> list[str]:
    """``n`` events from alice to bob and carol (each accepted: a decision and two deliveries)."""
    return [await fleet.send(alice, ["bob", "carol"], {"i": i}) for i in range(start, start + n)]


async def forge(fleet: Fleet, alice: Bus) -> None:
    """An envelope in alice's outbox with one payload byte flipped after signing: the coordinator quarantines it."""
    sealed = alice.seal(new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["bob"], payload=b'"42"'))
    body = bytearray(sealed.body)
    body[body.rindex(b"42")] ^= 0x01
    await fleet.nc.jetstream().publish(subjects.outbox(fleet.tenant, "alice", 0), bytes(body), headers=sealed.headers)


async def effect(fleet: Fleet, alice: Bus, phase: str, *, correlation_id: str) -> None:
    record = EffectRecord(
        phase=phase, tool="refund", idempotency_key="k1", args=b"{}", result=b"{}" if phase == "completed" else None,
        effect_class="reversible", compensating_tool="charge",
    )  # fmt: skip
    envelope = new_envelope(
        tenant=fleet.tenant, kind="effect", sender="alice", to=(), payload=encode_effect(record),
        content_type="application/msgpack", correlation_id=correlation_id,
    )  # fmt: skip
    await alice.publish(subjects.effect_record(fleet.tenant, "alice", 0, "k1"), alice.seal(envelope))


async def memory_write(fleet: Fleet, alice: Bus) -> str:
    payload = {"key": "tier", "value": "gold", "expected_revision": 0}
    return await fleet.send(alice, ["alice"], payload, kind="memory_write")


def one(sql: str, data: Path) -> tuple[object, ...]:
    (row,) = query(sql, data).fetchall()
    return row


async def test_projection_survives_sigkill_with_no_duplicate_no_gap_and_a_continuous_chain(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = tmp_path / "projection"
    await fleet.coordinator(POLICY)
    alice = await fleet.bus("alice")
    ledger = await start_ledger(fleet, data, "--checkpoint-every", "20", "--checkpoint-seconds", "0.3")
    first = await traffic(fleet, alice, 15)
    await forge(fleet, alice)
    await effect(fleet, alice, "requested", correlation_id=first[0])
    await effect(fleet, alice, "completed", correlation_id=first[0])
    await memory_write(fleet, alice)

    async def committed_some() -> bool:  # and a checkpoint of this first run published, whatever the timing
        try:
            catalogue = read_catalogue(data)
        except ProjectionError:
            return False
        return catalogue.last_seq >= 20 and catalogue.since_checkpoint < catalogue.last_seq

    await until(committed_some, what="a first commit after a checkpoint")
    more = asyncio.create_task(traffic(fleet, alice, 80, start=15))
    await asyncio.sleep(0.2)
    ledger.kill()  # SIGKILL, mid-way: traffic is still flowing
    assert await ledger.exited() == -signal.SIGKILL
    killed_at = read_catalogue(data).last_seq
    await more
    await start_ledger(fleet, data, "--checkpoint-every", "20", "--checkpoint-seconds", "0.3")
    await traffic(fleet, alice, 5, start=95)
    last = await settled(fleet, data)
    assert last > killed_at

    # Every stream message projected exactly once, in order, with the chain recomputed from the stream.
    assert one("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes", data) == (
        last, last, 1, last,
    )  # fmt: skip
    head = GENESIS
    for m in await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant)):
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
    assert one(f"SELECT chain FROM envelopes WHERE seq = {last}", data) == (head.hex(),)
    assert read_catalogue(data).head == head.hex()
    for table, key in [("decisions", "decision_id"), ("effects", "seq"), ("quarantine", "seq"), ("checkpoints", "seq")]:
        total, distinct = one(f"SELECT count(*), count(DISTINCT {key}) FROM {table}", data)
        assert total == distinct, table

    # The checkpoints of both runs hold, against the projection and against an independent verification.
    checkpoints, holding = one("SELECT count(*), count(*) FILTER (WHERE holds) FROM checkpoint_checks", data)
    assert checkpoints >= 2 and holding == checkpoints
    report = await verify_stream([fleet.url], fleet.tenant)
    assert report.ok, report.breaks
    assert report.checkpoints == checkpoints and report.recorded_rejections == 1

    # The views.
    assert one(f"SELECT sent, deliveries, recipients, fanout FROM fanout_per_correlation "
               f"WHERE correlation_id = '{first[3]}'", data) == (1, 2, 2, 2.0)  # fmt: skip
    sent, accepted, rejected, quarantined = one(
        "SELECT sent, accepted, rejected, quarantined FROM activity_per_agent WHERE agent = 'alice'", data
    )
    assert (sent, accepted, rejected, quarantined) == (101, 101, 0, 1)  # 100 events, 1 memory write; the forgery
    assert one("SELECT received FROM activity_per_agent WHERE agent = 'bob'", data) == (100,)
    reasons = dict(
        ((source, reason), n) for source, reason, n, *_ in query("SELECT * FROM rejections_by_reason", data).fetchall()
    )
    assert reasons == {("ledger", "bad_signature"): 1, ("quarantine", "bad_signature"): 1}
    assert one("SELECT calls, completed, failed, open, agents FROM effects_per_tool WHERE tool = 'refund'", data) == (
        1, 1, 0, 0, 1,
    )  # fmt: skip
    assert one("SELECT agent, key, expected_revision, verdict FROM memory_writes", data) == (
        "alice",
        "tier",
        0,
        "accept",
    )
    assert one("SELECT count(*) FROM keys WHERE role = 'ledger'", data) == (1,)


async def test_queries_run_while_the_service_writes(fleet: Fleet, tmp_path: Path) -> None:
    data = tmp_path / "projection"
    await fleet.coordinator(POLICY)
    alice = await fleet.bus("alice")
    ledger = await start_ledger(fleet, data, "--checkpoint-every", "5", "--checkpoint-seconds", "0.1")
    seen: list[int] = []
    slowest = 0.0
    for wave in range(5):  # each wave sent once the last is projected: a count per wave, however slow the machine
        await traffic(fleet, alice, 30, start=30 * wave)
        sent = await stream_last_seq(fleet)
        while True:  # read while the service projects the wave
            try:
                caught_up = read_catalogue(data).last_seq >= sent
                started = time.perf_counter()
                (count,) = one("SELECT count(*) FROM envelopes", data)
                slowest = max(slowest, time.perf_counter() - started)
            except ProjectionError:  # not committed anything yet
                await asyncio.sleep(0.01)
                continue
            seen.append(int(str(count)))
            if caught_up:
                break
            await asyncio.sleep(0.01)
    last = await settled(fleet, data)
    assert seen == sorted(seen) and len(set(seen)) >= 5, seen  # the counts grew while we read
    assert slowest < 2.0
    # The command line reads the same projection while the service still runs.
    query = ("query", "SELECT count(*) AS n FROM envelopes", "--data", str(data), "--json")
    cli = await one_shot_async([*TRUSTBUS, *query], env=fleet.env)
    assert cli.returncode == 0 and json.loads(cli.stdout) == {"n": last}
    ledger.send_signal(signal.SIGTERM)
    assert await ledger.exited(15) == 0
    assert read_catalogue(data).last_seq == last


async def verify_cli(fleet: Fleet) -> tuple[int, dict[str, object]]:
    verified = await one_shot_async([*TRUSTBUS, "ledger", "verify", "-t", fleet.tenant, "--json"], env=fleet.env)
    return verified.returncode, json.loads(verified.stdout)


async def test_ledger_verify_checks_the_services_checkpoints_and_catches_a_forged_head(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = tmp_path / "projection"
    await fleet.coordinator(POLICY)
    alice = await fleet.bus("alice")
    await start_ledger(fleet, data, "--checkpoint-every", "10", "--checkpoint-seconds", "0.2")
    await traffic(fleet, alice, 10)
    await settled(fleet, data)
    assert one("SELECT count(*) FROM checkpoints", data)[0] >= 1  # type: ignore[operator]
    code, report = await verify_cli(fleet)
    assert code == 0 and report["ok"], report

    # A second, registered ledger key states a wrong head through an existing sequence.
    await fleet.key("ledger2", role="ledger")
    forger = await fleet.bus("ledger2")
    through = await stream_last_seq(fleet)
    lie = checkpoint_envelope(fleet.tenant, "ledger2", Position(last_seq=through, head=b"\x01" * 32, count=through))
    forged_seq = (await forger.publish(subjects.checkpoint(fleet.tenant), forger.seal(lie))).seq
    await settled(fleet, data)
    code, report = await verify_cli(fleet)
    assert code == 1
    assert report["first_break"] == {
        "seq": forged_seq, "reason": "checkpoint", "detail": f"checkpoint through {through} states another chain head",
    }  # fmt: skip
    assert one(f"SELECT holds, signer FROM checkpoint_checks WHERE seq = {forged_seq}", data) == (False, "ledger2")


async def stop(proc: Process) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await proc.exited(15) == 0


async def assert_exact(fleet: Fleet, data: Path, last: int) -> None:
    """Every stream message 1..last projected exactly once, the chain recomputed from the stream."""
    assert one("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes", data) == (
        last, last, 1, last,
    )  # fmt: skip
    head = GENESIS
    for m in await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant)):
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
    assert read_catalogue(data).head == head.hex() and read_catalogue(data).last_seq == last


async def test_the_consumer_is_kept_when_it_agrees_with_the_projection_and_made_anew_when_not(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A clean restart reuses `ledger`; a projection restored from a backup, a delivery taken by another
    client, and the consumer deleted under the running service each make it anew from the right sequence."""
    data, backup = tmp_path / "projection", tmp_path / "backup"
    js = fleet.nc.jetstream()
    stream = f"TB_{fleet.tenant}"
    alice = await fleet.bus("alice")  # no coordinator: alice's outbox is traffic enough
    options = ("--checkpoint-every", "10", "--checkpoint-seconds", "0.2")

    ledger = await start_ledger(fleet, data, *options)
    await traffic(fleet, alice, 10)
    first = await settled(fleet, data)
    await stop(ledger)
    info = await js.consumer_info(stream, "ledger")
    assert info.delivered.stream_seq == info.ack_floor.stream_seq == first and info.num_ack_pending == 0
    assert info.config.ack_policy == AckPolicy.ALL and info.config.filter_subject == f"tb.{fleet.tenant}.>"
    shutil.copytree(data, backup)

    # A clean restart: the consumer is in step with the projection and is kept.
    ledger = await start_ledger(fleet, data, *options)
    await traffic(fleet, alice, 10, start=10)
    await settled(fleet, data)
    await stop(ledger)
    assert (await js.consumer_info(stream, "ledger")).created == info.created
    assert "consumer reset" not in ledger.log.read_text()

    # The projection restored from the backup: the consumer is ahead of it, and made anew from the backup's position.
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    ledger = await start_ledger(fleet, data, *options)
    remade = await js.consumer_info(stream, "ledger")
    assert remade.created != info.created and remade.config.opt_start_seq == first + 1
    await traffic(fleet, alice, 3, start=20)
    await assert_exact(fleet, data, await settled(fleet, data))

    # Another client takes a delivery: the service sees the hole in the delivery sequence and starts over after
    # what it has, so the taken message is read again.
    thief = await js.pull_subscribe_bind("ledger", stream=stream)
    taking = asyncio.create_task(thief.fetch(1, timeout=10))
    await asyncio.sleep(0.2)
    await traffic(fleet, alice, 4, start=23)
    [taken] = await taking
    await thief.unsubscribe()
    await assert_exact(fleet, data, await settled(fleet, data))
    assert one(f"SELECT count(*) FROM envelopes WHERE seq = {taken.metadata.sequence.stream}", data) == (1,)
    assert "delivery out of order" in ledger.log.read_text()

    # The consumer deleted under the running service: it is made again from after the projection's position.
    await js.delete_consumer(stream, "ledger")
    await traffic(fleet, alice, 3, start=27)
    last = await settled(fleet, data)
    await assert_exact(fleet, data, last)
    await stop(ledger)
    assert ledger.log.read_text().count("consumer reset") >= 2  # the restore and the taken delivery

    checkpoints, holding = one("SELECT count(*), count(*) FILTER (WHERE holds) FROM checkpoint_checks", data)
    assert checkpoints >= 4 and holding == checkpoints
    report = await verify_stream([fleet.url], fleet.tenant)
    assert report.ok, report.breaks
