"""A support assistant written with LangGraph: a graph that looks orders up and refunds them.

docs/FRAMEWORKS.md shows this file before and after it was put on the bus, and how to run each.
Its chat model is a local stand-in; a real one (``ChatOpenAI(...).bind_tools([lookup_order, refund_order])``)
replaces it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from trustbus.adapters.langgraph import idempotency_key, on_bus

ORDERS = {"A-1": {"status": "shipped", "amount": 25}, "A-2": {"status": "lost", "amount": 40}}
REFUNDS: dict[str, dict[str, Any]] = {}
"""Stand-in for a payments API: like a real one, it takes an idempotency key and drops a repeat."""


def pay_back(order_id: str, amount: int, idempotency_key: str | None = None) -> dict[str, Any]:
    """Pay ``amount`` back on ``order_id``, once per idempotency key."""
    refund = {"refund_id": f"rf-{len(REFUNDS) + 1}", "order": order_id, "amount": amount}
    return REFUNDS.setdefault(idempotency_key or f"{order_id}-{len(REFUNDS)}", refund)


@tool
def lookup_order(order_id: str) -> str:
    """The order's status and amount."""
    return str(ORDERS.get(order_id, {"status": "unknown"}))


@tool
def refund_order(order_id: str) -> str:
    """Refund an order in full."""
    return str(pay_back(order_id, ORDERS[order_id]["amount"], idempotency_key()))


class StandIn(BaseChatModel):
    """A local model: looks up (or refunds) the order the question names, then says what the tool returned."""

    @property
    def _llm_type(self) -> str:
        return "stand-in"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            answer = AIMessage(f"{last.name}: {last.content}")
        elif (order := re.search(r"\b[A-Z]-\d+\b", str(last.content))) is None:
            answer = AIMessage("Which order? Its number looks like A-1.")
        else:
            name = "refund_order" if "refund" in str(last.content).lower() else "lookup_order"
            answer = AIMessage("", tool_calls=[{"name": name, "args": {"order_id": order.group()}, "id": "call-1"}])
        return ChatResult(generations=[ChatGeneration(message=answer)])


model = StandIn()


def assistant(state: MessagesState) -> dict[str, Any]:
    """Answer the customer, or ask for a tool call."""
    return {"messages": [model.invoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("assistant", assistant)
builder.add_node("tools", ToolNode([lookup_order, refund_order]))
builder.add_edge(START, "assistant")
builder.add_conditional_edges("assistant", tools_condition)
builder.add_edge("tools", "assistant")
support = builder.compile(checkpointer=InMemorySaver())
app = on_bus(support)


if __name__ == "__main__":
    question = " ".join(sys.argv[1:]) or "Where is order A-1?"
    state = support.invoke({"messages": [("user", question)]}, {"configurable": {"thread_id": "console"}})
    print(state["messages"][-1].content)
