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
  registry given with ``--tools``; a completed call is never made again.
- every function tool's ``needs_approval`` asks the coordinator (``ctx.ask_first``): a call it holds (a
  high-risk tool under taint) is an interruption of the run, the SDK's own approval flow. The run's state
  (``RunState.to_json()``) is kept in the agent's checkpoint and the agent handles other deliveries
  meanwhile; once an operator answers, the run resumes from that state after ``state.approve(item)`` (the
  tool runs once, under the held call's key) or ``state.reject(item, rejection_message=...)`` (the model
  is told). A tool declared with ``needs_approval`` is made high risk (``agent run`` raises its registry
  entry): a model's call is always under taint ``llm``, so the coordinator holds every call of it.
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
from agents import (
    FunctionTool,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    MultiProvider,
    Runner,
    RunResult,
    RunState,
)
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.run_context import RunContextWrapper
from agents.tool import Tool as SDKTool
from agents.tool_context import ToolContext
from agents.usage import deserialize_usage, serialize_usage
from openai.types.responses.response_prompt_param import ResponsePromptParam
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from trustbus.adapters._asks import AgentWithWaitingRuns, Approval, WaitingRun, WaitingRuns
from trustbus.adapters._recording import (
    MODEL_REQUEST,
    MODEL_TOOL,
    as_effect,
    digest_arguments,
    idempotency_key,
    perform,
    prompt_of,
    refusal,
    reply_payload,
)
from trustbus.agents import Context, EffectDenied, HeldCall, RuntimeSetupError, ToolImplementation
from trustbus.bus import Envelope, Kind

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


def _recorded_tool(tool: FunctionTool, ctx: Context, turn: asyncio.Lock, holds: dict[str, HeldCall]) -> FunctionTool:
    """``tool`` with its every call a ``ctx.effect`` call under its name, one at a time (``turn``).

    Whether a call needs approval is the coordinator's answer: a held call is an interruption, kept in ``holds``
    by call id.
    """
    invoke = tool.on_invoke_tool

    async def needs_approval(run: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
        async with turn:
            held = await ctx.ask_first(tool.name, params)
        if held is not None:
            holds[call_id] = held
        return held is not None

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
                return refusal(tool.name, refused)

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool, needs_approval=needs_approval)


def _function_tools(agent: SDKAgent[Any]) -> list[FunctionTool]:
    """The agent's tools, each a function tool to declare in the registry.

    RuntimeSetupError for what a run on the bus would not record: handoffs, MCP servers, tools other than
    function tools.
    """
    if agent.handoffs or agent.mcp_servers:
        raise RuntimeSetupError(
            "an agent with handoffs or MCP servers is not served on the bus: give it function tools"
        )
    others = sorted(tool.name for tool in agent.tools if not isinstance(tool, FunctionTool))
    if others:
        raise RuntimeSetupError(f"tools {', '.join(others)} are not function tools: their calls would not be recorded")
    return [tool for tool in agent.tools if isinstance(tool, FunctionTool)]


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


class OpenAIAgent(AgentWithWaitingRuns):
    """An ``agents.Agent`` of the OpenAI Agents SDK served as a trustbus agent (made by :func:`on_bus`)."""

    def __init__(
        self,
        agent: SDKAgent[Any],
        *,
        context: Any = None,
        kinds: Iterable[Kind] = ("instruction", "event"),
        max_waiting: int = 100,
    ) -> None:
        """``context``: the run's context object; ``kinds``: the envelope kinds that start a run (others are acked);
        ``max_waiting``: how many interrupted runs may wait for operators at once (past it, the oldest is dropped).

        RuntimeSetupError if the agent has what a run on the bus would not record (see :func:`on_bus`).
        """  # noqa: D205
        self.agent = agent
        self.context = context
        self.kinds = frozenset(kinds)
        self.waiting = WaitingRuns(max_waiting)
        self._tools = _function_tools(agent)
        self._model = _model_of(agent)
        names = [*(tool.name for tool in self._tools), MODEL_TOOL]
        self.tools: Mapping[str, ToolImplementation] = MappingProxyType(dict.fromkeys(names, perform))
        self.builtin_tools = (MODEL_REQUEST,)
        self.high_risk_tools = frozenset(tool.name for tool in self._tools if tool.needs_approval is not False)

    async def handle(self, ctx: Context) -> None:
        """Run the agent on the delivery's payload and reply with its final output (or keep the interrupted run)."""
        if ctx.envelope.kind not in self.kinds:
            log.info("kind not served; acked", extra={"kind": ctx.envelope.kind, "envelope_id": ctx.envelope.id})
            return
        run_agent, holds = self._on(ctx)
        result = await Runner.run(run_agent, prompt_of(ctx.envelope), context=self.context)
        await self._finish(ctx, result, holds, started_by=ctx.envelope)

    def _on(self, ctx: Context) -> tuple[SDKAgent[Any], dict[str, HeldCall]]:
        """The agent as it runs for ``ctx``, and where its tools keep the calls the coordinator holds."""
        turn, holds = asyncio.Lock(), dict[str, HeldCall]()
        tools: list[SDKTool] = [_recorded_tool(tool, ctx, turn, holds) for tool in self._tools]
        return self.agent.clone(model=RecordedModel(self._model, ctx), tools=tools), holds

    async def _finish(
        self, ctx: Context, result: RunResult, holds: dict[str, HeldCall], started_by: Envelope | WaitingRun
    ) -> None:
        """Reply with the run's final output; or keep the interrupted run, its state and its held calls."""
        if not result.interruptions:
            if isinstance(started_by, WaitingRun):  # a resumed run answers the sender of the delivery that started it
                payload = reply_payload(result.final_output)
                await ctx.send((started_by.sender,), payload, kind="reply", causation_id=started_by.envelope)
                await ctx.checkpoint(self.waiting.checkpoint())
            else:
                await ctx.reply(reply_payload(result.final_output))
            return
        approvals = []
        for item in result.interruptions:
            held = holds.get(item.call_id or "")
            if held is None:
                raise RuntimeError(f"the run was interrupted for {item.name}, which the coordinator does not hold")
            approvals.append(Approval(item.call_id or "", held.idempotency_key, held.as_json()))
        # The trace id is new on every run: without it, a replay keeps the same checkpoint byte for byte.
        state = {k: v for k, v in result.to_state().to_json().items() if k != "trace"}
        if isinstance(started_by, WaitingRun):
            envelope, sender = started_by.envelope, started_by.sender
        else:
            envelope, sender = started_by.id, started_by.sender
        self.waiting.wait(WaitingRun(envelope, ctx.envelope.correlation_id, sender, [state], [], approvals))
        await ctx.checkpoint(self.waiting.checkpoint())

    async def _answered(self, ctx: Context, run: WaitingRun) -> None:
        """Once every held call of ``run`` is answered: resume it from its state with the answers."""
        if not run.complete:
            await ctx.checkpoint(self.waiting.checkpoint())
            return
        self.waiting.done(run)
        run_agent, holds = self._on(ctx)
        ctx.resume(HeldCall.from_json(a.held) for a in run.approvals if a.denied is None)
        state = await RunState.from_json(run_agent, run.history[0], context_override=self.context)
        answers = {a.call: a for a in run.approvals}
        for item in state.get_interruptions():
            answer = answers[item.call_id or ""]
            if answer.denied is None:
                state.approve(item)
            else:
                state.reject(item, rejection_message=answer.denied)
        result = await Runner.run(run_agent, state)
        await self._finish(ctx, result, holds, started_by=run)


def on_bus(
    agent: SDKAgent[Any],
    *,
    context: Any = None,
    kinds: Iterable[Kind] = ("instruction", "event"),
    max_waiting: int = 100,
) -> OpenAIAgent:
    """Wrap ``agent`` for ``trustbus agent run``: each delivery of one of ``kinds`` is a run, its output the reply.

    ``max_waiting``: how many interrupted runs may wait for operators at once.
    RuntimeSetupError if the agent has handoffs or MCP servers, or a tool that is not a function tool.
    """
    return OpenAIAgent(agent, context=context, kinds=kinds, max_waiting=max_waiting)
