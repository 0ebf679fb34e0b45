"""A pydantic-ai agent as its own process on the bus: answers, tool calls as effects, crash, hold, replay.

The agent is tests/e2e/pydantic_agents.py: a ``pydantic_ai.Agent`` given to ``trustbus agent run`` as is,
with a stand-in ``FunctionModel`` that counts its calls in a file. One fleet serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e.fleet_agents import NO_MODEL
from tests.e2e.framework_shop import Shop, held, open_shop, prompt_of
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.adapters.pydantic_ai import MODEL_TOOL
from trustbus.bus import EmbeddedServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENT = "tests.e2e.pydantic_agents:agent"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    async with open_shop(nats_server, tmp_path_factory.mktemp("pyd"), agent="pyd", target=AGENT) as shop:
        yield shop


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
