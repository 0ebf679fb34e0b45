"""A support assistant written with pydantic-ai: it looks orders up and refunds them.

docs/FRAMEWORKS.md shows this file before and after it was put on the bus, and how to run each.
Its model is a local stand-in unless ``SUPPORT_MODEL`` names a real one (``openai:gpt-5``, with
that provider's package and key).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

ORDERS = {"A-1": {"status": "shipped", "amount": 25}, "A-2": {"status": "lost", "amount": 40}}


class Payments:
    """Stand-in for a payments API: like a real one, it takes an idempotency key and drops a repeat."""

    def __init__(self) -> None:
        self.refunds: dict[str, dict[str, Any]] = {}

    def refund(self, order_id: str, amount: int, idempotency_key: str | None = None) -> dict[str, Any]:
        """Pay ``amount`` back on ``order_id``, once per idempotency key."""
        key = idempotency_key or f"{order_id}-{len(self.refunds)}"
        refund = {"refund_id": f"rf-{len(self.refunds) + 1}", "order": order_id, "amount": amount}
        return self.refunds.setdefault(key, refund)


PAYMENTS = Payments()


def stand_in(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A local model: looks up (or refunds) the order the question names, then says what the tool returned."""
    last = messages[-1]
    returned = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
    if returned:
        return ModelResponse(parts=[TextPart(f"{returned[0].tool_name}: {returned[0].content}")])
    question = " ".join(str(p.content) for p in last.parts if p.part_kind == "user-prompt")
    order = re.search(r"\b[A-Z]-\d+\b", question)
    if order is None:
        return ModelResponse(parts=[TextPart("Which order? Its number looks like A-1.")])
    tool = "refund_order" if "refund" in question.lower() else "lookup_order"
    return ModelResponse(parts=[ToolCallPart(tool, {"order_id": order.group()})])


support = Agent(
    os.environ.get("SUPPORT_MODEL") or FunctionModel(stand_in),
    instructions="You answer customers about their orders. Look an order up before you say anything about it.",
)


@support.tool_plain
def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's status and amount."""
    return ORDERS.get(order_id, {"status": "unknown"})


@support.tool_plain
def refund_order(order_id: str) -> dict[str, Any]:
    """Refund an order in full."""
    return PAYMENTS.refund(order_id, ORDERS[order_id]["amount"])


if __name__ == "__main__":
    print(support.run_sync(" ".join(sys.argv[1:]) or "Where is order A-1?").output)
