"""An OpenAI Agents SDK agent as a trustbus agent: its model calls and function tool calls are recorded effects.

``trustbus agent run mymodule:agent`` accepts an ``agents.Agent`` of the SDK as is (it is wrapped with
:func:`on_bus`). Each delivery (an instruction or an event, by default) is one ``Runner.run`` of the agent:
the payload is the run's input, its ``final_output`` the reply. Within the run:

- every model call is a call of the built-in tool ``model_request`` (class ``read``, result taint ``llm``)
  through ``ctx.effect``: its arguments are the system instructions, the newest input item and a digest of
  the items before it; its result the SDK's ``ModelResponse`` (its output items dumped with the SDK's own
  pydantic types). A redelivery, and ``ledger replay --execute``, get the recorded response back without
  calling the model; a replayed run that asks something else diverges.
- every function tool call goes through ``ctx.effect`` under the tool's name, so it must be listed in the
  registry given with ``--tools``; a completed call is never made again, and a call to a high-risk tool under
  taint waits for the coordinator (and an operator) before the tool function runs. A call the operator
  denies returns an error message to the model, as a tool that failed does in the SDK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from agents import Agent as SDKAgent
from agents import FunctionTool, Model, ModelResponse, ModelSettings, ModelTracing, MultiProvider, Runner
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.tool import Tool as SDKTool
from agents.tool_context import ToolContext
from agents.usage import deserialize_usage, serialize_usage
from openai.types.responses.response_prompt_param import ResponsePromptParam
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from trustbus.adapters._recording import (
    MODEL_REQUEST,
    MODEL_TOOL,
    as_effect,
    digest_arguments,
    idempotency_key,
    perform,
    prompt_of,
    reply_payload,
)
from trustbus.agents import Agent, Context, EffectDenied, RuntimeSetupError, ToolImplementation
from trustbus.bus import Kind

__all__ = [
    "MODEL_TOOL",
    "OpenAIAgent",
    "RecordedModel",
    "dump_response",
    "idempotency_key",
    "load_response",
    "on_bus",
    "request_arguments",
]

log = logging.getLogger("trustbus.agent")

_OUTPUT: TypeAdapter[list[TResponseOutputItem]] = TypeAdapter(list[TResponseOutputItem])


def request_arguments(system_instructions: str | None, input: str | list[TResponseInputItem]) -> dict[str, Any]:
    """The effect arguments of a model call: the instructions and the newest input item as is, the rest as a digest.

    Usage and timestamps are left out, so the same conversation makes the same arguments (and so the same
    idempotency key) on every attempt and in a replay.
    """
    items = [{"role": "user", "content": input}] if isinstance(input, str) else to_jsonable_python(input)
    return {"instructions": system_instructions, **digest_arguments(items)}


def dump_response(response: ModelResponse) -> dict[str, Any]:
    """``response`` as JSON, its output items dumped with the SDK's own types."""
    return {
        "output": _OUTPUT.dump_python(response.output, mode="json", by_alias=True),
        "usage": serialize_usage(response.usage),
        "response_id": response.response_id,
        "request_id": response.request_id,
    }


def load_response(recorded: dict[str, Any]) -> ModelResponse:
    """The ``ModelResponse`` :func:`dump_response` made ``recorded`` of."""
    return ModelResponse(
        output=_OUTPUT.validate_python(recorded["output"]),
        usage=deserialize_usage(recorded.get("usage") or {}),
        response_id=recorded.get("response_id"),
        request_id=recorded.get("request_id"),
    )


class RecordedModel(Model):
    """A model whose every call is a ``model_request`` effect of the delivery being handled."""

    def __init__(self, wrapped: Model, ctx: Context) -> None:
        """``ctx``: the context of the delivery the run handles."""
        self.wrapped = wrapped
        self._ctx = ctx

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[SDKTool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        """The recorded response to this call, or the wrapped model's, recorded first."""

        async def ask() -> Any:
            response = await self.wrapped.get_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            )
            return dump_response(response)

        recorded = await as_effect(self._ctx, MODEL_TOOL, request_arguments(system_instructions, input), ask)
        return load_response(recorded)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        """Refused: a streamed response is not recorded (a run on the bus is ``Runner.run``)."""
        raise NotImplementedError("a streamed model response is not recorded on the bus: run the agent with Runner.run")


def _recorded_tool(tool: FunctionTool, ctx: Context, turn: asyncio.Lock) -> FunctionTool:
    """``tool`` with its every call a ``ctx.effect`` call under its name, one at a time (``turn``)."""
    invoke = tool.on_invoke_tool

    async def on_invoke_tool(tool_ctx: ToolContext[Any], arguments: str) -> Any:
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):  # the SDK's own invocation refuses it to the model and runs nothing
            return await invoke(tool_ctx, arguments)
        # One call at a time, in the order the SDK starts them: effect keys count calls.
        async with turn:
            try:
                return await as_effect(ctx, tool.name, args, lambda: invoke(tool_ctx, arguments))
            except EffectDenied as refused:  # told to the model, as the SDK tells it a tool's failure
                by = f" by {refused.approver}" if refused.approver else ""
                return f"{tool.name} was not run: {refused.reason}{by}"

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


def _function_tools(agent: SDKAgent[Any]) -> list[FunctionTool]:
    """The agent's tools, each a function tool to declare in the registry.

    RuntimeSetupError for what a run on the bus would not record: handoffs, MCP servers, tools other than
    function tools, and tools that need approval the SDK's way.
    """
    if agent.handoffs or agent.mcp_servers:
        raise RuntimeSetupError(
            "an agent with handoffs or MCP servers is not served on the bus: give it function tools"
        )
    others = sorted(tool.name for tool in agent.tools if not isinstance(tool, FunctionTool))
    if others:
        raise RuntimeSetupError(f"tools {', '.join(others)} are not function tools: their calls would not be recorded")
    tools = [tool for tool in agent.tools if isinstance(tool, FunctionTool)]
    asks = sorted(tool.name for tool in tools if tool.needs_approval is not False)
    if asks:  # its approval flow ends the run with an interruption; on the bus an approval is a hold, which waits in it
        raise RuntimeSetupError(
            f"tools {', '.join(asks)} need approval in the OpenAI Agents SDK: on the bus, declare them "
            "high_risk in the tool registry instead (a call under taint is held for an operator)"
        )
    return tools


class _Named(Model):
    """The model the SDK's default provider gives for a name, made on first use: a replay asks none, needs no key."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._model: Model | None = None

    def _resolved(self) -> Model:
        if self._model is None:
            self._model = MultiProvider().get_model(self.name)
        return self._model

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return await self._resolved().get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        stream: AsyncIterator[TResponseStreamEvent] = self._resolved().stream_response(*args, **kwargs)
        return stream


def _model_of(agent: SDKAgent[Any]) -> Model:
    """The agent's model: its own, or the one the SDK's default provider gives for its name (or none)."""
    return agent.model if isinstance(agent.model, Model) else _Named(agent.model)


class OpenAIAgent(Agent):
    """An ``agents.Agent`` of the OpenAI Agents SDK served as a trustbus agent (made by :func:`on_bus`)."""

    def __init__(
        self, agent: SDKAgent[Any], *, context: Any = None, kinds: Iterable[Kind] = ("instruction", "event")
    ) -> None:
        """``context``: the run's context object; ``kinds``: the envelope kinds that start a run (others are acked).

        RuntimeSetupError if the agent has what a run on the bus would not record (see :func:`on_bus`).
        """
        self.agent = agent
        self.context = context
        self.kinds = frozenset(kinds)
        self._tools = _function_tools(agent)
        self._model = _model_of(agent)
        names = [*(tool.name for tool in self._tools), MODEL_TOOL]
        self.tools: Mapping[str, ToolImplementation] = MappingProxyType(dict.fromkeys(names, perform))
        self.builtin_tools = (MODEL_REQUEST,)

    async def handle(self, ctx: Context) -> None:
        """Run the agent on the delivery's payload and reply with its final output."""
        if ctx.envelope.kind not in self.kinds:
            log.info("kind not served; acked", extra={"kind": ctx.envelope.kind, "envelope_id": ctx.envelope.id})
            return
        turn = asyncio.Lock()
        tools: list[SDKTool] = [_recorded_tool(tool, ctx, turn) for tool in self._tools]
        run_agent = self.agent.clone(model=RecordedModel(self._model, ctx), tools=tools)
        result = await Runner.run(run_agent, prompt_of(ctx.envelope), context=self.context)
        await ctx.reply(reply_payload(result.final_output))


def on_bus(
    agent: SDKAgent[Any], *, context: Any = None, kinds: Iterable[Kind] = ("instruction", "event")
) -> OpenAIAgent:
    """Wrap ``agent`` for ``trustbus agent run``: each delivery of one of ``kinds`` is a run, its output the reply.

    RuntimeSetupError if the agent has handoffs or MCP servers, a tool that is not a function tool, or a tool
    that needs approval (``needs_approval``): declare it ``high_risk`` in the registry instead.
    """
    return OpenAIAgent(agent, context=context, kinds=kinds)
