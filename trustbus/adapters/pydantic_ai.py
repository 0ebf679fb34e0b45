"""A pydantic-ai agent as a trustbus agent: its model requests and tool calls are recorded effects.

``trustbus agent run mymodule:agent`` accepts a ``pydantic_ai.Agent`` as is (it is wrapped with
:func:`on_bus`). Each delivery (an instruction or an event, by default) is one run of the agent:
the payload is the user prompt, the run's output is the reply (a subclass may override
:meth:`PydanticAIAgent.respond` to act on it otherwise). Within the run:

- every model request is a call of the built-in tool ``model_request`` (class ``read``, result
  taint ``llm``) through ``ctx.effect``: its arguments are the new request message and a digest of
  the history before it, its result the model's response dumped with pydantic-ai's own
  ``ModelMessagesTypeAdapter``. A redelivery, and ``ledger replay --execute``, get the recorded
  response back without calling the model; a replayed run that asks something else diverges.
- every tool call goes through ``ctx.effect`` under the tool's name, so it must be listed in the
  registry given with ``--tools``; a completed call is never made again, and a call to a high-risk
  tool under taint waits for the coordinator (and an operator) before the tool function runs. A call
  the operator denies fails for the model (pydantic-ai's ``ToolFailed``), which may tell the sender.

With ``on_bus(agent, peers=[...])`` the model also has the tool ``ask_agent(agent, question)``: a call
sends the named peer an instruction (verb ``ask``) through the coordinator and ends the run the
pydantic-ai way for a deferred call (``CallDeferred``); the run is kept in the agent's checkpoint, and
the peer's reply resumes it (``DeferredToolResults``), its output going to the run's first sender.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import CallDeferred, DeferredToolRequests, DeferredToolResults
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.capabilities.abstract import ValidatedToolArgs, WrapToolExecuteHandler
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse, ToolCallPart
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tool_manager import ToolManager
from pydantic_ai.tools import RunContext, ToolDefinition
from pydantic_ai.toolsets import FunctionToolset
from pydantic_core import to_jsonable_python

from trustbus.adapters._asks import Question, WaitingRun, WaitingRuns
from trustbus.agents import Agent, Context, EffectDenied, RuntimeSetupError, Tool, ToolImplementation
from trustbus.bus import Envelope, Kind, MalformedPayload, decode_json

__all__ = [
    "ASK_TOOL",
    "ASK_VERB",
    "MODEL_TOOL",
    "PydanticAIAgent",
    "RecordedModel",
    "idempotency_key",
    "on_bus",
    "request_arguments",
]

log = logging.getLogger("trustbus.agent")

MODEL_TOOL = "model_request"
"""The built-in registry entry every model request of the agent is recorded under."""

ASK_TOOL = "ask_agent"
"""The built-in tool a model asks another agent with (given to the model only if the agent has ``peers``)."""

ASK_VERB = "ask"
"""The verb of the instruction an ask sends: ``{"verb": "ask", "question": ...}``."""

_MODEL_REQUEST = Tool(name=MODEL_TOOL, system="model", owner="agent", effect_class="read", result_taint=("llm",))

# Volatile fields of a dumped message: they differ between two runs that ask the model the same thing.
_VOLATILE = frozenset(
    {"timestamp", "request_timestamp", "duration", "run_id", "conversation_id", "usage", "model_id", "provider_url"}
)

_pending: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar("trustbus_pending_call", default=None)
_key: ContextVar[str | None] = ContextVar("trustbus_idempotency_key", default=None)


def idempotency_key() -> str | None:
    """The idempotency key of the tool call running now: pass it to the system the tool acts on.

    The same on every attempt of the same call, so a system that drops a repeated key acts once even if
    the process dies mid-call. None when the agent runs on its own, off the bus.
    """
    return _key.get()


async def _perform(args: dict[str, Any], *, idempotency_key: str) -> Any:
    """What every tool of the adapter is bound to: make the call ``ctx.effect`` was asked for, under its key."""
    call = _pending.get()
    if call is None:
        raise RuntimeError("a pydantic-ai tool was called outside a run of its agent")
    token = _key.set(idempotency_key)
    try:
        return to_jsonable_python(await call())
    finally:
        _key.reset(token)


async def _as_effect(ctx: Context, tool: str, args: dict[str, Any], call: Callable[[], Awaitable[Any]]) -> Any:
    """``ctx.effect(tool, args)``, with ``call`` as what runs if the call has no completed record."""
    token = _pending.set(call)
    try:
        return await ctx.effect(tool, args)
    finally:
        _pending.reset(token)


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def request_arguments(messages: list[ModelMessage]) -> dict[str, Any]:
    """The effect arguments of a model request: the new message as is, the history before it as a digest.

    Timestamps, run ids and usage are left out, so the same conversation makes the same arguments (and so
    the same idempotency key) on every attempt and in a replay.
    """
    dumped = _stable(ModelMessagesTypeAdapter.dump_python(messages, mode="json"))
    history = json.dumps(dumped[:-1], sort_keys=True, separators=(",", ":")).encode()
    return {"history": hashlib.sha256(history).hexdigest(), "request": dumped[-1] if dumped else None}


class RecordedModel(WrapperModel):
    """A model whose every request is a ``model_request`` effect of the delivery being handled."""

    def __init__(self, wrapped: Model, ctx: Context) -> None:
        """``ctx``: the context of the delivery the run handles."""
        super().__init__(wrapped)
        self._ctx = ctx

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """The recorded response to this request, or the wrapped model's, recorded first."""

        async def ask() -> Any:
            response = await self.wrapped.request(messages, model_settings, model_request_parameters)
            return ModelMessagesTypeAdapter.dump_python([response], mode="json")

        recorded = await _as_effect(self._ctx, MODEL_TOOL, request_arguments(messages), ask)
        [response] = ModelMessagesTypeAdapter.validate_python(recorded)
        if not isinstance(response, ModelResponse):
            raise TypeError(f"the record of a model request holds a {type(response).__name__}, not a response")
        return response


@dataclass
class _OnTheBus(AbstractCapability[Any]):
    """One run's capability: the model is a :class:`RecordedModel`, every tool call a ``ctx.effect`` call."""

    ctx: Context

    def get_wrapper_model(self, model: Model) -> Model | None:
        return RecordedModel(model, self.ctx)

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        if call.tool_name == ASK_TOOL:  # not an effect: it sends an instruction once the run ends
            return await handler(args)
        try:
            return await _as_effect(self.ctx, call.tool_name, call.args_as_dict(), lambda: handler(args))
        except EffectDenied as refused:  # the model is told, as of any tool that failed for good
            by = f" by {refused.approver}" if refused.approver else ""
            raise ToolFailed(f"{call.tool_name} was not run: {refused.reason}{by}") from refused


def _content_of(envelope: Envelope) -> Any:
    """A payload as a value: a ``text/plain`` one as its text, JSON as what it encodes, anything else as text."""
    if envelope.content_type == "text/plain":
        return envelope.payload.decode(errors="replace")
    try:
        return decode_json(envelope.payload)
    except MalformedPayload:
        return envelope.payload.decode(errors="replace")


def _prompt_of(envelope: Envelope) -> str:
    """The user prompt a delivery makes: a text payload as is, a JSON string as the string, other JSON as JSON text."""
    value = _content_of(envelope)
    return value if isinstance(value, str) else json.dumps(value)


def _ask_toolset(peers: tuple[str, ...]) -> FunctionToolset[Any]:
    """The toolset of :data:`ASK_TOOL`, for an agent that may ask ``peers``."""

    async def ask_agent(agent: str, question: str) -> Any:
        if agent not in peers:
            raise ToolFailed(f"{agent!r} is not an agent this one may ask (it may ask: {', '.join(peers)})")
        raise CallDeferred(metadata={"agent": agent, "question": question})

    toolset: FunctionToolset[Any] = FunctionToolset()
    toolset.add_function(
        ask_agent,
        name=ASK_TOOL,
        description=f"Ask another agent a question and get its answer. The agents you may ask: {', '.join(peers)}.",
    )
    return toolset


def _reply_payload(output: Any) -> str | dict[str, Any] | list[Any] | bytes:
    if isinstance(output, str):
        return output
    value = to_jsonable_python(output)
    return value if isinstance(value, dict | list) else json.dumps(value).encode()


def _function_tools(agent: PydanticAgent[Any, Any]) -> list[str]:
    """Names of the agent's function tools (those of its function toolsets), each a registry entry to declare.

    RuntimeSetupError if one requires approval the pydantic-ai way.
    """
    names: list[str] = []
    for toolset in agent.toolsets:
        if isinstance(toolset, FunctionToolset):
            asks = sorted(name for name, tool in toolset.tools.items() if tool.requires_approval)
            if asks:  # its approval flow would end the run; on the bus an approval is a hold, which waits in it
                raise RuntimeSetupError(
                    f"tools {', '.join(asks)} require approval in pydantic-ai: on the bus, declare them "
                    "high_risk in the tool registry instead (a call under taint is held for an operator)"
                )
            names.extend(toolset.tools)
    return names


class PydanticAIAgent(Agent):
    """A ``pydantic_ai.Agent`` served as a trustbus agent (made by :func:`on_bus`)."""

    def __init__(
        self,
        agent: PydanticAgent[Any, Any],
        *,
        deps: Any = None,
        kinds: Iterable[Kind] = ("instruction", "event"),
        peers: Iterable[str] = (),
        max_waiting: int = 100,
    ) -> None:
        """``deps``: the run's dependencies; ``kinds``: the envelope kinds that start a run (others are acked).

        ``peers``: the agents the model may ask with :data:`ASK_TOOL` (none: it has no such tool);
        ``max_waiting``: how many runs may wait for answers at once (past it, the oldest is dropped).
        RuntimeSetupError if the agent has no model (a run on the bus is given none) or a tool requires approval.
        """
        if agent.model is None:
            raise RuntimeSetupError("the pydantic-ai agent has no model: give it one, Agent(model, ...)")
        self.agent = agent
        self.deps = deps
        self.kinds = frozenset(kinds)
        self.peers = tuple(dict.fromkeys(peers))
        self.waiting = WaitingRuns(max_waiting)
        names = [*_function_tools(agent), MODEL_TOOL]
        self.tools: Mapping[str, ToolImplementation] = MappingProxyType(dict.fromkeys(names, _perform))
        self.builtin_tools = (_MODEL_REQUEST,)

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Take up the runs that were waiting for answers when the last process stopped."""
        self.waiting.restore(checkpoint)

    async def handle(self, ctx: Context) -> None:
        """Run the agent on the delivery's payload and reply with its output (or resume the run a reply answers)."""
        envelope = ctx.envelope
        if envelope.kind == "reply" and self.peers:
            kept = self.waiting.checkpoint()
            run = self.waiting.answer(envelope.correlation_id, envelope.sender, _content_of(envelope))
            if run is not None:
                try:
                    await self._answered(ctx, run)
                except BaseException:  # a retry of this delivery must find the runs as the checkpoint has them
                    self.waiting.restore(kept)
                    raise
                return
        if envelope.kind not in self.kinds:
            log.info("kind not served; acked", extra={"kind": envelope.kind, "envelope_id": envelope.id})
            return
        result = await self._run(ctx, _prompt_of(envelope))
        if isinstance(result.output, DeferredToolRequests):
            await self._ask(ctx, result.output, result.all_messages(), started_by=envelope)
        else:
            await self.respond(ctx, result.output)

    async def respond(self, ctx: Context, output: Any) -> None:
        """What the agent does with a run's output: reply with it. A subclass may act on it otherwise.

        Not called for a run resumed by an answer (see ``peers``): its output goes to the sender of the delivery
        that started the run.
        """
        await ctx.reply(_reply_payload(output))

    async def _run(self, ctx: Context, prompt: str | None, **resume: Any) -> Any:
        """One run of the agent for ``ctx`` (``resume``: its message history and deferred tool results)."""
        asks: dict[str, Any] = {}
        if self.peers:
            output_type = [self.agent.output_type, DeferredToolRequests]
            asks = {"toolsets": [_ask_toolset(self.peers)], "output_type": output_type}
        # One call at a time, in the model's order: effect keys count calls, so the order must not vary.
        with ToolManager.parallel_execution_mode("sequential"):
            return await self.agent.run(prompt, deps=self.deps, capabilities=[_OnTheBus(ctx)], **asks, **resume)

    async def _ask(
        self,
        ctx: Context,
        requests: DeferredToolRequests,
        history: list[ModelMessage],
        started_by: Envelope | WaitingRun,
    ) -> None:
        """Keep the run in the checkpoint, then send its questions (so no answer can come before it is kept)."""
        if requests.approvals or any(call.tool_name != ASK_TOOL for call in requests.calls):
            raise RuntimeError("a run ended on a deferred tool call other than ask_agent, which the bus cannot answer")
        questions = [
            Question(call.tool_call_id, requests.metadata[call.tool_call_id]["agent"],
                     requests.metadata[call.tool_call_id]["question"])
            for call in requests.calls
        ]  # fmt: skip
        dumped = _stable(ModelMessagesTypeAdapter.dump_python(history, mode="json"))
        if isinstance(started_by, WaitingRun):  # a resumed run that asks again still answers its first sender
            envelope, sender = started_by.envelope, started_by.sender
        else:
            envelope, sender = started_by.id, started_by.sender
        self.waiting.wait(WaitingRun(envelope, ctx.envelope.correlation_id, sender, dumped, questions))
        await ctx.checkpoint(self.waiting.checkpoint())
        for question in questions:
            await ctx.instruct((question.peer,), ASK_VERB, question=question.question)

    async def _answered(self, ctx: Context, run: WaitingRun) -> None:
        """Keep an answer; once the run has every answer, resume it and send its output to its first sender."""
        if not run.complete:
            await ctx.checkpoint(self.waiting.checkpoint())
            return
        self.waiting.done(run)
        history = ModelMessagesTypeAdapter.validate_python(run.history)
        results = DeferredToolResults(calls={q.call: q.answer for q in run.questions})
        result = await self._run(ctx, None, message_history=history, deferred_tool_results=results)
        if isinstance(result.output, DeferredToolRequests):  # it asks again: the run waits anew
            await self._ask(ctx, result.output, result.all_messages(), started_by=run)
            return
        await ctx.send((run.sender,), _reply_payload(result.output), kind="reply", causation_id=run.envelope)
        await ctx.checkpoint(self.waiting.checkpoint())


def on_bus(
    agent: PydanticAgent[Any, Any],
    *,
    deps: Any = None,
    kinds: Iterable[Kind] = ("instruction", "event"),
    peers: Iterable[str] = (),
    max_waiting: int = 100,
) -> PydanticAIAgent:
    """Wrap ``agent`` for ``trustbus agent run``: each delivery of one of ``kinds`` is a run, its output the reply.

    ``peers``: the agents its model may ask (the tool ``ask_agent``); ``max_waiting``: how many runs may wait
    for their answers at once.
    """
    return PydanticAIAgent(agent, deps=deps, kinds=kinds, peers=peers, max_waiting=max_waiting)
