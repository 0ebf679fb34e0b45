"""A pydantic-ai agent as its own process on the bus: answers, tool calls as effects, crash, hold, replay.

The agent is tests/e2e/pydantic_agents.py: a ``pydantic_ai.Agent`` given to ``trustbus agent run`` as is,
with a stand-in ``FunctionModel`` that counts its calls in a file. One fleet serves the whole module.
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
    open_shop,
    prompt_of,
    refund_held_then_approved,
    run_the_docs_example,
    sell_a_lamp,
    sell_through_a_crash,
)
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
    _, answer = await sell_a_lamp(shop)
    assert answer.payload.decode() == 'done: [{"sale": 1}]'


async def test_killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    answer = await sell_through_a_crash(shop)
    assert answer.payload.decode() == 'done: [{"sale": 2}, {"sale": 3}]'


async def test_tainted_high_risk_tool_call_is_held_runs_once_on_approval_and_replays_without_the_model(
    shop: Shop,
) -> None:
    request = await refund_held_then_approved(shop)

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
    assert shop.model_calls(prompt_of(REFUND)) == 2


async def test_the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/pydantic_ai_after.py, as docs/FRAMEWORKS.md runs it."""
    await run_the_docs_example(shop, "examples.frameworks.pydantic_ai_after:app")
