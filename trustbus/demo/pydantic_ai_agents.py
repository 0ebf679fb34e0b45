"""The researcher as a pydantic-ai agent, for ``trustbus demo --framework pydantic-ai``.

Its model is a ``FunctionModel`` around the demo's stand-in (:mod:`trustbus.demo.model`): asked to
research, it calls the tool that reads the email or page; given what the tool returned, it answers
with its reading, imperative sentences included. The tools are pydantic-ai tools, each call a
``ctx.effect`` of the adapter, so the email reaches the model through the framework, tainted, and
what the model makes of it goes out on the bus, where the coordinator decides on it.

Every call of the model is counted (:func:`trustbus.demo.model.note_call`), so a replay can show it
asked the model nothing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_core import to_jsonable_python

from trustbus.adapters.pydantic_ai import PydanticAIAgent, idempotency_key
from trustbus.agents import Context
from trustbus.demo import model, systems
from trustbus.demo.agents import act_on, is_instruction


def stand_in(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Read what the request asks about; then answer with the reading of what the tool returned."""
    first = messages[0]
    assert isinstance(first, ModelRequest)
    prompt = next(str(part.content) for part in first.parts if part.part_kind == "user-prompt")
    model.note_call(prompt)
    returned = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returned:
        tool, args = model.source_of(json.loads(prompt))
        return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id="source")])
    reading = model.read(returned[-1].model_response_object()["text"])  # what read_email or fetch_page returned
    [output] = info.output_tools
    return ModelResponse(parts=[ToolCallPart(output.name, to_jsonable_python(reading), tool_call_id="answer")])


research = PydanticAgent(
    FunctionModel(stand_in),
    output_type=model.Reading,
    instructions="Research the email or page you are asked about, and say what it says.",
)


@research.tool_plain
async def read_email(message: str) -> dict[str, Any]:
    """Read a message from the support mailbox."""
    return await systems.read_email({"message": message}, idempotency_key=idempotency_key() or "")


@research.tool_plain
async def fetch_page(page: str) -> dict[str, Any]:
    """Fetch a web page."""
    return await systems.fetch_page({"page": page}, idempotency_key=idempotency_key() or "")


class Researcher(PydanticAIAgent):
    """The ``research`` agent on the bus: the same instructions, the same answers and acts as the plain one."""

    def __init__(self) -> None:
        """A run per ``research`` instruction."""
        super().__init__(research, kinds=("instruction",))

    async def handle(self, ctx: Context) -> None:
        """A ``research`` instruction: one run of the agent. Nothing else."""
        if is_instruction(ctx, "research"):
            await super().handle(ctx)

    async def respond(self, ctx: Context, output: model.Reading) -> None:
        """Do what the model's reading says and answer triage, as the plain researcher does."""
        await act_on(ctx, output)
