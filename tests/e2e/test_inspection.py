"""Inspection commands against a running fleet: `quarantine list` and `tail` filtered by kind, agent, correlation."""

from __future__ import annotations

import json

from tests.e2e.fleet import Fleet
from tests.e2e.test_ledger_service import POLICY, forge
from tests.processes import TRUSTBUS, one_shot_async


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

    assert len(decisions) == 2 and {d["envelope"]["kind"] for d in decisions} == {"decision"}  # type: ignore[index]
    assert {d["envelope"]["sender"] for d in by_carol} == {"carol"}  # type: ignore[index]
    assert {d["envelope"]["correlation_id"] for d in first_only} == {first}  # type: ignore[index]
    assert {d["envelope"]["kind"] for d in first_only} == {"event", "decision"}  # type: ignore[index]
