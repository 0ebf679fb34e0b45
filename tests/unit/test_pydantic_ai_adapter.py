"""The pydantic-ai adapter's pure parts: how a model request is keyed, a prompt made, an agent loaded and bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from trustbus.adapters._frameworks import framework_agent
from trustbus.adapters._recording import prompt_of
from trustbus.adapters.pydantic_ai import MODEL_TOOL, PydanticAIAgent, on_bus, request_arguments
from trustbus.agents import RuntimeSetupError, UnknownTool
from trustbus.agents._process import bind_tools, load_agent
from trustbus.bus import new_envelope


async def conversation(prompt: str, instructions: str = "be brief") -> list[list[ModelMessage]]:
    """The messages of every model request one run of a small agent makes."""
    seen: list[list[ModelMessage]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        return ModelResponse(parts=[TextPart(f"echo {len(seen)}")])

    await PydanticAgent(FunctionModel(model), instructions=instructions).run(prompt)
    return seen


async def test_the_same_conversation_makes_the_same_arguments_whatever_its_timestamps_and_run_ids() -> None:
    [first], [again] = await conversation("hello"), await conversation("hello")
    assert first != again  # timestamps and run ids differ
    assert request_arguments(first) == request_arguments(again)
    arguments = request_arguments(first)
    assert arguments["request"]["parts"] == [{"content": "hello", "part_kind": "user-prompt"}]


async def test_another_prompt_or_other_instructions_make_other_arguments() -> None:
    [base] = await conversation("hello")
    [other_prompt] = await conversation("hello!")
    [other_instructions] = await conversation("hello", instructions="be long")
    assert len({str(request_arguments(m)) for m in (base, other_prompt, other_instructions)}) == 3


@pytest.mark.parametrize(
    ("payload", "content_type", "prompt"),
    [
        (b"Where is A-1?", "text/plain", "Where is A-1?"),
        (b'"Where is A-1?"', "application/json", "Where is A-1?"),
        (b'{"verb": "ask", "order": "A-1"}', "application/json", '{"verb": "ask", "order": "A-1"}'),
    ],
)
def test_a_payload_becomes_the_user_prompt(payload: bytes, content_type: Any, prompt: str) -> None:
    envelope = new_envelope(tenant="t", kind="event", sender="a", to=("b",), payload=payload, content_type=content_type)
    assert prompt_of(envelope) == prompt


def test_agent_run_loads_a_pydantic_ai_agent_only_through_the_adapter_lookup() -> None:
    agent = load_agent("tests.e2e.pydantic_agents:agent", adapt=framework_agent)
    assert isinstance(agent, PydanticAIAgent)
    assert sorted(agent.tools) == ["issue_refund", MODEL_TOOL, "record_sale", "void_sale"]
    with pytest.raises(RuntimeSetupError, match="nor an agent of a known framework"):
        load_agent("tests.e2e.pydantic_agents:agent")
    assert framework_agent(object()) is None


def test_its_tools_bind_to_the_registry_with_the_built_in_model_request(tmp_path: Path) -> None:
    agent = load_agent("tests.e2e.pydantic_agents:agent", adapt=framework_agent)
    with pytest.raises(RuntimeSetupError, match=r"implements tools \(issue_refund, record_sale, void_sale\): give"):
        bind_tools(agent, None)
    registry = tmp_path / "tools.yaml"
    entry = {"system": "till", "owner": "shop", "effect_class": "irreversible"}
    registry.write_text(yaml.safe_dump({"tools": [{"name": "record_sale", **entry}]}))
    with pytest.raises(UnknownTool, match="issue_refund"):  # every tool of the agent must be declared
        bind_tools(agent, registry)
    names = ("record_sale", "issue_refund", "void_sale")
    registry.write_text(yaml.safe_dump({"tools": [{"name": n, **entry} for n in names]}))
    toolbox = bind_tools(agent, registry)
    assert toolbox is not None
    model_request, _ = toolbox.bound(MODEL_TOOL)
    assert (model_request.effect_class, model_request.result_taint) == ("read", ("llm",))


def test_an_agent_with_no_tools_needs_no_registry() -> None:
    toolbox = bind_tools(on_bus(PydanticAgent(FunctionModel(lambda m, i: ModelResponse(parts=[])))), None)
    assert toolbox is not None and [t.name for t in toolbox.registry] == [MODEL_TOOL]


def test_a_tool_that_requires_approval_the_pydantic_ai_way_is_high_risk_on_the_bus(tmp_path: Path) -> None:
    agent = PydanticAgent(FunctionModel(lambda m, i: ModelResponse(parts=[])))

    @agent.tool_plain(requires_approval=True)
    def pay(amount: int) -> int:
        return amount

    @agent.tool_plain
    def look(order: int) -> int:
        return order

    tools = tmp_path / "tools.yaml"
    entries = [{"name": n, "system": "s", "owner": "o", "effect_class": "irreversible"} for n in ("pay", "look")]
    tools.write_text(yaml.safe_dump({"tools": entries}))
    adapted = on_bus(agent)
    assert adapted.high_risk_tools == {"pay"}
    toolbox = bind_tools(adapted, tools)
    assert toolbox is not None
    assert toolbox.registry.get("pay").high_risk and not toolbox.registry.get("look").high_risk


def test_an_agent_with_no_model_is_refused_at_start() -> None:
    with pytest.raises(RuntimeSetupError, match="has no model"):
        on_bus(PydanticAgent())
