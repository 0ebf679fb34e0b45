"""A coordinator whose wall clock was stepped keeps its holds, and the ledger it wrote still verifies.

The shifted coordinator is a real process (``tests/e2e/shifted_coordinator.py``:
the library's coordinator with its injected clock set off the host's), so every
decision and quarantine record it signs carries a ``ts`` two minutes from the
server's store time. Those records are judged by their store time.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.test_approvals import POLICY, cli, researcher_reads_a_web_page
from trustbus._supervisor import Process
from trustbus.bus import Bus, new_envelope, subjects


async def _coordinator(fleet: Fleet, offset_s: float) -> Process:
    """Start the coordinator with its clock ``offset_s`` off, and wait for its ready line."""
    if not fleet.keys.path(fleet.tenant, "coordinator").exists():
        await fleet.key("coordinator", role="coordinator")
    policy = fleet.tmp / "policy-shifted.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    shifted = [sys.executable, "-m", "tests.e2e.shifted_coordinator", str(offset_s), str(policy), fleet.tenant]
    proc = await fleet.start(shifted, ready_s=60)
    assert proc.ready_line is not None and proc.ready_line["ready"] == "coordinator", proc.tail()
    return proc


async def _forge(fleet: Fleet, bus: Bus, correlation: str) -> str:
    """An envelope with a flipped byte in the researcher's outbox: the coordinator quarantines it."""
    envelope = new_envelope(tenant=fleet.tenant, kind="event", sender=bus.name, to=["billing"],
                            payload=b'{"note": 42}', correlation_id=correlation)  # fmt: skip
    sealed = bus.seal(envelope)
    body = sealed.body[:-2] + bytes([sealed.body[-2] ^ 0x01]) + sealed.body[-1:]
    await fleet.nc.jetstream().publish(bus.outbox(envelope), body, headers=dict(sealed.headers))
    return envelope.id


async def _hold_survives_and_the_ledger_verifies(fleet: Fleet, offset_s: float) -> None:
    shifted = await _coordinator(fleet, offset_s)
    await fleet.key("ops", role="operator")
    correlation, researcher = await researcher_reads_a_web_page(fleet)
    injected = await fleet.send(researcher, ["billing"], {"verb": "issue_refund", "order": 7},  # type: ignore[arg-type]
                                kind="instruction", correlation_id=correlation)  # fmt: skip
    [held] = [d for d in await fleet.decisions(lambda ds: len(ds) == 2) if d.envelope_id == injected]
    assert held.verdict == "hold"
    forged = await _forge(fleet, researcher, correlation)  # type: ignore[arg-type]
    assert (await fleet.quarantined(lambda r: r.claimed_id == forged)).reason == "bad_signature"

    rc, out, err = await cli(fleet, "approvals", "list", "-t", fleet.tenant, "--json")
    assert rc == 0 and [json.loads(line)["envelope_id"] for line in out.splitlines()] == [injected], err

    # The clock is put right (a new process): it rebuilds its state from the log the shifted one wrote.
    shifted.send_signal(signal.SIGTERM)
    assert await shifted.exited(30) == 0
    await fleet.coordinator(POLICY)
    rc, out, err = await cli(fleet, "approvals", "list", "-t", fleet.tenant, "--json")
    assert rc == 0 and [json.loads(line)["envelope_id"] for line in out.splitlines()] == [injected], err
    rc, out, err = await cli(fleet, "approve", injected, "-t", fleet.tenant, "--as", "ops", "--json")
    assert rc == 0 and json.loads(out)["verdict"] == "accept", err
    delivered = await fleet.inbox(lambda read: any(e.id == injected for _, e in read))
    assert [e.id for r, e in delivered if r == "billing"] == [injected]

    rc, out, err = await cli(fleet, "ledger", "verify", "-t", fleet.tenant, "--json")
    report = json.loads(out.splitlines()[-1])
    assert rc == 0 and report["ok"], report
    assert report["recorded_rejections"] == 1  # the forged envelope, excused by the shifted coordinator's record
    decisions = subjects.all_decisions(fleet.tenant)
    info = await fleet.nc.jetstream().stream_info(f"TB_{fleet.tenant}", subjects_filter=decisions)
    assert sum((info.state.subjects or {}).values()) == 3  # the page, the hold, the approval: none lost


@pytest.mark.parametrize("offset_s", [120.0, -120.0], ids=["ahead", "behind"])
async def test_a_coordinator_whose_clock_was_stepped_keeps_its_holds_and_its_ledger_verifies(
    fleet: Fleet, offset_s: float
) -> None:
    await _hold_survives_and_the_ledger_verifies(fleet, offset_s)


async def test_a_coordinator_with_a_true_clock_holds_and_verifies_the_same(fleet: Fleet) -> None:
    """The twin: the same run with the clock right."""
    await _hold_survives_and_the_ledger_verifies(fleet, 0.0)
