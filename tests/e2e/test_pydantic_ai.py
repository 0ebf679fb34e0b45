"""A pydantic-ai agent as its own process on the bus: answers, tool calls as effects, crash, hold, replay, asks.

The agent is tests/e2e/pydantic_agents.py: a ``pydantic_ai.Agent`` given to ``trustbus agent run`` as is,
with a stand-in ``FunctionModel`` that counts its calls in a file; ``asker`` there asks other agents.
One fleet serves the whole module.
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
from tests.e2e.pydantic_agents import MODEL_CALLS, NO_MODEL
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from tests.processes import TRUSTBUS, one_shot_async
from trustbus._supervisor import Process
from trustbus.adapters.pydantic_ai import MODEL_TOOL
from trustbus.bus import Bus, Decision, EmbeddedServer, Envelope, KeyDirectory, init_tenant

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENT = "tests.e2e.pydantic_agents:agent"
ASKER = "tests.e2e.pydantic_agents:asker"
TOOLS = {
    "tools": [
        {"name": "record_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
        {"name": "issue_refund", "system": "books", "owner": "finance", "effect_class": "irreversible",
         "high_risk": True},
    ]
}  # fmt: skip
POLICY = {
    "rules": [
        {"from": "boss", "to": ["pyd", "asker"], "kinds": ["instruction", "event"]},
        {"from": "asker", "to": ["clerk", "billing", "pyd", "mallory"], "kinds": ["instruction"], "verbs": ["ask"]},
        {"from": "customer", "to": ["support"], "kinds": ["event"]},
        {"from": "*", "to": ["*"], "kinds": ["reply"]},
    ]
}


@dataclass
class Shop:
    """The module's fleet, the agent's current process, and the boss who talks to it."""

    fleet: Fleet
    boss: Bus
    process: Process | None = None
    asker: Process | None = None

    @property
    def env(self) -> dict[str, str]:
        tmp = self.fleet.tmp
        return {**self.fleet.env, SYSTEM_DB: str(tmp / "system.db"), MODEL_CALLS: str(tmp / "model-calls")}

    async def start_agent(self) -> None:
        tools = self.fleet.tmp / "tools.yaml"
        tools.write_text(yaml.safe_dump(TOOLS))
        self.process = await self.fleet.spawn("agent", "run", AGENT, "--id", "pyd", "-t", self.fleet.tenant,
                                              "--tools", str(tools), env=self.env)  # fmt: skip

    async def start_asker(self) -> None:
        self.asker = await self.fleet.spawn("agent", "run", ASKER, "--id", "asker", "-t", self.fleet.tenant,
                                            env=self.env)  # fmt: skip

    async def ask(self, *calls: dict[str, object], taint: tuple[str, ...] = ()) -> str:
        """Send the agent a prompt listing ``calls``; the envelope id (its correlation)."""
        prompt = json.dumps({"calls": list(calls)})
        return await self.fleet.send(self.boss, ["pyd"], prompt, kind="event", taint=list(taint))

    async def answer(self, correlation: str, to: str = "boss") -> Envelope:
        def arrived(read: list[tuple[str, Envelope]]) -> bool:
            return any(r == to and e.correlation_id == correlation for r, e in read)

        read = await self.fleet.inbox(arrived, limit_s=60)
        return next(e for r, e in read if r == to and e.correlation_id == correlation)

    def model_calls(self, correlation_prompt: str) -> int:
        path = self.fleet.tmp / "model-calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(json.loads(line) == correlation_prompt for line in lines)

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
    tmp = tmp_path_factory.mktemp("pyd")
    tenant = f"pyd{time.monotonic_ns() % 10**9}"
    keys = KeyDirectory(tmp / "keys")
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(nats_server.url))
    try:
        await fleet.coordinator(POLICY)
        await fleet.key("ops", role="operator")
        await fleet.key("pyd")
        for agent in ("asker", "clerk", "billing"):
            await fleet.key(agent)
        shop = Shop(fleet, await fleet.bus("boss"))
        await shop.start_agent()
        await shop.start_asker()
        await fleet.spawn("agent", "run", "tests.e2e.pydantic_agents:clerk", "--id", "clerk", "-t", tenant)
        yield shop
    finally:
        await fleet.close()


def prompt_of(*calls: dict[str, object]) -> str:
    return json.dumps({"calls": list(calls)})


async def test_answers_a_message_and_its_tool_call_is_an_effect(shop: Shop) -> None:
    lamp = {"tool": "record_sale", "args": {"item": "lamp"}}
    request = await shop.ask(lamp)
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: [{"sale": 1}]' and answer.content_type == "text/plain"
    assert answer.taint == ("llm",)  # what the model said taints what the agent sends
    records = [r for e, r in await effect_records(shop.fleet, "pyd") if e.correlation_id == request]
    assert [(r.tool, r.phase) for r in records] == [
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
        ("record_sale", "requested"), ("record_sale", "completed"),
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
    ]  # fmt: skip
    assert records[0].effect_class == "read" and records[3].effect_class == "irreversible"
    assert json.loads(records[2].args) == {"item": "lamp"}
    assert shop.model_calls(prompt_of(lamp)) == 2 and shop.system_calls("sale:lamp") == (1, 1)


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
    assert answer.payload.decode() == 'done: [{"sale": 2}, {"sale": 3}]'
    assert shop.system_calls("sale:vase") == (1, 1)  # completed before the crash: not called again
    assert shop.system_calls("sale:kettle") == (1, 2)  # cut off mid-call: called again with its key, stored once
    assert shop.model_calls(prompt_of(vase, kettle)) == 3  # the two answered before the crash came from the ledger


async def held(fleet: Fleet, correlation: str) -> Decision:
    def found(ds: list[Decision]) -> bool:
        return any(d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation for d in ds)

    decisions = await fleet.decisions(found)
    return next(d for d in decisions if d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation)


async def test_tainted_high_risk_tool_call_is_held_runs_once_on_approval_and_replays_without_the_model(
    shop: Shop,
) -> None:
    refund = {"tool": "issue_refund", "args": {"order": 7, "amount": 50}}
    request = await shop.ask(refund, taint=("web",))
    hold = await held(shop.fleet, request)
    assert hold.reasons == ("effect_requested", "tainted_high_risk") and hold.effective_taint == ("llm", "web")
    rc, out, err = await cli(shop.fleet, "approvals", "list", "-t", shop.fleet.tenant, "--json")
    assert rc == 0, err
    [listed] = [json.loads(line) for line in out.splitlines() if json.loads(line)["envelope_id"] == hold.envelope_id]
    assert listed["request"] == 'issue_refund {"amount":50,"order":7}'
    assert not (shop.fleet.tmp / "system.db").exists() or shop.system_calls("refund:7/50") == (0, 0)

    rc, _, err = await cli(shop.fleet, "approve", hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(request)
    assert answer.payload.decode().startswith('done: [{"refund": ')
    assert shop.system_calls("refund:7/50") == (1, 1) and shop.model_calls(prompt_of(refund)) == 2

    # Re-executed from the ledger with a model that raises if called: the same answer, no model call.
    # A version with other instructions asks the model something else: a divergence, still no model call.
    env = {**shop.env, NO_MODEL: "1"}
    targets = ["--execute", f"pyd={AGENT}", "--execute", "pyd=tests.e2e.pydantic_agents:changed"]
    args = [*TRUSTBUS, "ledger", "replay", "-t", shop.fleet.tenant, "--correlation", request, *targets, "--json"]
    result = await one_shot_async(args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    same, changed = json.loads(result.stdout)["executed"]
    assert same["agent"] == "pyd" and same["divergences"] == []
    effect, sent = changed["divergences"]  # it asked another question, so it never got to its reply
    assert effect["what"] == "effect" and effect["replayed"].startswith(f"{MODEL_TOOL}(") and sent["what"] == "sent"
    assert shop.model_calls(prompt_of(refund)) == 2


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/pydantic_ai_after.py, as docs/FRAMEWORKS.md runs it."""
    fleet = shop.fleet
    await fleet.key("support")
    await fleet.spawn("agent", "run", "examples.frameworks.pydantic_ai_after:app", "--id", "support",
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


def question(agent: str, text: str) -> str:
    return json.dumps({"ask": agent, "question": text})


async def delivered(fleet: Fleet, to: str, kind: str, correlation: str) -> Envelope:
    """The first envelope of ``kind`` in ``correlation`` delivered to ``to``, waiting for it if need be."""

    def match(r: str, e: Envelope) -> bool:
        return r == to and e.kind == kind and e.correlation_id == correlation

    read = await fleet.inbox(lambda read: any(match(r, e) for r, e in read), limit_s=60)
    return next(e for r, e in read if match(r, e))


async def test_it_asks_another_agent_and_answers_its_sender_with_what_it_learned_and_replays_it(shop: Shop) -> None:
    asked = question("clerk", "how many rooms?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    ask = await delivered(shop.fleet, "clerk", "instruction", request)
    assert json.loads(ask.payload) == {"verb": "ask", "question": "how many rooms?"} and ask.sender == "asker"
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'learned: {"question":"how many rooms?","answer":"15 letters"}'
    assert answer.sender == "asker" and answer.taint == ("llm",)
    assert shop.model_calls(asked) == 2  # the question, then the answer: one run, resumed

    # Both deliveries (the question, the clerk's reply) re-executed from the ledger: the same ask, the same
    # checkpoints, the same answer, and no model call.
    args = [*TRUSTBUS, "ledger", "replay", "-t", shop.fleet.tenant, "--correlation", request,
            "--execute", f"asker={ASKER}", "--json"]  # fmt: skip
    result = await one_shot_async(args, env={**shop.env, NO_MODEL: "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    executed = json.loads(result.stdout)["executed"]
    assert [row["divergences"] for row in executed] == [[], []]
    assert shop.model_calls(asked) == 2


async def test_a_run_waiting_for_an_answer_survives_a_restart_of_its_agent(shop: Shop) -> None:
    asked = question("billing", "what is owed?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    ask = await delivered(shop.fleet, "billing", "instruction", request)  # billing is this test: nobody answers yet
    assert shop.asker is not None
    shop.asker.send_signal(signal.SIGKILL)
    await shop.asker.exited()
    await shop.start_asker()

    billing = await shop.fleet.bus("billing")
    await shop.fleet.send(billing, ["asker"], {"owed": 12}, kind="reply", correlation_id=request,
                          causation_id=ask.id, hop=ask.hop + 1, taint=list(ask.taint))  # fmt: skip
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'learned: {"owed":12}'
    assert shop.model_calls(asked) == 2  # the restarted process resumed the run from its checkpoint


async def test_an_ask_to_an_agent_it_may_not_ask_fails_for_the_model(shop: Shop) -> None:
    asked = question("mallory", "what is the admin password?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    answer = await shop.answer(request)
    assert answer.payload.decode() == (
        'learned: {"error":"\'mallory\' is not an agent this one may ask (it may ask: clerk, billing, pyd)"}'
    )


async def test_the_answer_to_a_tainted_question_is_tainted(shop: Shop) -> None:
    asked = question("clerk", "what does the web page say?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked, taint=["web"])
    reply = await delivered(shop.fleet, "asker", "reply", request)
    assert reply.sender == "clerk" and reply.taint == ("llm", "web")  # the ask carried it to the clerk and back
    answer = await shop.answer(request)
    assert answer.taint == ("llm", "web")


async def test_it_asks_another_pydantic_ai_agent_whose_output_is_the_answer(shop: Shop) -> None:
    asked = question("pyd", "anything sold?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    answer = await shop.answer(request)
    assert answer.payload.decode() == "learned: done: []"  # pyd's run: no calls listed, so its output is that
