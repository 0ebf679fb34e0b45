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
  registry given with ``--tools``; a completed call is never made again. A call the coordinator holds
  (a high-risk tool under taint) ends the run the pydantic-ai way for an approval (``ApprovalRequired``:
  the run's output is ``DeferredToolRequests`` with the call in ``approvals``); the run is kept in the
  agent's checkpoint and the agent handles other deliveries meanwhile. Once an operator answers, the run
  resumes with ``DeferredToolResults(approvals={call: True | ToolDenied(...)})``: approved, the tool runs
  once under the held call's key; denied, the model is told. The run's output goes to its first sender.
  A tool declared ``requires_approval=True`` is made high risk (``agent run`` raises its registry entry):
  a model's call is always under taint ``llm``, so the coordinator holds every call of it.

With ``on_bus(agent, peers=[...])`` the model also has the tool ``ask_agent(agent, question)``: a call
sends the named peer an instruction (verb ``ask``) through the coordinator and ends the run the
pydantic-ai way for a deferred call (``CallDeferred``); the run is kept in the agent's checkpoint, and
the peer's reply resumes it (``DeferredToolResults``), its output going to the run's first sender.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import ApprovalRequired, CallDeferred, DeferredToolRequests, DeferredToolResults, ToolDenied
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

from trustbus.adapters._asks import AgentWithWaitingRuns, Approval, Question, WaitingRun, WaitingRuns
from trustbus.adapters._recording import (
    MODEL_REQUEST,
    MODEL_TOOL,
    as_effect,
    content_of,
    digest_arguments,
    idempotency_key,
    perform,
    prompt_of,
    refusal,
    reply_payload,
    stable,
)
from trustbus.agents import (
    Context,
    EffectDenied,
    EffectHeld,
    HeldCall,
    RuntimeSetupError,
    ToolImplementation,
)
from trustbus.bus import Envelope, Kind

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

ASK_TOOL = "ask_agent"
"""The built-in tool a model asks another agent with (given to the model only if the agent has ``peers``)."""

ASK_VERB = "ask"
"""The verb of the instruction an ask sends: ``{"verb": "ask", "question": ...}``."""

HELD = "trustbus_held"
"""The key of a held call's metadata in ``DeferredToolRequests.metadata``: the call as the agent keeps it."""


def request_arguments(messages: list[ModelMessage]) -> dict[str, Any]:
    """The effect arguments of a model request: the new message as is, the history before it as a digest.

    Timestamps, run ids and usage are left out, so the same conversation makes the same arguments (and so
    the same idempotency key) on every attempt and in a replay.
    """
    return digest_arguments(ModelMessagesTypeAdapter.dump_python(messages, mode="json"))


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

        recorded = await as_effect(self._ctx, MODEL_TOOL, request_arguments(messages), ask)
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

    async def prepare_tools(self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]) -> list[ToolDefinition]:
        # A tool that requires approval is called like any other: the coordinator holds the call (it is high risk).
        return [replace(d, kind="function") if d.kind == "unapproved" else d for d in tool_defs]

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
            return await as_effect(
                self.ctx, call.tool_name, call.args_as_dict(), lambda: handler(args), wait_for_operator=False
            )
        except EffectHeld as held:  # the run ends; the operator's answer resumes it (PydanticAIAgent.on_answer)
            raise ApprovalRequired(metadata={HELD: held.call.as_json()}) from held
        except EffectDenied as refused:  # the model is told, as of any tool that failed for good
            raise ToolFailed(refusal(call.tool_name, refused)) from refused


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


def _function_tools(agent: PydanticAgent[Any, Any]) -> dict[str, bool]:
    """The agent's function tools (those of its function toolsets), each a registry entry to declare.

    By name: whether it requires approval the pydantic-ai way (on the bus: it is high risk).
    """
    return {
        name: tool.requires_approval
        for toolset in agent.toolsets
        if isinstance(toolset, FunctionToolset)
        for name, tool in toolset.tools.items()
    }


class PydanticAIAgent(AgentWithWaitingRuns):
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
        ``max_waiting``: how many runs may wait for answers (or operators) at once (past it, the oldest is dropped).
        RuntimeSetupError if the agent has no model (a run on the bus is given none).
        """
        if agent.model is None:
            raise RuntimeSetupError("the pydantic-ai agent has no model: give it one, Agent(model, ...)")
        self.agent = agent
        self.deps = deps
        self.kinds = frozenset(kinds)
        self.peers = tuple(dict.fromkeys(peers))
        self.waiting = WaitingRuns(max_waiting)
        tools = _function_tools(agent)
        self.tools: Mapping[str, ToolImplementation] = MappingProxyType(dict.fromkeys([*tools, MODEL_TOOL], perform))
        self.builtin_tools = (MODEL_REQUEST,)
        self.high_risk_tools = frozenset(name for name, approval in tools.items() if approval)

    async def handle(self, ctx: Context) -> None:
        """Run the agent on the delivery's payload and reply with its output (or resume the run a reply answers)."""
        envelope = ctx.envelope
        if envelope.kind == "reply" and self.peers:
            answered = await self.waiting.go_on(
                lambda: self.waiting.answer(envelope.correlation_id, envelope.sender, content_of(envelope)),
                lambda run: self._answered(ctx, run),
            )
            if answered:
                return
        if envelope.kind not in self.kinds:
            log.info("kind not served; acked", extra={"kind": envelope.kind, "envelope_id": envelope.id})
            return
        result = await self._run(ctx, prompt_of(envelope))
        if isinstance(result.output, DeferredToolRequests):
            await self._wait(ctx, result.output, result.all_messages(), started_by=envelope)
        else:
            await self.respond(ctx, result.output)

    async def respond(self, ctx: Context, output: Any) -> None:
        """What the agent does with a run's output: reply with it. A subclass may act on it otherwise.

        Not called for a run resumed by an answer (see ``peers``): its output goes to the sender of the delivery
        that started the run.
        """
        await ctx.reply(reply_payload(output))

    async def _run(self, ctx: Context, prompt: str | None, **resume: Any) -> Any:
        """One run of the agent for ``ctx`` (``resume``: its message history and deferred tool results)."""
        asks: dict[str, Any] = {"toolsets": [_ask_toolset(self.peers)]} if self.peers else {}
        output_type = [self.agent.output_type, DeferredToolRequests]  # how a run ends on a question or a hold
        # One call at a time, in the model's order: effect keys count calls, so the order must not vary.
        with ToolManager.parallel_execution_mode("sequential"):
            return await self.agent.run(
                prompt, deps=self.deps, capabilities=[_OnTheBus(ctx)], output_type=output_type, **asks, **resume
            )

    async def _wait(
        self,
        ctx: Context,
        requests: DeferredToolRequests,
        history: list[ModelMessage],
        started_by: Envelope | WaitingRun,
    ) -> None:
        """Keep the run in the checkpoint, then send its questions (so no answer can come before it is kept)."""
        metadata = requests.metadata
        if any(call.tool_name != ASK_TOOL for call in requests.calls) or any(
            HELD not in metadata.get(call.tool_call_id, {}) for call in requests.approvals
        ):
            raise RuntimeError(
                "a run ended on a deferred tool call other than ask_agent or a held call, which the bus cannot answer"
            )
        questions = [
            Question(call.tool_call_id, metadata[call.tool_call_id]["agent"], metadata[call.tool_call_id]["question"])
            for call in requests.calls
        ]
        approvals = []
        for call in requests.approvals:
            held = metadata[call.tool_call_id][HELD]
            approvals.append(Approval(call.tool_call_id, HeldCall.from_json(held).idempotency_key, held))
        dumped = stable(ModelMessagesTypeAdapter.dump_python(history, mode="json"))
        if isinstance(started_by, WaitingRun):  # a resumed run that asks again still answers its first sender
            envelope, sender = started_by.envelope, started_by.sender
        else:
            envelope, sender = started_by.id, started_by.sender
        run = WaitingRun(envelope, ctx.envelope.correlation_id, sender, dumped, questions, approvals)
        self.waiting.wait(run)
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
        ctx.resume(HeldCall.from_json(a.held) for a in run.approvals if a.denied is None)
        results = DeferredToolResults(
            calls={q.call: q.answer for q in run.questions},
            approvals={a.call: True if a.denied is None else ToolDenied(a.denied) for a in run.approvals},
        )
        result = await self._run(ctx, None, message_history=history, deferred_tool_results=results)
        if isinstance(result.output, DeferredToolRequests):  # it asks (or is held) again: the run waits anew
            await self._wait(ctx, result.output, result.all_messages(), started_by=run)
            return
        await ctx.send((run.sender,), reply_payload(result.output), kind="reply", causation_id=run.envelope)
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
