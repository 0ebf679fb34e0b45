"""A pydantic-ai agent for process tests, with a stand-in model that does what its prompt lists.

The prompt is JSON, ``{"calls": [{"tool": ..., "args": {...}}, ...]}``: the model asks for each call in
turn, then answers ``done: <the tool results>``. Every model call appends the prompt to the file in
$TB_TEST_MODEL_CALLS, so a test counts them from outside; with $TB_TEST_NO_MODEL set the model raises
instead (a replay must answer every request from the ledger). The tools act on the SQLite "system" of
tests/e2e/fleet_agents.py, once per idempotency key.

``asker`` may ask the agents ``clerk`` (a plain trustbus agent, ``clerk`` here), ``billing`` and ``pyd``
(``agent``): its prompt is ``{"ask": AGENT, "question": ...}``, and it answers
``learned: <the answer>`` (or what failed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.e2e.fleet_agents import MODEL_CALLS, NO_MODEL, act, sell
from trustbus.adapters.pydantic_ai import ASK_TOOL, idempotency_key, on_bus
from trustbus.agents import Context, Handlers


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return next(str(part.content) for part in first.parts if part.part_kind == "user-prompt")


def _called(messages: list[ModelMessage]) -> str:
    """The run's prompt, once the call is counted (AssertionError if the model may not be called)."""
    if os.environ.get(NO_MODEL):
        raise AssertionError("the model was called")
    prompt = _prompt(messages)
    with open(os.environ[MODEL_CALLS], "a") as calls:
        calls.write(json.dumps(prompt) + "\n")
    return prompt


def stand_in(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ask for the prompt's calls one by one, then report their results."""
    prompt = _called(messages)
    returns = [
        p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    wanted = json.loads(prompt).get("calls", [])  # an agent's question (``{"verb": "ask", ...}``) lists none
    if len(returns) < len(wanted):
        call = wanted[len(returns)]
        return ModelResponse(parts=[ToolCallPart(call["tool"], call["args"], tool_call_id=f"call-{len(returns)}")])
    return ModelResponse(parts=[TextPart("done: " + json.dumps(returns))])


agent = Agent(FunctionModel(stand_in), instructions="Make the calls you are asked to make.")


@agent.tool_plain
async def record_sale(item: str, hang: bool = False) -> dict[str, Any]:
    """Sell ``item``; with ``hang`` the first call blocks after the sale is stored."""
    return await sell(item, hang, idempotency_key())


@agent.tool_plain
async def issue_refund(order: int, amount: int) -> dict[str, Any]:
    """Refund ``amount`` on ``order`` (high risk in the registry)."""
    return {"refund": act("refund", f"{order}/{amount}", idempotency_key())}


@agent.tool_plain(requires_approval=True)
async def void_sale(sale: int) -> dict[str, Any]:
    """Void sale ``sale``: pydantic-ai's own approval flag asks for a person."""
    return {"void": act("void", str(sale), idempotency_key())}


changed = Agent(
    FunctionModel(stand_in),
    instructions="Make only the calls you are asked to make.",
    tools=[record_sale, issue_refund],
)
"""A new version of the agent, with other instructions: its first model request is not the recorded one."""


def asking(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ask the agent the prompt names its question, then say what came back."""
    wanted = json.loads(_called(messages))
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    for part in last.parts:
        if isinstance(part, ToolReturnPart | RetryPromptPart):
            return ModelResponse(parts=[TextPart(f"learned: {part.model_response_str()}")])
    call = ToolCallPart(ASK_TOOL, {"agent": wanted["ask"], "question": wanted["question"]}, tool_call_id="ask-0")
    return ModelResponse(parts=[call])


asker = on_bus(
    Agent(FunctionModel(asking), instructions="Ask whom you are told to."), peers=["clerk", "billing", "pyd"]
)

clerk = Handlers()


@clerk.on("instruction", verb="ask")
async def answer(ctx: Context) -> None:
    """Answer a question with what the clerk knows of it."""
    question = ctx.json()["question"]
    await ctx.reply({"question": question, "answer": f"{len(question)} letters"})
