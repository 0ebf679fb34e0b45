"""A LangGraph graph as its own process on the bus: answers, tool calls as effects, crash, hold, replay, threads.

The graph is tests/e2e/langgraph_agents.py: a compiled graph given to ``trustbus agent run`` as is, with a
stand-in chat model that counts its calls in a file. One fleet serves the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
import pytest_asyncio
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.fleet_agents import SYSTEM_DB
from tests.e2e.langgraph_agents import MODEL_CALLS, NO_MODEL
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from tests.e2e.test_pydantic_ai import held
from tests.processes import TRUSTBUS, one_shot_async
from trustbus._supervisor import Process
from trustbus.adapters.langgraph import MODEL_TOOL
from trustbus.bus import Bus, EmbeddedServer, Envelope, KeyDirectory, init_tenant

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENT = "tests.e2e.langgraph_agents:graph"
TOOLS = {
    "tools": [
        {"name": "record_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
        {"name": "issue_refund", "system": "books", "owner": "finance", "effect_class": "irreversible",
         "high_risk": True},
    ]
}  # fmt: skip
POLICY = {
    "rules": [
        {"from": "boss", "to": ["graph"], "kinds": ["instruction", "event"]},
        {"from": "customer", "to": ["support"], "kinds": ["event"]},
        {"from": "*", "to": ["*"], "kinds": ["reply"]},
    ]
}


@dataclass
class Shop:
    """The module's fleet, the graph's current process, and the boss who talks to it."""

    fleet: Fleet
    boss: Bus
    process: Process | None = None

    @property
    def env(self) -> dict[str, str]:
        tmp = self.fleet.tmp
        return {**self.fleet.env, SYSTEM_DB: str(tmp / "system.db"), MODEL_CALLS: str(tmp / "model-calls")}

    async def start_agent(self) -> None:
        tools = self.fleet.tmp / "tools.yaml"
        tools.write_text(yaml.safe_dump(TOOLS))
        self.process = await self.fleet.spawn("agent", "run", AGENT, "--id", "graph", "-t", self.fleet.tenant,
                                              "--tools", str(tools), env=self.env)  # fmt: skip

    async def ask(self, *calls: dict[str, object], taint: tuple[str, ...] = (), **fields: object) -> str:
        """Send the graph a prompt listing ``calls``; the envelope id."""
        return await self.fleet.send(self.boss, ["graph"], prompt_of(*calls), kind="event", taint=list(taint), **fields)

    async def answer(self, correlation: str, to: str = "boss", *, after: str | None = None) -> Envelope:
        def mine(r: str, e: Envelope) -> bool:
            return r == to and e.correlation_id == correlation and (after is None or e.causation_id == after)

        read = await self.fleet.inbox(lambda read: any(mine(r, e) for r, e in read), limit_s=60)
        return next(e for r, e in read if mine(r, e))

    def model_calls(self, prompt: str) -> int:
        path = self.fleet.tmp / "model-calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(json.loads(line) == prompt for line in lines)

    def system_calls(self, what: str) -> tuple[int, int]:
        """(rows stored, calls made) for ``what`` (``sale:lamp``), read from the system itself."""
        with contextlib.closing(sqlite3.connect(self.fleet.tmp / "system.db")) as db:
            keys = [k for (k,) in db.execute("SELECT idempotency_key FROM sales WHERE item = ?", (what,))]
            calls = sum(
                db.execute("SELECT count(*) FROM calls WHERE idempotency_key = ?", (k,)).fetchone()[0] for k in keys
            )
        return len(keys), calls


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    tmp = tmp_path_factory.mktemp("lg")
    tenant = f"lg{time.monotonic_ns() % 10**9}"
    keys = KeyDirectory(tmp / "keys")
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(nats_server.url))
    try:
        await fleet.coordinator(POLICY)
        await fleet.key("ops", role="operator")
        await fleet.key("graph")
        shop = Shop(fleet, await fleet.bus("boss"))
        await shop.start_agent()
        yield shop
    finally:
        await fleet.close()


def prompt_of(*calls: dict[str, object]) -> str:
    return json.dumps({"calls": list(calls)})


LAMP = {"tool": "record_sale", "args": {"item": "lamp"}}
first: dict[str, str] = {}  # the first test's thread, which a later process goes on with


async def test_answers_a_message_and_its_tool_node_call_is_an_effect(shop: Shop) -> None:
    request = await shop.ask(LAMP)
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: [{"sale": 1}] (turn 1)' and answer.content_type == "text/plain"
    assert answer.taint == ("llm",)  # what the model said taints what the agent sends
    records = [r for e, r in await effect_records(shop.fleet, "graph") if e.correlation_id == request]
    assert [(r.tool, r.phase) for r in records] == [
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
        ("record_sale", "requested"), ("record_sale", "completed"),
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
    ]  # fmt: skip
    assert records[0].effect_class == "read" and records[3].effect_class == "irreversible"
    assert json.loads(records[2].args) == {"item": "lamp"}
    assert shop.model_calls(prompt_of(LAMP)) == 2 and shop.system_calls("sale:lamp") == (1, 1)
    first.update(request=request, answer=answer.id)


async def test_killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    vase = {"tool": "record_sale", "args": {"item": "vase"}}
    kettle = {"tool": "record_sale", "args": {"item": "kettle", "hang": True}}
    request = await shop.ask(vase, kettle)
    deadline = time.monotonic() + 30
    while shop.system_calls("sale:kettle") != (1, 1):  # the tool stored the sale and blocks: seen in the system
        assert time.monotonic() < deadline, "the kettle was never sold"
        await asyncio.sleep(0.05)
    assert shop.process is not None
    shop.process.send_signal(signal.SIGKILL)
    await shop.process.exited()
    await shop.start_agent()

    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: [{"sale": 2}, {"sale": 3}] (turn 1)'
    assert shop.system_calls("sale:vase") == (1, 1)  # completed before the crash: not called again
    assert shop.system_calls("sale:kettle") == (1, 2)  # cut off mid-call: called again with its key, stored once
    assert shop.model_calls(prompt_of(vase, kettle)) == 3  # the two answered before the crash came from the ledger


async def test_the_restarted_process_goes_on_with_a_thread_from_its_checkpoint(shop: Shop) -> None:
    """The first test's thread was kept by the process killed above; the next message in it is turn 2."""
    mug = {"tool": "record_sale", "args": {"item": "mug"}}
    request = first["request"]
    follow_up = await shop.ask(mug, correlation_id=request, causation_id=first["answer"])
    answer = await shop.answer(request, after=follow_up)
    assert answer.payload.decode() == 'done: [{"sale": 4}] (turn 2)'


async def test_tainted_high_risk_tool_call_is_held_runs_once_on_approval_and_replays_without_the_model(
    shop: Shop,
) -> None:
    refund = {"tool": "issue_refund", "args": {"order": 7, "amount": 50}}
    request = await shop.ask(refund, taint=("web",))
    hold = await held(shop.fleet, request)
    assert hold.reasons == ("effect_requested", "tainted_high_risk") and hold.effective_taint == ("llm", "web")
    assert shop.system_calls("refund:7/50") == (0, 0)

    rc, _, err = await cli(shop.fleet, "approve", hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(request)
    assert answer.payload.decode().startswith('done: [{"refund": ')
    assert shop.system_calls("refund:7/50") == (1, 1) and shop.model_calls(prompt_of(refund)) == 2

    # Re-executed from the ledger with a model that raises if called: the same answer and checkpoint.
    env = {**shop.env, NO_MODEL: "1"}
    args = [*TRUSTBUS, "ledger", "replay", "-t", shop.fleet.tenant, "--correlation", request,
            "--execute", f"graph={AGENT}", "--json"]  # fmt: skip
    result = await one_shot_async(args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    [same] = json.loads(result.stdout)["executed"]
    assert same["agent"] == "graph" and same["divergences"] == []
    assert shop.model_calls(prompt_of(refund)) == 2


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/langgraph_after.py, as docs/FRAMEWORKS.md runs it (its model node is synchronous)."""
    fleet = shop.fleet
    await fleet.key("support")
    await fleet.spawn("agent", "run", "examples.frameworks.langgraph_after:app", "--id", "support",
                      "-t", fleet.tenant, "--tools", "examples/frameworks/tools.yaml")  # fmt: skip
    customer = await fleet.bus("customer")
    question = await fleet.send(customer, ["support"], "Where is order A-1?")
    answer = await shop.answer(question, to="customer")
    assert answer.payload.decode() == "lookup_order: {'status': 'shipped', 'amount': 25}"  # as when run alone

    refund = await fleet.send(customer, ["support"], "Please refund A-2")
    hold = await held(fleet, refund)  # untainted request, but the model chose the call: taint llm, high risk
    assert hold.effective_taint == ("llm",)
    rc, _, err = await cli(fleet, "deny", hold.envelope_id, "-t", fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(refund, to="customer")
    assert answer.payload.decode() == "refund_order: refund_order was not run: denied by ops"
