"""A support assistant written with the OpenAI Agents SDK: it looks orders up and refunds them.

docs/FRAMEWORKS.md shows this file before and after it was put on the bus, and how to run each.
Its model is a local stand-in unless ``SUPPORT_MODEL`` names a real one (``gpt-5``, with
``OPENAI_API_KEY`` set).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

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


class StandIn(Model):
    """A local model: looks up (or refunds) the order the question names, then says what the tool returned."""

    async def get_response(
        self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        """A tool call for the question's order, or what the tool returned."""
        items = [{"role": "user", "content": input}] if isinstance(input, str) else input
        if items[-1].get("type") == "function_call_output":
            [tool] = [i["name"] for i in items if i.get("call_id") == items[-1]["call_id"] and "name" in i]
            return self.say(f"{tool}: {items[-1]['output']}")
        order = re.search(r"\b[A-Z]-\d+\b", str(items[-1]["content"]))
        if order is None:
            return self.say("Which order? Its number looks like A-1.")
        tool = "refund_order" if "refund" in str(items[-1]["content"]).lower() else "lookup_order"
        arguments = f'{{"order_id": "{order.group()}"}}'
        call = ResponseFunctionToolCall(type="function_call", name=tool, arguments=arguments, call_id="call-1")
        return ModelResponse(output=[call], usage=Usage(), response_id=None)

    def say(self, text: str) -> ModelResponse:
        """A response with ``text`` as the model's message."""
        content = [ResponseOutputText(type="output_text", text=text, annotations=[])]
        message = ResponseOutputMessage(type="message", id="msg", role="assistant", status="completed", content=content)
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        """Not used: the assistant is run with ``Runner.run``."""
        raise NotImplementedError


@function_tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's status and amount."""
    return ORDERS.get(order_id, {"status": "unknown"})


@function_tool
def refund_order(order_id: str) -> dict[str, Any]:
    """Refund an order in full."""
    return PAYMENTS.refund(order_id, ORDERS[order_id]["amount"])


support = Agent(
    name="support",
    instructions="You answer customers about their orders. Look an order up before you say anything about it.",
    model=os.environ.get("SUPPORT_MODEL") or StandIn(),
    tools=[lookup_order, refund_order],
)


if __name__ == "__main__":
    print(Runner.run_sync(support, " ".join(sys.argv[1:]) or "Where is order A-1?").final_output)
