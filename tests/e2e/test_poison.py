"""Deeply nested bodies through every reader, as real processes.

An agent signs, with its own key, envelopes whose JSON or msgpack payload nests
1,000 or 100,000 deep (the 1,000-deep JSON is about 2 KB), and also publishes
such bodies raw into its outbox, not even an envelope. Each is quarantined
alone as ``malformed``, the 40 valid envelopes fetched with them are delivered,
and the ledger service, ``ledger verify``, ``ledger replay`` and ``tail --json``
carry on past them and report them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.fleet import Fleet
from tests.e2e.test_approvals import cli
from tests.e2e.test_ledger_service import one, settled, start_ledger, stream_last_seq
from trustbus.bus import Bus, Envelope, QuarantineRecord, countersign, new_envelope, subjects

POLICY = {
    "rules": [
        {"from": "alice", "to": ["bob"], "kinds": ["instruction"], "verbs": ["lookup"]},
        {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
    ]
}
DEPTHS = (1_000, 100_000)


def poison_payloads() -> list[tuple[str, bytes]]:
    """(content type, payload) nested deep, in JSON and msgpack, at each depth."""
    out: list[tuple[str, bytes]] = []
    for depth in DEPTHS:
        out.append(("application/json", b'{"verb": "lookup", "q": ' + b"[" * depth + b"]" * depth + b"}"))
        out.append(("application/msgpack", b"\x91" * depth + b"\x90"))
    return out


async def publish_poisons(fleet: Fleet, alice: Bus, *, correlation_id: str | None = None) -> int:
    """Every poison, signed by alice into her outbox, and raw (not an envelope); returns how many."""
    count = 0
    for content_type, payload in poison_payloads():
        envelope = new_envelope(
            tenant=fleet.tenant, kind="instruction", sender="alice", to=["bob"], payload=payload,
            content_type=content_type, correlation_id=correlation_id,  # type: ignore[arg-type]
        )  # fmt: skip
        await alice.send(envelope)
        count += 1
    js = fleet.nc.jetstream()
    for depth in DEPTHS:
        await js.publish(subjects.outbox(fleet.tenant, "alice", 0), b"\x91" * depth + b"\x90")
        await js.publish(subjects.outbox(fleet.tenant, "alice", 0), b"[" * depth + b"]" * depth)
        count += 2
    return count


async def publish_poison_effect(fleet: Fleet, alice: Bus, *, correlation_id: str) -> str:
    """A signed effect record whose payload nests 100,000 deep, labelled text/plain so opening it does not look."""
    envelope = new_envelope(
        tenant=fleet.tenant, kind="effect", sender="alice", to=(), payload=b"\x91" * DEPTHS[-1] + b"\x90",
        content_type="text/plain", correlation_id=correlation_id,
    )  # fmt: skip
    await alice.publish(subjects.effect_record(fleet.tenant, "alice", 0, "k1"), alice.seal(envelope))
    return envelope.id


async def malformed_records(fleet: Fleet, n: int) -> list[QuarantineRecord]:
    """The first ``n`` quarantine records with reason ``malformed``, waiting for them."""
    found: list[QuarantineRecord] = []

    def enough(record: QuarantineRecord) -> bool:
        if record.reason == "malformed":
            found.append(record)
        return len(found) == n

    await fleet.quarantined(enough, limit_s=60)
    return found


async def test_deeply_nested_payloads_are_quarantined_alone_and_their_batch_of_forty_is_delivered(
    fleet: Fleet,
) -> None:
    alice = await fleet.bus("alice")
    await fleet.key("bob")
    # Everything is in the outbox before the coordinator starts: its first fetch holds all of it.
    valid = [await fleet.send(alice, ["bob"], {"verb": "lookup", "i": i}, kind="instruction") for i in range(20)]
    poisons = await publish_poisons(fleet, alice)
    valid += [await fleet.send(alice, ["bob"], {"verb": "lookup", "i": i}, kind="instruction") for i in range(20, 40)]
    await fleet.coordinator(POLICY)

    read = await fleet.inbox(lambda read: len(read) >= 40, limit_s=60)
    assert sorted(envelope.id for _, envelope in read) == sorted(valid)
    decisions = await fleet.decisions(lambda ds: len(ds) >= 40, limit_s=60)
    assert {d.envelope_id for d in decisions} == set(valid)
    assert all(d.verdict == "accept" for d in decisions)

    found = [record.detail for record in await malformed_records(fleet, poisons)]
    assert sum("payload: JSON nested deeper than 64 levels" in d for d in found) == 2, found
    assert sum("payload: msgpack nested deeper than 64 levels" in d for d in found) == 2, found
    assert sum(d == "msgpack nested deeper than 4 levels" for d in found) == 2, found  # raw: not even an envelope
    assert all(proc.returncode is None for proc in fleet.procs)  # the coordinator is still up


async def test_valid_nested_payloads_within_the_bound_are_delivered(fleet: Fleet) -> None:
    """The twin: nesting the bound allows (64 levels of JSON and msgpack) goes through."""
    alice = await fleet.bus("alice")
    await fleet.key("bob")
    await fleet.coordinator(POLICY)
    sent = [
        await fleet.send(alice, ["bob"], {"verb": "lookup", "q": json.loads("[" * 63 + "]" * 63)}, kind="instruction"),
    ]
    envelope = new_envelope(
        tenant=fleet.tenant, kind="event", sender="alice", to=["bob"], payload=b"\x91" * 63 + b"\x90",
        content_type="application/msgpack",
    )  # fmt: skip
    await alice.send(envelope)
    sent.append(envelope.id)
    read = await fleet.inbox(lambda read: len(read) == 2, limit_s=60)
    assert sorted(e.id for _, e in read) == sorted(sent)


async def test_ledger_service_verify_replay_and_tail_carry_on_past_poison_messages(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = tmp_path / "projection"
    await fleet.coordinator(POLICY)
    alice = await fleet.bus("alice")
    await fleet.key("bob")
    ledger = await start_ledger(fleet, data, "--checkpoint-every", "20", "--checkpoint-seconds", "0.3")
    first = await fleet.send(alice, ["bob"], {"verb": "lookup", "i": 0}, kind="instruction")
    poisons = await publish_poisons(fleet, alice, correlation_id=first)
    effect = await publish_poison_effect(fleet, alice, correlation_id=first)
    after = await fleet.send(alice, ["bob"], {"verb": "lookup", "i": 1}, kind="instruction", correlation_id=first)
    await fleet.inbox(lambda read: {e.id for _, e in read} >= {first, after}, limit_s=60)
    await malformed_records(fleet, poisons)

    # The ledger service projects past every poison and stays up.
    last = await settled(fleet, data, limit_s=60)
    assert ledger.returncode is None
    assert one("SELECT count(*) FROM envelopes WHERE reject_reason = 'malformed'", data) == (poisons,)
    assert one("SELECT count(*) FROM quarantine WHERE reason = 'malformed'", data) == (poisons,)
    assert one(f"SELECT count(*) FROM envelopes WHERE id IN ('{first}', '{after}') AND verified", data)[0] >= 2
    (record_error,) = one(f"SELECT record_error FROM envelopes WHERE id = '{effect}'", data)
    assert "msgpack nested deeper than 64 levels" in str(record_error)

    code, out, err = await cli(fleet, "ledger", "verify", "-t", fleet.tenant, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], (report, err)
    assert report["recorded_rejections"] >= poisons
    assert report["last_seq"] >= last

    code, out, err = await cli(fleet, "ledger", "replay", "-t", fleet.tenant, "--correlation", first, "--json")
    assert code == 0, err
    assert "Traceback" not in err
    tree = json.dumps(json.loads(out)["tree"])
    assert first in tree and after in tree

    code, out, err = await cli(fleet, "ledger", "rollback", "-t", fleet.tenant, "--correlation", first, "--dry-run")
    assert code == 0, err

    code, out, err = await cli(fleet, "tail", "-t", fleet.tenant, "--json", "--idle-timeout", "3")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, await stream_last_seq(fleet) + 1))
    refused = [line for line in lines if line.get("reason") == "malformed"]
    assert len(refused) == poisons
    # Raw JSON in an outbox is not msgpack at all; every other poison is refused for its depth.
    assert sum("nested deeper than" in line["detail"] for line in refused) == poisons - len(DEPTHS)


async def test_an_agent_runtime_refuses_a_deeply_nested_delivery_alone_even_countersigned(fleet: Fleet) -> None:
    """The coordinator refuses these, so they are put straight into the inbox, countersigned with its key."""
    await fleet.coordinator(POLICY)
    await fleet.agent("tests.e2e.fleet_agents:Recorder", "worker")
    boss = await fleet.bus("boss")
    coordinator = fleet.keys.load(fleet.tenant, "coordinator")
    first = await fleet.send(boss, ["worker"], "first")
    for content_type, payload in poison_payloads():
        envelope = new_envelope(
            tenant=fleet.tenant, kind="event", sender="boss", to=["worker"], payload=payload,
            content_type=content_type,  # type: ignore[arg-type]
        )  # fmt: skip
        sealed = boss.seal(envelope)
        csig = countersign(
            sealed.body, recipient="worker", decision_id="d", effective_taint=(), coordinator=coordinator
        )
        await fleet.nc.jetstream().publish(
            subjects.inbox(fleet.tenant, "worker"), sealed.body, headers={**sealed.headers, **csig}
        )
    after = await fleet.send(boss, ["worker"], "after")

    def done(read: list[tuple[str, Envelope]]) -> set[str]:
        return {r["id"] for to, e in read if to == "boss" and (r := json.loads(e.payload))["event"] == "done"}

    assert await fleet.inbox(lambda read: done(read) >= {first, after}, limit_s=60)
    records = await malformed_records(fleet, len(poison_payloads()))
    assert all("nested deeper than 64 levels" in record.detail for record in records)
    assert {record.subject for record in records} == {subjects.inbox(fleet.tenant, "worker")}
    assert all(proc.returncode is None for proc in fleet.procs)
