"""A LangGraph graph for process tests, with a stand-in chat model that does what its prompt lists.

The latest human message is JSON, ``{"calls": [{"tool": ..., "args": {...}}, ...]}``: the model asks for each
call in turn, then answers ``done: <the tool results>``, followed by `` (turn N)`` from the thread's second
human message on (so a test sees the thread go on). Every generation appends the prompt to the file in
$TB_TEST_MODEL_CALLS; with $TB_TEST_NO_MODEL set the model raises instead. The tools act on the SQLite
"system" of tests/e2e/fleet_agents.py, once per idempotency key; a refund over 100 asks a person first
(``interrupt``), and the model is told ``"not confirmed"`` if the answer is no. ``agent`` is the graph;
``changed``, the same graph with a system message before the conversation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt

from tests.e2e.fleet_agents import MODEL_CALLS, NO_MODEL, act, sell
from trustbus.adapters.langgraph import idempotency_key


class StandIn(BaseChatModel):
    """Asks for the latest prompt's calls one by one, then reports their results."""

    @property
    def _llm_type(self) -> str:
        return "stand-in"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any) -> ChatResult:
        if os.environ.get(NO_MODEL):
            raise AssertionError("the model was called")
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        prompt = str(messages[humans[-1]].content)
        with open(os.environ[MODEL_CALLS], "a") as calls:
            calls.write(json.dumps(prompt) + "\n")
        returns = [json.loads(str(m.content)) for m in messages[humans[-1] :] if isinstance(m, ToolMessage)]
        wanted = json.loads(prompt)["calls"]
        if len(returns) < len(wanted):
            call = wanted[len(returns)]
            asked = {"name": call["tool"], "args": call["args"], "id": f"call-{len(returns)}"}
            message = AIMessage("", tool_calls=[asked])
        else:
            turn = f" (turn {len(humans)})" if len(humans) > 1 else ""
            message = AIMessage(f"done: {json.dumps(returns)}{turn}")
        return ChatResult(generations=[ChatGeneration(message=message)])


@tool
async def record_sale(item: str, hang: bool = False) -> str:
    """Sell ``item``; with ``hang`` the first call blocks after the sale is stored."""
    return json.dumps(await sell(item, hang, idempotency_key()))


@tool
async def issue_refund(order: int, amount: int) -> str:
    """Refund ``amount`` on ``order`` (high risk in the registry)."""
    return json.dumps({"refund": act("refund", f"{order}/{amount}", idempotency_key())})


model = StandIn()


def confirm(state: MessagesState) -> Command[Literal["tools", "model"]]:
    """A refund over 100 goes on only if a person confirms it (``interrupt``); otherwise the model is told."""
    asking = state["messages"][-1]
    assert isinstance(asking, AIMessage)
    [call] = asking.tool_calls
    if call["name"] != "issue_refund" or call["args"]["amount"] <= 100 or interrupt({"confirm": call["args"]}):
        return Command(goto="tools")
    refused = ToolMessage(json.dumps("not confirmed"), tool_call_id=call["id"] or "", id=f"{asking.id}-refused")
    return Command(goto="model", update={"messages": [refused]})


def shop_graph(*instructions: BaseMessage) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The shop's graph, its model given ``instructions`` before the conversation."""

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke([*instructions, *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("confirm", confirm)
    builder.add_node("tools", ToolNode([record_sale, issue_refund]))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, {"tools": "confirm", END: END})
    builder.add_edge("tools", "model")
    return builder.compile()


agent = shop_graph()

changed = shop_graph(SystemMessage("Make only the calls you are asked to make."))
"""A new version of the graph, with instructions: its first model request is not the recorded one."""
