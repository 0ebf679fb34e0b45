"""MCP tools with real processes: imported from a real MCP server, called by an agent as recorded effects.

The server is tests/fixtures/mcp_server.py (built with the mcp SDK), run over
stdio by each agent process that calls it and by an approval, and over
streamable HTTP for `trustbus tools import-mcp`. Its store file counts every
call of a tool, so the counts below are the server's. One tenant, one
coordinator and two agents (examples/notes.py) serve the module: ``notes``
calls the server as imported (once held for an operator); ``drifted`` calls a server started with
``--changed`` (its add_note reworded since it was approved). How a re-import
keeps the operator's edits is tests/unit/test_mcp_import.py's; a server lost
between calls, tests/integration/test_mcp_session.py's. ``traced`` (the same agent, exporting its spans to a
receiver the test runs) shows a call carrying its trace context to the server.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from tests.fixtures import mcp_server
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.adapters.mcp import ImportOptions, import_server
from trustbus.bus import EmbeddedServer, Envelope, KeyDirectory, init_tenant

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = {
    "rules": [
        {"from": "boss", "to": ["notes", "drifted", "traced"], "kinds": ["instruction"], "verbs": ["note"]},
        {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
    ]
}


async def import_mcp(env: dict[str, str], *args: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`trustbus tools import-mcp ... --json`, which must succeed: its rows by registry name, and what is left."""
    result = await one_shot_async([*TRUSTBUS, "tools", "import-mcp", *args, "--json"], env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {row["name"]: row for row in report["tools"]}, report["left"]


def calls(store: Path) -> int:
    return int(json.loads(store.read_text())["calls"]) if store.exists() else 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """The tenant, its coordinator, and the agents `notes` and `drifted`, each with its registry."""
    tmp = tmp_path_factory.mktemp("mcp")
    keys = KeyDirectory(tmp / "keys")
    tenant = f"mcp{os.getpid()}"
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(nats_server.url))
    try:
        await registries(tmp)
        agents = (start_notes(fleet, agent) for agent in ("notes", "drifted"))
        await asyncio.gather(fleet.coordinator(POLICY), fleet.key("ops", role="operator"), *agents)
        yield fleet
    finally:
        await fleet.close()


async def registries(tmp: Path) -> None:
    """`notes.yaml` as import-mcp writes it; `drifted.yaml` the same, but its server changed since then."""
    (tmp / "notes.yaml").write_text(yaml.safe_dump(await mcp_server.registry(tmp / "notes.json"), sort_keys=False))
    drifted = await mcp_server.registry(tmp / "drifted.json", "--changed")
    (tmp / "drifted.yaml").write_text(yaml.safe_dump(drifted, sort_keys=False))


async def start_notes(fleet: Fleet, agent: str) -> None:
    await fleet.key(agent)
    registry = str(fleet.tmp / f"{agent}.yaml")
    await fleet.spawn("agent", "run", "examples.notes:app", "--id", agent, "-t", fleet.tenant, "--tools", registry)


async def note(fleet: Fleet, agent: str, title: str, *, taint: tuple[str, ...] = ()) -> str:
    boss = fleet.buses[0] if fleet.buses else await fleet.bus("boss")
    payload = {"verb": "note", "title": title, "text": f"text of {title}"}
    return await fleet.send(boss, [agent], payload, kind="instruction", taint=taint)


async def reply_to(fleet: Fleet, sent: str) -> Envelope:
    read = await fleet.inbox(lambda read: any(e.causation_id == sent for _, e in read), limit_s=60)
    return next(envelope for recipient, envelope in read if envelope.causation_id == sent and recipient == "boss")


async def test_an_mcp_tool_is_called_as_a_recorded_effect(fleet: Fleet) -> None:
    sent = await note(fleet, "notes", "first")

    body = json.loads((await reply_to(fleet, sent)).payload)
    assert body["noted"] == {"added": "first", "notes": 1}
    [key] = body["cites"]
    records = await effect_records(fleet, "notes", key)
    assert [r.phase for _, r in records] == ["requested", "completed"]
    completed = records[-1][1]
    assert (completed.tool, completed.effect_class, completed.high_risk) == ("add_note", "irreversible", True)
    assert json.loads(completed.result or b"") == {"added": "first", "notes": 1}
    assert calls(fleet.tmp / "notes.json") == 1
    assert json.loads((fleet.tmp / "notes.json").read_text())["keys"] == [key]  # the key reached the server


async def test_a_tainted_call_of_a_high_risk_mcp_tool_is_held_until_an_operator_approves_it(fleet: Fleet) -> None:
    store = fleet.tmp / "notes.json"
    before = calls(store)
    sent = await note(fleet, "notes", "from the web", taint=("web",))

    decisions = await fleet.decisions(lambda ds: any(d.kind == "effect" and d.verdict == "hold" for d in ds))
    [held] = [d for d in decisions if d.kind == "effect" and d.verdict == "hold"]
    assert held.causation_id == sent and calls(store) == before  # asked, not called
    rc, _, err = await cli(fleet, "approve", held.envelope_id, "-t", fleet.tenant, "--as", "ops")
    assert rc == 0, err

    body = json.loads((await reply_to(fleet, sent)).payload)
    assert body["noted"]["added"] == "from the web" and calls(store) == before + 1
    records = await effect_records(fleet, "notes", body["cites"][0])
    assert [r.phase for _, r in records] == ["requested", "completed"] and records[0][0].id == held.envelope_id


async def test_a_changed_tool_is_refused_until_approved(fleet: Fleet) -> None:
    store = fleet.tmp / "drifted.json"
    refused = await note(fleet, "drifted", "lost")

    record = await fleet.quarantined(lambda r: r.claimed_id == refused)
    assert record.reason == "handler_error" and "mcp_tool_changed" in record.detail
    [(_, requested), (_, failed)] = await effect_records(fleet, "drifted")
    assert (requested.phase, failed.phase, failed.tool) == ("requested", "failed", "add_note")
    assert (failed.error or "").startswith("EffectDenied: mcp_tool_changed: add_note call")
    assert calls(store) == 0  # listed, never called

    # As `trustbus tools import-mcp --server notebook -f drifted.yaml --approve add_note` does:
    options = ImportOptions(server={"name": "notebook"}, approve=["add_note"])
    approval, _ = await import_server(fleet.tmp / "drifted.yaml", options)
    statuses = {row.name: row.status for row in approval.rows}
    assert statuses == {"read_note": "unchanged", "add_note": "approved", "burn_notebook": "unchanged"}

    accepted = await note(fleet, "drifted", "kept")  # the running agent reads the approval from its registry
    body = json.loads((await reply_to(fleet, accepted)).payload)
    assert body["noted"] == {"added": "kept", "notes": 1} and calls(store) == 1


async def test_import_over_streamable_http_maps_annotations_to_effect_classes(fleet: Fleet) -> None:
    store = fleet.tmp / "http.json"
    http = await fleet.start(mcp_server.command(store, "--http"))
    url = str(http.ready_line["url"])  # type: ignore[index]
    registry = fleet.tmp / "http.yaml"

    rows, left = await import_mcp(
        fleet.env, "--server", "web-notes", "--url", url, "-f", str(registry), "--prefix", "w_"
    )
    assert {name: (r["status"], r["effect_class"], r["high_risk"], r["idempotent"]) for name, r in rows.items()} == {
        "w_read_note": ("added", "read", False, False),
        "w_add_note": ("added", "irreversible", True, True),
        "w_burn_notebook": ("added", "irreversible", True, False),
    }
    over_stdio = yaml.safe_load((fleet.tmp / "notes.yaml").read_text())["tools"][1]["mcp"]
    assert rows["w_add_note"]["fingerprint"] == over_stdio["fingerprint"]  # one definition, either way
    assert left == [f"{registry}: tools.{i}.owner: Field required" for i in range(3)]


async def test_a_call_carries_trace_context_under_its_execute_tool_span_in_meta(fleet: Fleet) -> None:
    """The mcp SDK's client span of the call is in ``params._meta`` (SEP-414), a child of the call's execute_tool."""
    store, registry = fleet.tmp / "traced.json", fleet.tmp / "traced.yaml"
    registry.write_text(yaml.safe_dump(await mcp_server.registry(store), sort_keys=False))
    await fleet.key("traced")
    with OtlpReceiver() as receiver:
        agent = await fleet.spawn("agent", "run", "examples.notes:app", "--id", "traced", "-t", fleet.tenant,
                                  "--tools", str(registry), env=fleet.env | receiver.env())  # fmt: skip
        sent = await note(fleet, "traced", "followed")
        assert json.loads((await reply_to(fleet, sent)).payload)["noted"]["added"] == "followed"
        [traceparent] = json.loads(store.read_text())["traceparents"]  # what the server got in params._meta
        version, trace_id, span_id, _ = traceparent.split("-")

        def lineage(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
            by_id = {s.span_id: s for s in spans}
            found = [by_id[span_id]] if span_id in by_id else []
            while found and found[-1].parent:
                if found[-1].parent not in by_id:
                    return None
                found.append(by_id[found[-1].parent])
            return found or None

        sent_span, *ancestors = await receiver.wait(lineage)
        await asyncio.to_thread(agent.stop)  # while the receiver still takes its last spans
    assert version == "00" and sent_span.name == "MCP send tools/call add_note"
    assert [s.name for s in ancestors[:2]] == ["execute_tool add_note", "invoke_agent traced"]
    assert {s.trace_id for s in (sent_span, *ancestors)} == {trace_id}  # the handler's trace
