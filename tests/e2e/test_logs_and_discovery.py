"""A fleet's logs name the envelope they are about, and its processes answer NATS service discovery."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.e2e.fleet import Fleet
from tests.e2e.test_metrics import metrics_port, until
from tests.processes import TRUSTBUS, one_shot_async
from tests.scrape import get, scrape, value
from trustbus.bus import discover_services

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def json_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def test_a_fleet_lists_itself_and_its_lines_about_an_envelope_name_it(fleet: Fleet, tmp_path: Path) -> None:
    await fleet.coordinator({"rules": [{"from": "sender", "to": ["faulty"], "kinds": ["event"]}]})
    await fleet.key("faulty")
    agent = await fleet.spawn(
        "--log-format", "json", "agent", "run", "tests.e2e.fleet_agents:Faulty", "--id", "faulty", "-t", fleet.tenant
    )
    await fleet.key("ledger", role="ledger")
    sender = await fleet.bus("sender")
    for i in range(20):  # a backlog for the ledger to catch up with before it is ready
        await fleet.send(sender, ["nobody"], i)
    started_after = await sender.last_seq()
    ledger = metrics_port(
        await fleet.spawn("ledger", "run", "-t", fleet.tenant, "--data", str(tmp_path / "p"), "--metrics-port", "0")
    )
    await until(lambda: get(ledger, "/readyz") == (200, "ready\n"))
    assert value(await asyncio.to_thread(scrape, ledger), "trustbus_ledger_projected_seq") >= started_after

    answers = [a for a in await discover_services([fleet.url]) if a["metadata"]["tenant"] == fleet.tenant]
    assert [(a["name"], a["metadata"]["name"]) for a in answers] == [
        ("trustbus-agent", "faulty"),
        ("trustbus-coordinator", "coordinator"),
        ("trustbus-ledger", "ledger"),
    ]
    assert {a["type"] for a in answers} == {"io.nats.micro.v1.ping_response"}
    assert all(a["version"] and a["id"] for a in answers)
    listed = await one_shot_async([*TRUSTBUS, "services", "--json"], env=fleet.env)
    assert listed.returncode == 0, listed.stderr
    ours = {a["id"] for a in answers}
    stats = {a["name"]: a for a in map(json.loads, listed.stdout.splitlines()) if a["id"] in ours}
    assert {a["type"] for a in stats.values()} == {"io.nats.micro.v1.stats_response"} and len(stats) == 3
    assert stats["trustbus-coordinator"]["trustbus"]["ready"] == "ready"
    assert stats["trustbus-coordinator"]["trustbus"]["partitions_held"] == sender.partitions
    assert stats["trustbus-ledger"]["trustbus"]["projected_seq"] >= started_after

    sent = await fleet.send(sender, ["faulty"], "boom", trace=(TRACEPARENT, ""))
    await fleet.quarantined(lambda r: r.reason == "handler_error")
    (line,) = [line for line in json_lines(agent.log) if line["msg"] == "handler failed; quarantining"]
    assert line["tenant"] == fleet.tenant
    assert line["agent"] == "faulty"
    assert line["correlation_id"] == sent  # a new origin's correlation is named by its id
    assert line["trace_id"] == TRACE_ID
    assert line["envelope_id"] == sent
