"""A pydantic-ai agent for process tests, with a stand-in model that does what its prompt lists.

The prompt is JSON, ``{"calls": [{"tool": ..., "args": {...}}, ...]}``: the model asks for each call in
turn, then answers ``done: <the tool results>``. Every model call appends the prompt to the file in
$TB_TEST_MODEL_CALLS, so a test counts them from outside; with $TB_TEST_NO_MODEL set the model raises
instead (a replay must answer every request from the ledger). The tools act on the SQLite "system" of
tests/e2e/fleet_agents.py, once per idempotency key.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.e2e.fleet_agents import MODEL_CALLS, NO_MODEL, act, sell
from trustbus.adapters.pydantic_ai import idempotency_key


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return next(str(part.content) for part in first.parts if part.part_kind == "user-prompt")


def stand_in(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ask for the prompt's calls one by one, then report their results."""
    if os.environ.get(NO_MODEL):
        raise AssertionError("the model was called")
    prompt = _prompt(messages)
    with open(os.environ[MODEL_CALLS], "a") as calls:
        calls.write(json.dumps(prompt) + "\n")
    returns = [
        p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    wanted = json.loads(prompt)["calls"]
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


changed = Agent(
    FunctionModel(stand_in),
    instructions="Make only the calls you are asked to make.",
    tools=[record_sale, issue_refund],
)
"""A new version of the agent, with other instructions: its first model request is not the recorded one."""
