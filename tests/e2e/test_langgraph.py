"""A LangGraph graph as its own process on the bus: answers, tool calls as effects, crash, hold, replay, threads.

The graph is tests/e2e/langgraph_agents.py: a compiled graph given to ``trustbus agent run`` as is, with a
stand-in chat model that counts its calls in a file. One fleet serves the whole module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e.fleet_agents import NO_MODEL
from tests.e2e.framework_shop import (
    REFUND,
    Shop,
    held,
    open_shop,
    prompt_of,
    refund_held_then_approved,
    run_the_docs_example,
    sell_a_lamp,
    sell_through_a_crash,
)
from tests.e2e.test_approvals import cli
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.adapters.langgraph import INTERRUPT_TOOL
from trustbus.bus import EmbeddedServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENT = "tests.e2e.langgraph_agents:graph"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    async with open_shop(nats_server, tmp_path_factory.mktemp("lg"), agent="graph", target=AGENT) as shop:
        yield shop


first: dict[str, str] = {}  # the first test's thread, which a later process goes on with


async def test_answers_a_message_and_its_tool_node_call_is_an_effect(shop: Shop) -> None:
    request, answer = await sell_a_lamp(shop)
    assert answer.payload.decode() == 'done: [{"sale": 1}] (turn 1)'
    first.update(request=request, answer=answer.id)


async def test_killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    answer = await sell_through_a_crash(shop)
    assert answer.payload.decode() == 'done: [{"sale": 2}, {"sale": 3}] (turn 1)'


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
    request = await refund_held_then_approved(shop)

    # Re-executed from the ledger with a model that raises if called: the same answer and checkpoint.
    env = {**shop.env, NO_MODEL: "1"}
    args = [*TRUSTBUS, "ledger", "replay", "-t", shop.fleet.tenant, "--correlation", request,
            "--execute", f"graph={AGENT}", "--json"]  # fmt: skip
    result = await one_shot_async(args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    [same] = json.loads(result.stdout)["executed"]
    assert same["agent"] == "graph" and same["divergences"] == []
    assert shop.model_calls(prompt_of(REFUND)) == 2


async def test_an_interrupt_under_taint_is_held_and_a_denial_resumes_it_with_false(shop: Shop) -> None:
    big = {"tool": "issue_refund", "args": {"order": 8, "amount": 500}}
    request = await shop.ask(big, taint=("web",))
    hold = await held(shop.fleet, request)
    assert hold.reasons == ("effect_requested", "tainted_high_risk")
    rc, out, err = await cli(shop.fleet, "approvals", "list", "-t", shop.fleet.tenant, "--json")
    assert rc == 0, err
    [listed] = [json.loads(line) for line in out.splitlines() if json.loads(line)["envelope_id"] == hold.envelope_id]
    assert listed["request"] == f'{INTERRUPT_TOOL} {{"interrupts":[{{"confirm":{{"amount":500,"order":8}}}}]}}'

    rc, _, err = await cli(shop.fleet, "deny", hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: ["not confirmed"] (turn 1)'
    assert shop.system_calls("refund:8/500") == (0, 0)


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/langgraph_after.py, as docs/FRAMEWORKS.md runs it (its model node is synchronous)."""
    await run_the_docs_example(shop, "examples.frameworks.langgraph_after:app")
