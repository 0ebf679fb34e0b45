"""An OpenAI Agents SDK agent for process tests, with a stand-in model that does what its prompt lists.

The prompt is JSON, ``{"calls": [{"tool": ..., "args": {...}}, ...]}``: the model asks for each call in
turn, then answers ``done: <the tool outputs>``. Every model call appends the prompt to the file in
$TB_TEST_MODEL_CALLS, so a test counts them from outside; with $TB_TEST_NO_MODEL set the model raises
instead (a replay must answer every call from the ledger). The tools act on the SQLite "system" of
tests/e2e/fleet_agents.py, once per idempotency key.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agents import Agent, Model, ModelResponse, Usage, function_tool
from agents.items import TResponseStreamEvent
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from tests.e2e.fleet_agents import MODEL_CALLS, NO_MODEL, act, sell
from trustbus.adapters.openai_agents import idempotency_key


def _read(output: str) -> Any:
    """A tool's output as the SDK gives it the model, ``str(result)``, read back as pydantic-ai gives it."""
    try:
        return ast.literal_eval(output)
    except (ValueError, SyntaxError):  # a message, not a value (a denial)
        return output


class StandIn(Model):
    """Asks for the prompt's calls one by one, then reports their outputs."""

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        if os.environ.get(NO_MODEL):
            raise AssertionError("the model was called")
        items = [{"role": "user", "content": input}] if isinstance(input, str) else input
        prompt = items[0]["content"]
        with Path(os.environ[MODEL_CALLS]).open("a") as calls:  # noqa: ASYNC230 (a line, in a test's stand-in)
            calls.write(json.dumps(prompt) + "\n")
        outputs = [_read(i["output"]) for i in items if i.get("type") == "function_call_output"]
        wanted = json.loads(prompt)["calls"]
        if len(outputs) < len(wanted):
            call, n = wanted[len(outputs)], len(outputs)
            arguments = json.dumps(call["args"])
            asked: Any = ResponseFunctionToolCall(
                type="function_call", name=call["tool"], arguments=arguments, call_id=f"call-{n}", id=f"fc-{n}"
            )
        else:
            text = ResponseOutputText(type="output_text", text="done: " + json.dumps(outputs), annotations=[])
            asked = ResponseOutputMessage(
                type="message", id="msg-done", role="assistant", status="completed", content=[text]
            )
        return ModelResponse(output=[asked], usage=Usage(requests=1), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError


@function_tool
async def record_sale(item: str, hang: bool = False) -> dict[str, Any]:
    """Sell ``item``; with ``hang`` the first call blocks after the sale is stored."""
    return await sell(item, hang, idempotency_key())


@function_tool
async def issue_refund(order: int, amount: int) -> dict[str, Any]:
    """Refund ``amount`` on ``order`` (high risk in the registry)."""
    return {"refund": act("refund", f"{order}/{amount}", idempotency_key())}


@function_tool(needs_approval=True)
async def void_sale(sale: int) -> dict[str, Any]:
    """Void sale ``sale``: the SDK's own approval flag asks for a person."""
    return {"void": act("void", str(sale), idempotency_key())}


agent = Agent(
    name="shop",
    instructions="Make the calls you are asked to make.",
    model=StandIn(),
    tools=[record_sale, issue_refund, void_sale],
)

changed = agent.clone(instructions="Make only the calls you are asked to make.")
"""A new version of the agent, with other instructions: its first model call is not the recorded one."""
