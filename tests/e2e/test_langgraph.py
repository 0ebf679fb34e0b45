"""A LangGraph graph as its own process on the bus: answers, tool calls as effects, crash, hold, replay, threads.

The graph is tests/e2e/langgraph_agents.py: a compiled graph given to ``trustbus agent run`` as is, with a
stand-in chat model that counts its calls in a file. One fleet serves the whole module; the checks shared by
every framework are tests/e2e/framework_shop.py's, the graph's threads and ``interrupt()`` are checked here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e import framework_shop as check
from tests.e2e.framework_shop import Shop, held, open_shop
from tests.e2e.test_approvals import cli
from trustbus.adapters.langgraph import INTERRUPT_TOOL
from trustbus.bus import EmbeddedServer, Envelope

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    async with open_shop(nats_server, tmp_path_factory, "graph", "tests.e2e.langgraph_agents", "langgraph") as shop:
        yield shop


first: dict[str, Envelope] = {}  # the first test's reply, whose thread a later process goes on with


async def test_answers_a_message_and_its_tool_node_call_is_an_effect(shop: Shop) -> None:
    first["answer"] = await check.answers_a_message_and_its_tool_call_is_an_effect(shop)


async def test_killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    await check.killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop)


async def test_the_restarted_process_goes_on_with_a_thread_from_its_checkpoint(shop: Shop) -> None:
    """The first test's thread was kept by the process killed above; the next message in it is turn 2."""
    mug = {"tool": "record_sale", "args": {"item": "mug"}}
    request, answered = first["answer"].correlation_id, first["answer"].id
    follow_up = await shop.ask(mug, correlation_id=request, causation_id=answered)
    answer = await shop.answer(request, after=follow_up)
    assert answer.payload.decode() == 'done: [{"sale": 4}] (turn 2)'


async def test_tainted_high_risk_tool_call_is_held_runs_once_on_approval_and_replays_without_the_model(
    shop: Shop,
) -> None:
    await check.tainted_high_risk_call_is_held_runs_once_on_approval_and_replays_without_the_model(shop)


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
    assert answer.payload.decode() == 'done: ["not confirmed"]'
    assert shop.system_calls("refund:8/500") == (0, 0)


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/langgraph_after.py (its model node is synchronous)."""
    await check.the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop)
