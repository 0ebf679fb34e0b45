"""Readers trust signatures, not subjects: an empty message on any subject or key is foreign, recorded once.

What the reply-subject attack stored (the server's empty status answer on a
tenant subject or KV key) is planted here with the admin connection, on every
subject class and KV key class. Each reader (coordinator, agent runtime and its
checkpoint, memory, partition leases, keyring, ledger service, verify) carries
on; the stream messages are each recorded once as ``foreign`` by the reader of
their subject, as are the KV values an agent or the coordinator read; legitimate
traffic still flows and `ledger verify` stays ok with the rejections counted.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from tests.e2e.fleet import Fleet, as_records
from tests.e2e.test_approvals import cli
from tests.e2e.test_ledger_service import settled, start_ledger
from trustbus._supervisor import Process
from trustbus.agents._signed_value import open_holder
from trustbus.bus import (
    KeyringStore,
    QuarantineRecord,
    decode_envelope,
    decode_memory_value,
    subjects,
    tail,
)
from trustbus.bus._rejections import decode_quarantine_payload
from trustbus.bus._stored import unix_ns

POLICY = {"rules": [{"from": "*", "to": ["*"], "kinds": ["event", "reply"]}]}


async def _records(fleet: Fleet, done: object, *, limit_s: float = 60) -> list[QuarantineRecord]:
    """Verified quarantine records (anything unverified there is skipped), until ``done(records)``."""
    js = fleet.nc.jetstream()
    found: list[QuarantineRecord] = []

    async def follow() -> None:
        async with await KeyringStore.open(js, fleet.tenant) as keyring:
            async for item in tail(js, keyring, fleet.tenant, subject=subjects.quarantine(fleet.tenant)):
                if item.opened is not None:
                    payload = decode_quarantine_payload(item.opened.envelope.payload)
                    found.extend(await as_records(js, fleet.tenant, payload))  # a summary: each it lists
                    if done(found):  # type: ignore[operator]
                        return

    await asyncio.wait_for(follow(), limit_s)
    return found


async def _replies(fleet: Fleet, to: str, count: int, *, limit_s: float = 60) -> list[dict[str, object]]:
    """The payloads of the first ``count`` replies delivered to ``to``'s inbox."""
    js = fleet.nc.jetstream()
    sub = await js.subscribe(subjects.inbox(fleet.tenant, to), stream=f"TB_{fleet.tenant}", ordered_consumer=True)
    replies: list[dict[str, object]] = []
    try:
        while len(replies) < count:
            envelope = decode_envelope((await sub.next_msg(timeout=limit_s)).data)
            if envelope.kind == "reply":
                replies.append(json.loads(envelope.payload))
    finally:
        await sub.unsubscribe()
    return replies


async def _memory_value(fleet: Fleet, agent: str, key: str, *, limit_s: float = 60) -> object:
    """The first value the coordinator stores at ``agent``'s ``key`` (anything else there is skipped)."""
    bucket = subjects.memory_bucket(fleet.tenant)
    js = fleet.nc.jetstream()
    sub = await js.subscribe(f"$KV.{bucket}.{agent}.{key}", stream=f"KV_{bucket}", ordered_consumer=True)
    try:
        while True:
            data = (await sub.next_msg(timeout=limit_s)).data
            if data:
                return json.loads(decode_memory_value(data).value)
    finally:
        await sub.unsubscribe()


async def _fleet_at_work(fleet: Fleet, data: Path) -> tuple[Process, object]:
    await start_ledger(fleet, data, "--checkpoint-every", "5", "--checkpoint-seconds", "0.5")
    await fleet.coordinator(POLICY)
    counter = await fleet.agent("tests.e2e.fleet_agents:Counter", "counter")
    alice = await fleet.bus("alice")
    await fleet.send(alice, ["counter"], {"n": 1})
    assert await _replies(fleet, "alice", 1) == [{"number": 1}]
    return counter, alice


async def test_empty_messages_on_every_subject_and_key_are_recorded_once_as_foreign_and_readers_carry_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    counter, alice = await _fleet_at_work(fleet, tmp_path / "projection")
    js, t = fleet.nc.jetstream(), fleet.tenant
    memory, coord = subjects.memory_bucket(t), subjects.coordinator_bucket(t)
    stored = await js.subscribe(f"$KV.{memory}.counter.checkpoint", stream=f"KV_{memory}", ordered_consumer=True)
    await stored.next_msg(timeout=30)  # the counter's checkpoint is stored: the foreign value lands after it
    await stored.unsubscribe()
    planted = {
        name: (await js.publish(subject, b"")).seq
        for name, subject in {
            "decision": subjects.decision(t, 0),
            "approval": subjects.approval(t, 0),
            "inbox": subjects.inbox(t, "counter"),
            "topic": subjects.topic(t, "news"),
            "outbox": subjects.outbox(t, "counter", 0),
            "effect": subjects.effect_record(t, "counter", 0, "k1"),
            "checkpoint": subjects.checkpoint(t),
            "quarantine": subjects.quarantine(t),
        }.items()
    }
    keys = {
        "memory key": f"$KV.{memory}.recall.notes",
        "checkpoint key": f"$KV.{memory}.counter.checkpoint",
        "lease key": f"$KV.{coord}.partition-0",
        "keyring key": f"$KV.{subjects.keyring_bucket(t)}.{fleet.keys.load(t, 'counter').key_id}",
    }
    for subject in keys.values():
        await js.publish(subject, b"")

    # The agent restarts on the foreign checkpoint (it starts without it), and still answers.
    counter.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    await counter.exited()  # type: ignore[attr-defined]
    await fleet.agent("tests.e2e.fleet_agents:Counter", "counter")
    await fleet.send(alice, ["counter"], {"n": 2})  # type: ignore[arg-type]
    assert (await _replies(fleet, "alice", 2))[-1] == {"number": 1}  # counted again from nothing, not crashed

    expected_seqs = set(planted.values())
    # The agent reads a foreign memory value as nothing at its revision, and writes over it.
    await fleet.agent("tests.e2e.fleet_agents:Recall", "recall")
    await fleet.send(alice, ["recall"], {"verb": "remember", "key": "notes", "value": "gold"})  # type: ignore[arg-type]
    assert await _memory_value(fleet, "recall", "notes") == "gold"

    expected_keys = {keys["memory key"], keys["checkpoint key"], keys["lease key"]}

    def all_in(records: list[QuarantineRecord]) -> bool:
        foreign = [r for r in records if r.reason == "foreign"]
        return {r.stream_seq for r in foreign} >= expected_seqs and {r.subject for r in foreign} >= expected_keys

    records = [r for r in await _records(fleet, all_in) if r.reason == "foreign"]
    in_stream = [r.stream_seq for r in records if r.stream_seq is not None]
    assert sorted(in_stream) == sorted(expected_seqs)  # each recorded once, by the reader of its subject
    assert sorted(r.subject for r in records if r.stream_seq is None) == sorted(expected_keys)

    # The lease was written over by its holder, the keyring still verifies the agent, traffic flows.
    lease = await js.get_last_msg(f"KV_{coord}", keys["lease key"])
    assert lease.time is not None
    async with await KeyringStore.open(js, t, follow=False) as keyring:
        holder = open_holder(
            lease.data or b"", keyring=keyring.keyring, key="partition-0", stored_ns=unix_ns(lease.time)
        )
    assert holder.name == "coordinator"
    await fleet.send(alice, ["counter"], {"n": 3})  # type: ignore[arg-type]
    assert (await _replies(fleet, "alice", 3))[-1] == {"number": 2}

    await settled(fleet, tmp_path / "projection")
    rc, out, _ = await cli(fleet, "ledger", "verify", "-t", t, "--json")
    report = json.loads(out.splitlines()[-1])
    assert rc == 0 and report["ok"], report
    assert report["recorded_rejections"] == len(planted), report
    rc, out, err = await cli(fleet, "tail", "-t", t, "--idle-timeout", "2", "--json")
    shown = [json.loads(line) for line in out.splitlines()]
    assert rc == 0, err
    assert sorted(i["seq"] for i in shown if i.get("reason") == "foreign") == sorted(expected_seqs)


async def test_without_foreign_messages_nothing_is_recorded_as_foreign(fleet: Fleet, tmp_path: Path) -> None:
    """The twin: the same fleet and traffic, nothing planted."""
    counter, alice = await _fleet_at_work(fleet, tmp_path / "projection")
    counter.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    await counter.exited()  # type: ignore[attr-defined]
    await fleet.agent("tests.e2e.fleet_agents:Counter", "counter")
    await fleet.send(alice, ["counter"], {"n": 2})  # type: ignore[arg-type]
    assert (await _replies(fleet, "alice", 2))[-1] == {"number": 2}  # counted on from its checkpoint
    await settled(fleet, tmp_path / "projection")
    rc, out, _ = await cli(fleet, "ledger", "verify", "-t", fleet.tenant, "--json")
    report = json.loads(out.splitlines()[-1])
    assert rc == 0 and report["ok"] and report["recorded_rejections"] == 0, report
