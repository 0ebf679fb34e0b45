"""A pydantic-ai agent as its own process on the bus: answers, tool calls as effects, crash, hold, replay, asks.

The agent is tests/e2e/pydantic_agents.py: a ``pydantic_ai.Agent`` given to ``trustbus agent run`` as is,
with a stand-in ``FunctionModel`` that counts its calls in a file; ``asker`` there asks other agents.
One fleet serves the whole module; the checks of the shop agent are tests/e2e/framework_shop.py's, the same
for every framework.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e import framework_shop as check
from tests.e2e.fleet_agents import NO_MODEL
from tests.e2e.framework_shop import Shop, open_shop
from tests.processes import TRUSTBUS, one_shot_async
from trustbus._supervisor import Process
from trustbus.bus import EmbeddedServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

ASKER = "tests.e2e.pydantic_agents:asker"
ASKS = [
    {"from": "boss", "to": ["asker"], "kinds": ["instruction", "event"]},
    {"from": "asker", "to": ["clerk", "billing", "pyd", "mallory"], "kinds": ["instruction"], "verbs": ["ask"]},
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    async with open_shop(
        nats_server, tmp_path_factory, "pyd", "tests.e2e.pydantic_agents", "pydantic_ai", rules=ASKS
    ) as shop:
        for agent in ("asker", "clerk", "billing"):
            await shop.fleet.key(agent)
        await shop.fleet.spawn("agent", "run", "tests.e2e.pydantic_agents:clerk", "--id", "clerk",
                               "-t", shop.fleet.tenant)  # fmt: skip
        yield shop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def asker(shop: Shop) -> list[Process]:
    """The asker's current process (the last of the list: a test that kills it starts another)."""
    return [await start_asker(shop)]


async def start_asker(shop: Shop) -> Process:
    return await shop.fleet.spawn("agent", "run", ASKER, "--id", "asker", "-t", shop.fleet.tenant, env=shop.env)


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


async def test_killed_while_a_requires_approval_call_is_held_the_approval_resumes_the_run_once(shop: Shop) -> None:
    void = {"tool": "void_sale", "args": {"sale": 3}}
    await check.killed_while_a_call_is_held_the_approval_resumes_the_run_once(shop, void, "void:3")


def question(agent: str, text: str) -> str:
    return json.dumps({"ask": agent, "question": text})


async def test_it_asks_another_agent_and_answers_its_sender_with_what_it_learned_and_replays_it(
    shop: Shop, asker: list[Process]
) -> None:
    asked = question("clerk", "how many rooms?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    ask = await shop.answer(request, "clerk", kind="instruction")
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


async def test_a_run_waiting_for_an_answer_survives_a_restart_of_its_agent(shop: Shop, asker: list[Process]) -> None:
    asked = question("billing", "what is owed?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    ask = await shop.answer(request, "billing", kind="instruction")  # billing is this test: nobody answers yet
    asker[-1].send_signal(signal.SIGKILL)
    await asker[-1].exited()
    asker.append(await start_asker(shop))

    billing = await shop.fleet.bus("billing")
    await shop.fleet.send(billing, ["asker"], {"owed": 12}, kind="reply", correlation_id=request,
                          causation_id=ask.id, hop=ask.hop + 1, taint=list(ask.taint))  # fmt: skip
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'learned: {"owed":12}'
    assert shop.model_calls(asked) == 2  # the restarted process resumed the run from its checkpoint


async def test_an_ask_to_an_agent_it_may_not_ask_fails_for_the_model(shop: Shop, asker: list[Process]) -> None:
    asked = question("mallory", "what is the admin password?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    answer = await shop.answer(request)
    assert answer.payload.decode() == (
        'learned: {"error":"\'mallory\' is not an agent this one may ask (it may ask: clerk, billing, pyd)"}'
    )


async def test_the_answer_to_a_tainted_question_is_tainted(shop: Shop, asker: list[Process]) -> None:
    asked = question("clerk", "what does the web page say?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked, taint=["web"])
    reply = await shop.answer(request, "asker", kind="reply")
    assert reply.sender == "clerk" and reply.taint == ("llm", "web")  # the ask carried it to the clerk and back
    answer = await shop.answer(request)
    assert answer.taint == ("llm", "web")


async def test_it_asks_another_pydantic_ai_agent_whose_output_is_the_answer(shop: Shop, asker: list[Process]) -> None:
    asked = question("pyd", "anything sold?")
    request = await shop.fleet.send(shop.boss, ["asker"], asked)
    answer = await shop.answer(request)
    assert answer.payload.decode() == "learned: done: []"  # pyd's run: no calls listed, so its output is that
