"""Effects with real processes: a tool call is never repeated once completed, and survives a crash mid-call.

The shop agent (tests/e2e/fleet_agents.py) acts on a real SQLite file that
stands in for an outside system: a sale is stored once per idempotency key
(a UNIQUE column, INSERT OR IGNORE) and every call of the tool is counted, so
the counts below are the system's, not the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time

import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.fleet_agents import SYSTEM_DB
from trustbus._supervisor import Process
from trustbus.bus import Decision, EffectRecord, Envelope, KeyringStore, decode_effect, subjects, tail

TOOLS = {
    "tools": [
        {"name": "record_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
        {"name": "fetch_page", "system": "web", "owner": "shop", "effect_class": "read", "result_taint": ["web"]},
    ]
}
POLICY = {
    "rules": [
        {"from": "boss", "to": ["shop"], "kinds": ["instruction"], "verbs": ["sell", "browse"]},
        {"from": "*", "to": ["*"], "kinds": ["event", "reply", "checkpoint"]},
    ]
}


async def start_shop(fleet: Fleet) -> Process:
    """`trustbus agent run tests.e2e.fleet_agents:Shop --tools FILE`, acting on the fleet's SQLite system."""
    if not fleet.keys.path(fleet.tenant, "shop").exists():
        await fleet.key("shop")
    tools = fleet.tmp / "tools.yaml"
    tools.write_text(yaml.safe_dump(TOOLS))
    env = {**fleet.env, SYSTEM_DB: str(fleet.tmp / "system.db")}
    target = "tests.e2e.fleet_agents:Shop"
    return await fleet.spawn("agent", "run", target, "--id", "shop", "-t", fleet.tenant, "--tools", str(tools), env=env)


def counts(fleet: Fleet) -> tuple[int, int]:
    """(sales stored, tool calls made), read from the system itself."""
    path = fleet.tmp / "system.db"
    if not path.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            [sales] = db.execute("SELECT count(*) FROM sales").fetchone()
            [calls] = db.execute("SELECT count(*) FROM calls").fetchone()
        except sqlite3.OperationalError:  # the agent has not made its tables yet
            return 0, 0
    return sales, calls


async def replies(fleet: Fleet, count: int = 1) -> list[Envelope]:
    """The first ``count`` envelopes delivered to the boss."""
    read = await fleet.inbox(lambda read: sum(r == "boss" for r, _ in read) >= count, limit_s=60)
    return [envelope for recipient, envelope in read if recipient == "boss"]


async def effect_records(fleet: Fleet, agent: str, key: str = "*") -> list[tuple[Envelope, EffectRecord]]:
    """Every record of one effect (of every effect of ``agent`` by default), verified, in order."""
    js = fleet.nc.jetstream()
    found: list[tuple[Envelope, EffectRecord]] = []
    async with await KeyringStore.open(js, fleet.tenant) as keyring:
        subject = f"{subjects.effect(fleet.tenant, agent)}.*.{key}"
        async for item in tail(js, keyring, fleet.tenant, subject=subject, idle_timeout_s=1.0):
            assert item.opened is not None, item.error
            found.append((item.opened.envelope, decode_effect(item.opened.envelope.payload)))
            if item.pending == 0:
                break
    return found


async def test_redelivery_after_a_completed_effect_returns_the_recorded_result(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    await start_shop(fleet)
    boss = await fleet.bus("boss")
    order = await fleet.send(boss, ["shop"], {"verb": "sell", "item": "lamp", "flaky": True}, kind="instruction")

    [reply] = await replies(fleet)
    body = json.loads(reply.payload)
    assert body["attempt"] == 2  # the first attempt raised TransientError after the effect completed
    assert counts(fleet) == (1, 1)  # the tool ran once: attempt 2 got the recorded result
    [key] = body["cites"]
    records = await effect_records(fleet, "shop", key)
    assert [r.phase for _, r in records] == ["requested", "completed"]
    completed = records[-1][1]
    assert json.loads(completed.result or b"") == {"sale": body["sale"]} and completed.effect_class == "irreversible"
    envelope = records[-1][0]
    assert (envelope.kind, envelope.causation_id, envelope.idempotency_key, envelope.to) == ("effect", order, key, ())


async def test_agent_killed_mid_effect_acts_once_after_restart(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    shop = await start_shop(fleet)
    boss = await fleet.bus("boss")
    await fleet.send(boss, ["shop"], {"verb": "sell", "item": "kettle", "hang": True}, kind="instruction")

    # The tool stored the sale and now blocks: the only way to see it is the system's file, so poll it.
    deadline = time.monotonic() + 30
    while counts(fleet) != (1, 1):
        assert time.monotonic() < deadline, "the tool never ran"
        await asyncio.sleep(0.05)
    shop.send_signal(signal.SIGKILL)
    await shop.exited()
    await start_shop(fleet)

    [reply] = await replies(fleet)
    body = json.loads(reply.payload)
    assert body["attempt"] == 2
    assert counts(fleet) == (1, 2)  # called again with the same key after the crash; the system stored it once
    [key] = body["cites"]
    records = await effect_records(fleet, "shop", key)
    assert [r.phase for _, r in records] == ["requested", "requested", "completed"]
    assert {r.idempotency_key for _, r in records} == {key}


async def test_failing_tool_is_recorded_failed_and_its_delivery_quarantined(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    await start_shop(fleet)
    boss = await fleet.bus("boss")
    order = await fleet.send(boss, ["shop"], {"verb": "sell", "item": "explode"}, kind="instruction")

    record = await fleet.quarantined(lambda r: r.claimed_id == order)
    assert record.reason == "handler_error" and "the till is on fire" in record.detail
    [(_, requested), (_, failed)] = await effect_records(fleet, "shop")
    assert (requested.phase, failed.phase, failed.tool) == ("requested", "failed", "record_sale")
    assert failed.error == "ValueError: the till is on fire"
    assert counts(fleet) == (0, 0)


async def test_web_result_taints_what_the_agent_sends_next(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    await start_shop(fleet)
    boss = await fleet.bus("boss")
    await fleet.send(boss, ["shop"], {"verb": "browse", "url": "https://example.org"}, kind="instruction")

    [reply] = await replies(fleet)
    body = json.loads(reply.payload)
    assert body["taint_before"] == [] and body["taint_after"] == ["web"]
    assert reply.taint == ("web",)  # declared by the runtime, not left to the handler

    def reply_decided(ds: list[Decision]) -> bool:
        return any(d.envelope_id == reply.id for d in ds)

    decision = next(d for d in await fleet.decisions(reply_decided) if d.envelope_id == reply.id)
    assert decision.verdict == "accept" and "web" in decision.declared_taint and "web" in decision.effective_taint
