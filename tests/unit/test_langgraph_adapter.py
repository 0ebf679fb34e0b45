"""The LangGraph adapter's pure parts: how a generation is keyed and recorded, a thread kept, a graph loaded and run."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypedDict, cast

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

from tests.e2e import langgraph_agents
from tests.e2e.langgraph_agents import StandIn, record_sale
from trustbus.adapters._frameworks import framework_agent
from trustbus.adapters._langchain_calls import Run, current, dump_result, load_result, request_arguments
from trustbus.adapters._langgraph_threads import BusCheckpointer
from trustbus.adapters.langgraph import INTERRUPT_TOOL, MODEL_TOOL, LangGraphAgent, last_message, on_bus
from trustbus.agents import Context, RuntimeSetupError, reexecute
from trustbus.agents._process import load_agent
from trustbus.bus import new_envelope


def test_the_same_conversation_makes_the_same_arguments_whatever_the_ids_the_graph_drew() -> None:
    first = [HumanMessage("hi", id="a"), AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": "c"}], id="b")]
    again = [HumanMessage("hi", id="x"), AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": "c"}], id="y")]
    assert request_arguments(first) == request_arguments(again)
    assert request_arguments(first) != request_arguments([HumanMessage("hi!"), first[1]])
    assert request_arguments(first)["request"]["type"] == "ai"


def test_a_generation_comes_back_from_its_record_as_it_was() -> None:
    message = AIMessage("", tool_calls=[{"name": "t", "args": {"n": 1}, "id": "c"}], id="run-1")
    result = ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish": "tool"})])
    recorded = json.loads(json.dumps(dump_result(result)))
    assert load_result(recorded) == result


def test_a_compiled_graph_is_recognised_and_its_tool_node_tools_are_bound() -> None:
    agent = load_agent("tests.e2e.langgraph_agents:agent", adapt=framework_agent)
    assert isinstance(agent, LangGraphAgent)
    assert set(agent.tools) == {"record_sale", "issue_refund", MODEL_TOOL, INTERRUPT_TOOL}
    assert [tool.name for tool in agent.builtin_tools] == [MODEL_TOOL, INTERRUPT_TOOL]
    assert langgraph_agents.agent.checkpointer is None  # the graph given is left as it was; the agent runs a copy


def test_a_tool_node_with_a_wrapper_of_its_own_is_refused() -> None:
    async def mine(request: Any, execute: Any) -> Any:
        return await execute(request)

    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode([record_sale], awrap_tool_call=mine))
    builder.add_edge(START, "tools")
    with pytest.raises(RuntimeSetupError, match="tool node 'tools' has a tool call wrapper"):
        on_bus(builder.compile())


def test_the_reply_is_the_last_message_text_as_text_anything_else_as_json() -> None:
    assert last_message({"messages": [HumanMessage("q"), AIMessage("a")]}) == "a"
    assert last_message({"messages": [ToolMessage([{"type": "text", "text": "t"}], tool_call_id="c")]}) == [
        {"type": "text", "text": "t"}
    ]


async def test_a_thread_kept_is_restored_and_the_least_recent_dropped_past_the_limit() -> None:
    kept = BusCheckpointer(keep=2)
    values = {"messages": [HumanMessage("hi", id="h"), AIMessage("hello", id="a")]}
    for thread in ("t1", "t2", "t3"):
        kept.commit(thread, f"d-{thread}", values)
    saved = json.loads(json.dumps(kept.saved()))
    restored = BusCheckpointer()
    restored.load(saved)
    assert list(restored.threads) == ["t2", "t3"] and restored.applied("t3") == "d-t3"
    assert restored.values("t3") == values and restored.values("t1") is None

    builder = StateGraph(MessagesState)
    builder.add_node("echo", lambda state: {"messages": [AIMessage(f"seen {len(state['messages'])}", id="e")]})
    builder.add_edge(START, "echo")
    compiled = builder.compile(checkpointer=restored)
    config: Any = {"configurable": {"thread_id": "t3"}}
    await restored.restore("t3")
    result = await compiled.ainvoke({"messages": [HumanMessage("again", id="h2")]}, config)
    assert [m.content for m in result["messages"]] == ["hi", "hello", "again", "seen 3"]


class Counted(TypedDict):
    question: str
    asked: int


class Question(TypedDict):
    question: str


async def test_a_kept_thread_keeps_the_keys_its_graph_takes_no_input_for() -> None:
    builder = StateGraph(Counted, input_schema=Question)
    builder.add_node("count", lambda state: {"asked": state.get("asked", 0) + 1})
    builder.add_edge(START, "count")
    kept = BusCheckpointer()
    kept.commit("t", "d", {"question": "first", "asked": 5})
    await kept.restore("t")
    result = await builder.compile(checkpointer=kept).ainvoke(
        {"question": "next"}, {"configurable": {"thread_id": "t"}}
    )
    assert result == {"question": "next", "asked": 6}


async def test_an_interrupt_is_a_call_of_the_high_risk_built_in_graph_interrupt() -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(str(interrupt({"confirm": state["messages"][-1].content})))]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    agent = on_bus(builder.compile())
    assert {tool.name: tool.high_risk for tool in agent.builtin_tools} == {MODEL_TOOL: False, INTERRUPT_TOOL: True}
    envelope = new_envelope(tenant="t", kind="event", sender="b", to=("lg",), payload=b"pay", content_type="text/plain")
    [replayed] = await reexecute(agent, "lg", [(envelope, ())], recorded_sends={}, effects={})
    asked = [d.replayed for d in replayed.divergences if d.what == "effect"]
    assert asked == [f'{INTERRUPT_TOOL}({{"interrupts": [{{"confirm": "pay"}}]}}) has no completed record']


async def test_a_synchronous_model_call_on_the_loop_of_a_run_is_refused_not_left_to_block_it() -> None:
    on_bus(langgraph_agents.agent)  # the models are recorded from then on
    token = current.set(Run(cast(Context, None), asyncio.get_running_loop()))
    try:
        with pytest.raises(RuntimeError, match="synchronous model call inside an async node"):
            StandIn().invoke([HumanMessage("{}")])
    finally:
        current.reset(token)
