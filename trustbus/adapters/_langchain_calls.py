"""A LangChain chat model's generations and a LangGraph tool node's calls as effects of the delivery being handled.

Both hooks are installed once and act only inside a run of :class:`~trustbus.adapters.langgraph.LangGraphAgent`
(while :data:`current` holds its delivery's context); anywhere else the model and the tools run as they would.

- ``BaseChatModel._agenerate_with_cache`` / ``_generate_with_cache`` (what ``invoke``, ``ainvoke``, ``batch``
  and a graph's streaming all end in): the generation is a ``model_request`` effect; its arguments are the
  new message and a digest of those before it, its result the ``ChatResult`` dumped with
  ``message_to_dict``.
- a ``ToolNode``'s ``awrap_tool_call``: each call is a ``ctx.effect`` call under the tool's name, the result
  the ``ToolMessage`` it made, dumped the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, ToolMessage, message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.prebuilt.tool_node import ToolCallRequest, ToolNode
from langgraph.types import Command
from pydantic_core import to_jsonable_python

from trustbus.adapters._recording import MODEL_TOOL, VOLATILE, as_effect, digest_arguments, refusal
from trustbus.agents import Context, EffectDenied, RuntimeSetupError

_VOLATILE = VOLATILE | {"id"}
"""Message ids: a graph gives the messages it adds a random one."""


@dataclass
class Run:
    """The delivery a graph runs for: its context, the loop it runs on, and the lock that orders its tool calls."""

    ctx: Context
    loop: asyncio.AbstractEventLoop
    one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)


current: ContextVar[Run | None] = ContextVar("trustbus_langgraph_run", default=None)


def request_arguments(messages: list[BaseMessage]) -> dict[str, Any]:
    """The effect arguments of a generation: the last message as is, those before it as a digest (ids left out)."""
    return digest_arguments(to_jsonable_python([message_to_dict(m) for m in messages]), _VOLATILE)


def dump_result(result: ChatResult) -> dict[str, Any]:
    """A ``ChatResult`` as the JSON an effect records."""
    generations = [{"message": message_to_dict(g.message), "info": g.generation_info} for g in result.generations]
    dumped: dict[str, Any] = to_jsonable_python({"generations": generations, "llm_output": result.llm_output})
    return dumped


def load_result(recorded: Any) -> ChatResult:
    """The ``ChatResult`` :func:`dump_result` recorded."""
    messages = messages_from_dict([g["message"] for g in recorded["generations"]])
    generations = [
        ChatGeneration(message=m, generation_info=g["info"])
        for m, g in zip(messages, recorded["generations"], strict=True)
    ]
    return ChatResult(generations=generations, llm_output=recorded["llm_output"])


_agenerate = BaseChatModel._agenerate_with_cache
_generate = BaseChatModel._generate_with_cache


async def _agenerate_recorded(
    self: BaseChatModel, messages: list[BaseMessage], *args: Any, **kwargs: Any
) -> ChatResult:
    run = current.get()
    if run is None:
        return await _agenerate(self, messages, *args, **kwargs)

    async def ask() -> Any:
        return dump_result(await _agenerate(self, messages, *args, **kwargs))

    return load_result(await as_effect(run.ctx, MODEL_TOOL, request_arguments(messages), ask))


def _generate_recorded(self: BaseChatModel, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
    """A synchronous generation (a sync node's ``invoke``, in a worker thread): recorded on the run's loop."""
    run = current.get()
    if run is None:
        return _generate(self, messages, *args, **kwargs)
    if _running_loop() is run.loop:  # waiting here for the loop would block the loop for good
        raise RuntimeError("a synchronous model call inside an async node: await model.ainvoke(...) there instead")

    async def ask() -> Any:
        return dump_result(await asyncio.to_thread(_generate, self, messages, *args, **kwargs))

    recorded = as_effect(run.ctx, MODEL_TOOL, request_arguments(messages), ask)
    return load_result(asyncio.run_coroutine_threadsafe(recorded, run.loop).result())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def record_models() -> None:
    """Record every chat model's generations made inside a run on the bus (idempotent)."""
    BaseChatModel._agenerate_with_cache = _agenerate_recorded  # type: ignore[method-assign]
    BaseChatModel._generate_with_cache = _generate_recorded  # type: ignore[method-assign]


Execute = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]


async def _tool_call(request: ToolCallRequest, execute: Execute) -> ToolMessage | Command[Any]:
    """One call of a tool node: a ``ctx.effect`` call under the tool's name, in the order the model asked."""
    run = current.get()
    if run is None:
        return await execute(request)
    call = request.tool_call
    name, call_id = call["name"], call["id"] or ""

    async def make() -> Any:
        made = await execute(request)
        if not isinstance(made, ToolMessage):
            raise TypeError(f"tool {name} returned a {type(made).__name__}: on the bus a tool returns its result")
        return message_to_dict(made)

    async with run.one_at_a_time:  # effect keys count calls, so the order must not vary between attempts
        try:
            recorded = await as_effect(run.ctx, name, call["args"], make)
        except EffectDenied as refused:  # the model is told, as of any tool that failed
            content = refusal(name, refused)
            return ToolMessage(content, name=name, tool_call_id=call_id, status="error", id=refused.idempotency_key)
    [message] = messages_from_dict([recorded])
    if message.id is None:  # the same id on every attempt and in a replay, unlike the one the graph would draw
        message.id = run.ctx.effect_keys[-1]
    assert isinstance(message, ToolMessage)
    return message


def record_tool_nodes(nodes: dict[str, Any]) -> list[str]:
    """Make every call of the graph's tool nodes an effect; the names of their tools (each a registry entry).

    RuntimeSetupError if a tool node already has a tool call wrapper of its own.
    """
    names: list[str] = []
    for node_name, node in nodes.items():
        tool_node = getattr(node, "bound", None)
        if not isinstance(tool_node, ToolNode):
            continue
        wrapper = tool_node._awrap_tool_call
        if tool_node._wrap_tool_call is not None or wrapper not in (None, _tool_call):
            raise RuntimeSetupError(f"tool node {node_name!r} has a tool call wrapper: on the bus the adapter wraps it")
        tool_node._awrap_tool_call = _tool_call
        names.extend(tool_node.tools_by_name)
    return names
