"""An OpenAI Agents SDK agent as its own process on the bus: answers, tool calls as effects, crash, hold, replay.

The agent is tests/e2e/oai_agents.py: an ``agents.Agent`` given to ``trustbus agent run`` as is, with a
stand-in ``Model`` that counts its calls in a file. One fleet serves the whole module; the checks are
tests/e2e/framework_shop.py's, the same for every framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e import framework_shop as check
from tests.e2e.framework_shop import Shop, open_shop
from trustbus.bus import EmbeddedServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

NO_TRACING = {"OPENAI_AGENTS_DISABLE_TRACING": "1"}  # the SDK would export traces to OpenAI, with no key


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    async with open_shop(
        nats_server, tmp_path_factory, "oai", "tests.e2e.oai_agents", "openai_agents", NO_TRACING
    ) as shop:
        yield shop


async def test_answers_a_message_and_its_tool_call_is_an_effect(shop: Shop) -> None:
    await check.answers_a_message_and_its_tool_call_is_an_effect(shop)


async def test_killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    await check.killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop)


async def test_tainted_high_risk_tool_call_is_held_runs_once_on_approval_and_replays_without_the_model(
    shop: Shop,
) -> None:
    await check.tainted_high_risk_call_is_held_runs_once_on_approval_and_replays_without_the_model(shop)


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    await check.the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop)


async def test_a_held_call_ends_the_run_the_agent_answers_others_meanwhile_and_a_denial_reaches_the_model(
    shop: Shop,
) -> None:
    await check.a_held_call_ends_the_run_the_agent_answers_others_meanwhile_and_a_denial_reaches_the_model(shop)


async def test_killed_while_a_needs_approval_call_is_held_the_approval_resumes_the_run_once(shop: Shop) -> None:
    void = {"tool": "void_sale", "args": {"sale": 4}}
    await check.killed_while_a_call_is_held_the_approval_resumes_the_run_once(shop, void, "void:4")
