"""A compiled LangGraph graph as a trustbus agent: its model generations and tool node calls are recorded effects.

``trustbus agent run mymodule:graph`` accepts a compiled graph (``StateGraph(...).compile()``) as is (it is
wrapped with :func:`on_bus`). Each delivery (an instruction or an event, by default) is one run of the graph
on the thread named by the delivery's correlation id:

- the graph's **input** is ``{"messages": [HumanMessage(<the payload's text>)]}`` (a messages-state graph),
  or what ``input(envelope)`` returns; its **reply** is the content of the last message of the final state,
  or what ``output(values)`` returns;
- every **chat model generation** inside the run is a call of the built-in tool ``model_request`` (class
  ``read``, result taint ``llm``) through ``ctx.effect``, so a redelivery and ``ledger replay --execute``
  get the recorded answer back without calling the model;
- every **call of a tool node** (``ToolNode``) goes through ``ctx.effect`` under the tool's name: declared in
  the registry, never made again once completed, held for an operator when the tool is high risk and the
  context tainted (a call the operator denies comes back to the model as a failed tool call);
- an ``interrupt()`` is a call of the built-in high-risk tool ``graph_interrupt``, held for an operator
  under taint; the graph resumes with ``Command(resume=True)`` once approved, ``False`` once denied;
- the **thread's state** after each delivery is kept in the agent's trustbus checkpoint, so a restarted
  process goes on with the conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Interrupt
from pydantic_core import to_jsonable_python

from trustbus.adapters._langchain_calls import Run, current, record_models, record_tool_nodes
from trustbus.adapters._langgraph_threads import BusCheckpointer
from trustbus.adapters._recording import (
    MODEL_REQUEST,
    MODEL_TOOL,
    as_effect,
    idempotency_key,
    perform,
    prompt_of,
    reply_payload,
)
from trustbus.agents import Agent, Context, EffectDenied, Tool, ToolImplementation
from trustbus.bus import Envelope, Kind

__all__ = [
    "INTERRUPT_TOOL",
    "MODEL_TOOL",
    "LangGraphAgent",
    "idempotency_key",
    "last_message",
    "messages_input",
    "on_bus",
    "prompt_of",
]

log = logging.getLogger("trustbus.agent")

INTERRUPT_TOOL = "graph_interrupt"
"""The built-in registry entry a graph's ``interrupt()`` is recorded under: high risk, so held under taint."""

_INTERRUPT = Tool(name=INTERRUPT_TOOL, system="graph", owner="agent", effect_class="read", high_risk=True)

Graph = CompiledStateGraph[Any, Any, Any, Any]
Reply = str | dict[str, Any] | list[Any] | bytes


def messages_input(envelope: Envelope) -> dict[str, Any]:
    """A messages-state graph's input: the payload's text as a human message (its id the envelope's)."""
    return {"messages": [HumanMessage(prompt_of(envelope), id=envelope.id)]}


def last_message(values: dict[str, Any]) -> Reply:
    """The reply of a messages-state graph: the last message's content (text as text, anything else as JSON)."""
    messages = values.get("messages") or []
    last = messages[-1] if messages else None
    return reply_payload(last.content if isinstance(last, BaseMessage) else last)


def _interrupts_of(result: Any) -> list[Interrupt]:
    found = result.get("__interrupt__") if isinstance(result, dict) else None
    return list(found or ())


async def _approved() -> bool:
    return True


async def _answer(ctx: Context, interrupts: list[Interrupt]) -> bool:
    """Whether the run may go on past ``interrupts``: a call of the high-risk built-in ``graph_interrupt``.

    Under taint it is held for an operator: True once approved, False once denied. Untainted, nobody is
    asked (as for any high-risk call) and it is True.
    """
    try:
        await as_effect(
            ctx, INTERRUPT_TOOL, {"interrupts": [to_jsonable_python(i.value) for i in interrupts]}, _approved
        )
    except EffectDenied:
        return False
    return True


class LangGraphAgent(Agent):
    """A compiled LangGraph graph served as a trustbus agent (made by :func:`on_bus`)."""

    def __init__(
        self,
        graph: Graph,
        *,
        input: Callable[[Envelope], Any] = messages_input,
        output: Callable[[dict[str, Any]], Reply] = last_message,
        kinds: Iterable[Kind] = ("instruction", "event"),
    ) -> None:
        """``input`` maps a delivery to the graph's input, ``output`` the final state to the reply; ``kinds``:
        the envelope kinds that start a run (others are acked).

        The graph's own checkpointer, if any, is replaced by one kept in the agent's checkpoint.
        RuntimeSetupError if a tool node has a tool call wrapper of its own.
        """  # noqa: D205
        record_models()
        self.threads = BusCheckpointer()
        self.graph: Graph = graph.copy(update={"checkpointer": self.threads})
        self.input = input
        self.output = output
        self.kinds = frozenset(kinds)
        names = [*record_tool_nodes(self.graph.nodes), MODEL_TOOL, INTERRUPT_TOOL]
        self.tools: Mapping[str, ToolImplementation] = MappingProxyType(dict.fromkeys(names, perform))
        self.builtin_tools = (MODEL_REQUEST, _INTERRUPT)

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Take the threads kept in the agent's last checkpoint."""
        self.threads.load(checkpoint)

    async def handle(self, ctx: Context) -> None:
        """Run the graph on the delivery's thread, keep the thread's state, and reply with the output."""
        envelope = ctx.envelope
        if envelope.kind not in self.kinds:
            log.info("kind not served; acked", extra={"kind": envelope.kind, "envelope_id": envelope.id})
            return
        thread = envelope.correlation_id
        config: RunnableConfig = {"configurable": {"thread_id": thread}}
        if self.threads.applied(thread) != envelope.id:  # else its run completed and was kept: only the reply is due
            await self.threads.restore(thread)
            token = current.set(Run(ctx, asyncio.get_running_loop()))
            try:
                result = await self.graph.ainvoke(self.input(envelope), config)
                while interrupts := _interrupts_of(result):
                    answer = await _answer(ctx, interrupts)
                    result = await self.graph.ainvoke(Command(resume={i.id: answer for i in interrupts}), config)
            finally:
                current.reset(token)
            state = await self.graph.aget_state(config)
            self.threads.commit(thread, envelope.id, state.values)
            await ctx.checkpoint(self.threads.saved())
        values = self.threads.values(thread) or {}
        await ctx.reply(self.output(values))


def on_bus(
    graph: Graph,
    *,
    input: Callable[[Envelope], Any] = messages_input,
    output: Callable[[dict[str, Any]], Reply] = last_message,
    kinds: Iterable[Kind] = ("instruction", "event"),
) -> LangGraphAgent:
    """Wrap ``graph`` for ``trustbus agent run``: each delivery of one of ``kinds`` is a run on its thread."""
    return LangGraphAgent(graph, input=input, output=output, kinds=kinds)
