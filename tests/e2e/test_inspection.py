"""Inspection commands against a running fleet: `quarantine list` and `tail` filtered by kind, agent, correlation."""

from __future__ import annotations

import json

from tests.e2e.fleet import Fleet
from tests.e2e.test_ledger_service import POLICY, forge
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.bus import KeyringStore, TenantStream, open_envelope, recorded_decisions, subjects
from trustbus.ledger._bundle import read_stream


async def trustbus(fleet: Fleet, *args: str) -> list[dict[str, object]]:
    result = await one_shot_async([*TRUSTBUS, *args, "--json"], env=fleet.env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_quarantine_list_names_each_refused_message_and_why(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    alice = await fleet.bus("alice")
    accepted = await fleet.send(alice, ["bob"], {"i": 1})
    await forge(fleet, alice)  # a payload byte flipped after signing
    await fleet.quarantined(lambda r: r.reason == "bad_signature")

    refused = await trustbus(fleet, "quarantine", "list", "-t", fleet.tenant)
    only_bad = await trustbus(fleet, "quarantine", "list", "-t", fleet.tenant, "--reason", "bad_signature")

    assert [(r["reason"], r["subject"], r["recorded_by"]) for r in refused] == [
        ("bad_signature", f"tb.{fleet.tenant}.out.alice.0", "coordinator")
    ]
    assert only_bad == refused and isinstance(refused[0]["seq"], int) and refused[0]["detail"]
    assert await trustbus(fleet, "quarantine", "list", "-t", fleet.tenant, "--reason", "budget") == []
    assert accepted  # the valid one was not refused


async def test_tail_shows_only_the_kind_agent_or_correlation_asked_for(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    alice, carol = await fleet.bus("alice"), await fleet.bus("carol")
    first = await fleet.send(alice, ["bob"], {"i": 1})
    await fleet.send(carol, ["bob"], {"i": 2})
    await fleet.decisions(lambda ds: len(ds) == 2)
    tail = ["tail", "-t", fleet.tenant, "--idle-timeout", "2"]

    decisions = await trustbus(fleet, *tail, "--kind", "decision")
    by_carol = await trustbus(fleet, *tail, "--agent", "carol")
    first_only = await trustbus(fleet, *tail, "--correlation", first)

    assert {d["envelope"]["kind"] for d in decisions} == {"decision"}  # type: ignore[index]
    assert sum(len(d["envelope"]["decisions"]) for d in decisions) == 2  # type: ignore[index,arg-type]
    assert {d["envelope"]["sender"] for d in by_carol} == {"carol"}  # type: ignore[index]
    assert all(  # the event, and the record of its decision (a batch's record has a correlation of its own)
        d["envelope"]["correlation_id"] == first  # type: ignore[index]
        or {x["correlation_id"] for x in d["envelope"]["decisions"]} == {first}  # type: ignore[index]
        for d in first_only
    )
    assert {d["envelope"]["kind"] for d in first_only} == {"event", "decision"}  # type: ignore[index]


async def test_show_decodes_an_envelope_with_its_causes_and_consequences(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    alice, bob = await fleet.bus("alice"), await fleet.bus("bob")
    question = await fleet.send(alice, ["bob"], {"q": "refund?"})
    await fleet.decisions(lambda ds: len(ds) == 1)  # decided before its reply: the two outboxes are read apart
    answer = await fleet.send(bob, ["alice"], {"a": "no"}, kind="reply", correlation_id=question, causation_id=question)
    await fleet.decisions(lambda ds: len(ds) == 2)
    records = await trustbus(fleet, "tail", "-t", fleet.tenant, "--kind", "decision", "--idle-timeout", "2")
    [record_id] = [d["id"] for r in records for d in r["envelope"]["decisions"] if d["envelope_id"] == answer]  # type: ignore[index,union-attr]

    shown = (await trustbus(fleet, "show", answer, "-t", fleet.tenant))[0]
    decision_record = (await trustbus(fleet, "show", str(record_id), "-t", fleet.tenant))[0]
    text = await one_shot_async([*TRUSTBUS, "show", question, "-t", fleet.tenant], env=fleet.env)

    assert shown["envelope"]["payload"] == {"a": "no"}  # type: ignore[index]
    assert shown["causes"] == [{"id": question, "kind": "event", "sender": "alice"}]
    assert shown["about"]["id"] == answer and shown["about"]["decisions"][0]["verdict"] == "accept"  # type: ignore[index]
    assert decision_record["envelope"]["kind"] == "decision" and decision_record["about"]["id"] == answer  # type: ignore[index]
    assert text.returncode == 0 and "reply bob -> alice" in text.stdout and "caused by nothing (a root)" in text.stdout
    missing = await one_shot_async([*TRUSTBUS, "show", "no-such-id", "-t", fleet.tenant], env=fleet.env)
    assert missing.returncode == 1 and "no envelope no-such-id" in missing.stderr


async def test_coordinator_status_names_the_holder_of_each_partition_and_the_holds_waiting(fleet: Fleet) -> None:
    policy = {
        "taint": {"high_risk_tools": ["refund"]},
        "rules": [{"from": "*", "to": ["*"], "kinds": ["instruction"], "verbs": ["refund"]}],
    }
    await fleet.coordinator(policy)
    desk = await fleet.bus("desk")
    held = await fleet.send(desk, ["billing"], {"verb": "refund", "order": 7}, kind="instruction", taint=["web"])
    await fleet.decisions(lambda ds: any(d.envelope_id == held and d.verdict == "hold" for d in ds))

    [status] = await trustbus(fleet, "coordinator", "status", "-t", fleet.tenant)
    text = await one_shot_async([*TRUSTBUS, "coordinator", "status", "-t", fleet.tenant], env=fleet.env)

    [partition] = status["partitions"]  # type: ignore[misc]
    assert partition["held"] and str(partition["holder"]).startswith("coordinator/") and partition["pending"] == 0
    assert partition["cached"] == 1 and partition["capacity"] == 10_000  # the held one's correlation, in memory
    assert status["holds_waiting"] == 1 and float(status["oldest_hold_s"]) >= 0  # type: ignore[arg-type]
    assert text.returncode == 0 and "1 hold(s) waiting for a person" in text.stdout and "1 of 10000" in text.stdout


async def test_a_backlog_decided_together_is_one_group_record_and_each_delivery_names_its_decision(
    fleet: Fleet,
) -> None:
    alice = await fleet.bus("alice")
    sent = [await fleet.send(alice, ["bob"], {"i": i}) for i in range(12)]  # waiting before the coordinator starts
    await fleet.coordinator(POLICY)
    await fleet.decisions(lambda ds: len(ds) == len(sent))
    await fleet.inbox(lambda read: len(read) == len(sent))

    messages = await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant))
    async with await KeyringStore.open(fleet.nc.jetstream(), fleet.tenant, follow=False) as store:
        keyring = store.keyring
    opened = {
        m.seq: open_envelope(
            m.body, m.headers, keyring=keyring, received_ns=m.stored_ns,
            recipient=subjects.mediated_recipient(fleet.tenant, m.subject),
            at_store=subjects.judged_at_store(fleet.tenant, m.subject),
        )
        for m in messages
    }  # fmt: skip
    records = [opened[m.seq].envelope for m in messages if subjects.is_decision(fleet.tenant, m.subject)]
    decided = {decision_id: d for r in records for decision_id, d in recorded_decisions(r)}
    assert len(records) < len(sent)  # the backlog's decisions share a record: one signature, one append
    assert sorted(d.envelope_id for d in decided.values()) == sorted(sent)
    deliveries = [opened[m.seq] for m in messages if m.subject == subjects.inbox(fleet.tenant, "bob")]
    for delivery in deliveries:  # the countersignature names the decision that let it through, by record and position
        assert delivery.mediation is not None
        decision = decided[delivery.mediation.decision_id]
        assert decision.envelope_id == delivery.envelope.id and decision.verdict == "accept"
    grouped = next(i for i in decided if "." in i)
    in_tail = await trustbus(
        fleet, "tail", "-t", fleet.tenant, "--correlation", decided[grouped].correlation_id, "--idle-timeout", "2"
    )
    assert {d["envelope"]["kind"] for d in in_tail} == {"event", "decision"}  # type: ignore[index]
    assert grouped in {x["id"] for d in in_tail for x in d["envelope"].get("decisions", [])}  # type: ignore[union-attr,attr-defined]
    shown = (await trustbus(fleet, "show", grouped, "-t", fleet.tenant))[0]
    assert shown["envelope"]["kind"] == "decision"  # type: ignore[index]
    assert shown["about"]["id"] == decided[grouped].envelope_id  # type: ignore[index]
    [replayed] = await trustbus(
        fleet, "ledger", "replay", "--correlation", decided[grouped].correlation_id, "-t", fleet.tenant
    )
    [step] = replayed["tree"]  # type: ignore[misc]
    assert step["id"] == decided[grouped].envelope_id and step["delivered_to"] == ["bob"]
    assert [d["verdict"] for d in step["decisions"]] == ["accept"]  # its own, not its record's neighbours'
