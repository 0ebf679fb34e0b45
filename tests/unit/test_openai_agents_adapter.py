"""The OpenAI Agents SDK adapter's pure parts: how a model call is keyed and recorded, an agent loaded and refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from agents import Agent, Model, ModelResponse, Runner, Usage, WebSearchTool, function_tool
from agents.tool_context import ToolContext
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from trustbus.adapters._frameworks import framework_agent
from trustbus.adapters.openai_agents import (
    MODEL_TOOL,
    OpenAIAgent,
    RecordedModel,
    _recorded_tool,
    dump_response,
    load_response,
    on_bus,
    request_arguments,
)
from trustbus.agents import RuntimeSetupError, load_agent


def said(text: str) -> ResponseOutputMessage:
    content = [ResponseOutputText(type="output_text", text=text, annotations=[])]
    return ResponseOutputMessage(type="message", id="msg-1", role="assistant", status="completed", content=content)


class Scripted(Model):
    """Asks for ``lookup`` once, then answers; records what it was asked; its usage differs every call."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, Any]] = []

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        self.asked.append((system_instructions, input))
        if len(self.asked) == 1:
            call = ResponseFunctionToolCall(type="function_call", name="lookup", arguments='{"order": "A-1"}',
                                            call_id="call-1", id="fc-1")  # fmt: skip
            return ModelResponse(output=[call], usage=Usage(requests=1, input_tokens=id(self) % 97), response_id=None)
        return ModelResponse(output=[said("shipped")], usage=Usage(requests=1), response_id="resp-2")

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


@function_tool
def lookup(order: str) -> str:
    """The order's status."""
    return f"{order}: shipped"


async def conversation(prompt: str, instructions: str = "be brief") -> list[dict[str, Any]]:
    """The arguments of every model call one run of a small agent makes."""
    model = Scripted()
    await Runner.run(Agent(name="a", instructions=instructions, model=model, tools=[lookup]), prompt)
    return [request_arguments(instructions, input) for instructions, input in model.asked]


@pytest.fixture(autouse=True)
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")


async def test_the_same_conversation_makes_the_same_arguments_on_every_run() -> None:
    first, again = await conversation("where is A-1?"), await conversation("where is A-1?")
    assert first == again and len(first) == 2
    assert first[0]["request"] == {"role": "user", "content": "where is A-1?"}
    assert first[1]["request"] == {"type": "function_call_output", "call_id": "call-1", "output": "A-1: shipped"}
    assert first[0]["instructions"] == "be brief"
    assert request_arguments("be brief", "where is A-1?") == first[0]  # a string input is the user's message


async def test_another_prompt_or_other_instructions_make_other_arguments() -> None:
    base, other_prompt = await conversation("where is A-1?"), await conversation("where is A-2?")
    other_instructions = await conversation("where is A-1?", instructions="be long")
    assert len({json.dumps(c[0], sort_keys=True) for c in (base, other_prompt, other_instructions)}) == 3
    assert base[1]["request"] == other_prompt[1]["request"] and base[1]["history"] != other_prompt[1]["history"]


def test_a_response_is_recorded_as_json_and_read_back_the_same() -> None:
    call = ResponseFunctionToolCall(type="function_call", name="lookup", arguments="{}", call_id="c", id="fc")
    response = ModelResponse(output=[call, said("hi")], usage=Usage(requests=1, input_tokens=7), response_id="r")
    recorded = json.loads(json.dumps(dump_response(response)))
    assert load_response(recorded) == response
    assert [item["type"] for item in recorded["output"]] == ["function_call", "message"]


def test_agent_run_loads_an_sdk_agent_only_through_the_adapter_lookup() -> None:
    agent = load_agent("tests.e2e.oai_agents:agent", adapt=framework_agent)
    assert isinstance(agent, OpenAIAgent)
    assert sorted(agent.tools) == ["issue_refund", MODEL_TOOL, "record_sale", "void_sale"]
    assert [tool.name for tool in agent.builtin_tools] == [MODEL_TOOL]
    assert agent.high_risk_tools == {"void_sale"}  # needs_approval: agent run raises its registry entry
    with pytest.raises(RuntimeSetupError, match="nor an agent of a known framework"):
        load_agent("tests.e2e.oai_agents:agent")


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"tools": [WebSearchTool()]}, r"tools web_search are not function tools"),
        ({"handoffs": [Agent(name="other")]}, r"handoffs or MCP servers"),
    ],
)  # fmt: skip
def test_what_a_run_on_the_bus_would_not_record_is_refused_at_start(changes: dict[str, Any], refused: str) -> None:
    with pytest.raises(RuntimeSetupError, match=refused):
        on_bus(Agent(name="a", model=Scripted(), **changes))


def test_a_streamed_response_is_refused() -> None:
    recorded = RecordedModel(Scripted(), ctx=None)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match=r"Runner\.run"):
        recorded.stream_response(None, "hi", None, [], None, [], None, previous_response_id=None,  # type: ignore[arg-type]
                                 conversation_id=None, prompt=None)  # fmt: skip


def test_a_model_named_is_made_only_when_called_so_a_replay_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agent = on_bus(Agent(name="a", model="gpt-5"))
    assert sorted(agent.tools) == [MODEL_TOOL]


async def test_arguments_that_are_not_a_json_object_are_refused_by_the_sdk_and_run_nothing() -> None:
    ran: list[str] = []

    @function_tool
    def refund(order: str) -> str:
        """Refund ``order``."""
        ran.append(order)
        return "refunded"

    recorded = _recorded_tool(refund, ctx=None, turn=asyncio.Lock(), holds={})  # type: ignore[arg-type]  # no call reaches ctx
    tool_ctx = ToolContext(context=None, tool_name="refund", tool_call_id="c", tool_arguments="{not json")
    told = await recorded.on_invoke_tool(tool_ctx, "{not json")
    assert "error" in str(told).lower() and ran == []
