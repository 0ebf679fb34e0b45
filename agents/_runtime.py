"""Writing agents and running one as a process.

An agent is either a subclass of :class:`Agent` or a :class:`Handlers` table of
decorated functions. :func:`run_agent` connects with the agent's identity,
reads its inbox through the durable consumer the coordinator created
(``in-<id>``), accepts only envelopes the coordinator countersigned for it,
calls the handler with a :class:`Context`, and acks when the handler returns.
It keeps no state of its own: after a crash, a new process of the same id
resumes from the durable consumer and from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from trustbus.agents._context import Context
from trustbus.agents._decision import instruction_verb
from trustbus.agents._effector import Effector, check_direct_gets
from trustbus.agents._errors import EffectDenied, RuntimeSetupError
from trustbus.agents._forwarding import INBOX_SETTINGS
from trustbus.agents._held_calls import HeldCall, watch_held
from trustbus.agents._memory import checkpoint_key, memory_bucket
from trustbus.agents._outages import patiently
from trustbus.agents._signed_value import open_checkpoint
from trustbus.agents._spans import invoke_agent
from trustbus.agents._tools import Tool, Toolbox, ToolImplementation
from trustbus.bus import (
    Bus,
    Delivery,
    Envelope,
    Identity,
    Kind,
    MalformedPayload,
    TransientError,
    TransportError,
    cancel_and_wait,
    decode_json,
    log_about,
    subjects,
)

log = logging.getLogger("trustbus.agent")


class Agent:
    """Subclass and override :meth:`handle` (and :meth:`on_start` to use a checkpoint).

    ``tools`` maps tool names (entries of the registry given to ``agent run
    --tools``) to the implementations this agent binds, each
    ``async def tool(args, *, idempotency_key) -> JSON``; set it in the class or
    in ``__init__``.

    ``handler_timeout_s`` bounds one delivery's handling: a handler still running
    then (a hung model or tool call) is cancelled and the delivery retried like a
    ``TransientError``, so one stuck call never stalls the agent's inbox. None: no
    bound.

    ``builtin_tools`` are registry entries the agent brings for tools of its own making (a framework
    adapter's model requests): ``agent run`` adds them to the registry given with ``--tools``.

    ``high_risk_tools`` names tools the agent's own code says need a person (a framework's approval
    flag): ``agent run`` makes their registry entries high risk (an agent can raise a tool's risk, never
    lower it).
    """

    tools: Mapping[str, ToolImplementation] = MappingProxyType({})
    builtin_tools: Sequence[Tool] = ()
    high_risk_tools: Collection[str] = frozenset()
    handler_timeout_s: float | None = 600.0

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Called once before the first delivery with the last checkpoint, if any."""

    async def handle(self, ctx: Context) -> None:
        """Handle one delivery; return to ack, raise ``bus.TransientError`` to retry later."""
        raise NotImplementedError(f"{type(self).__name__} must override handle()")

    def held_calls(self) -> Iterable[HeldCall]:
        """The held calls (:class:`~agents.EffectHeld`) this agent waits on; the runtime watches their answers."""
        return ()

    async def on_answer(self, ctx: Context, call: HeldCall, denied: EffectDenied | None) -> None:
        """An operator answered the held ``call``: approved (``denied`` None) or not (the refusal, recorded).

        ``ctx`` is a context of the delivery that made the call (:meth:`Context.resuming`), between two
        deliveries; raise ``bus.TransientError`` to be called again later.
        """


Handler = Callable[[Context], Awaitable[None]]


class Handlers(Agent):
    """An agent made of decorated functions.

    Example::

        app = Handlers()

        @app.on("instruction", verb="refund")
        async def refund(ctx: Context) -> None: ...
    """

    def __init__(self) -> None:
        """An empty table; envelopes no handler matches are acked and logged."""
        self._routes: list[tuple[str | None, str | None, Handler]] = []
        self._start: Callable[[dict[str, Any] | None], Awaitable[None]] | None = None
        self._tools: dict[str, ToolImplementation] = {}
        self.tools = MappingProxyType(self._tools)

    def on(self, kind: Kind | None = None, *, verb: str | None = None) -> Callable[[Handler], Handler]:
        """Route envelopes of ``kind`` (and, for instructions, ``verb``) to the decorated function."""

        def register(handler: Handler) -> Handler:
            self._routes.append((kind, verb, handler))
            return handler

        return register

    def tool(self, name: str) -> Callable[[ToolImplementation], ToolImplementation]:
        """Bind the decorated ``async def f(args, *, idempotency_key)`` as the implementation of tool ``name``."""

        def bind(implementation: ToolImplementation) -> ToolImplementation:
            self._tools[name] = implementation
            return implementation

        return bind

    def on_startup(
        self, handler: Callable[[dict[str, Any] | None], Awaitable[None]]
    ) -> Callable[[dict[str, Any] | None], Awaitable[None]]:
        """Register the function called with the last checkpoint at start."""
        self._start = handler
        return handler

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Call the registered startup function, if any."""
        if self._start is not None:
            await self._start(checkpoint)

    async def handle(self, ctx: Context) -> None:
        """Dispatch to the first matching handler."""
        verb = instruction_verb(ctx.envelope) if ctx.envelope.kind == "instruction" else None
        for kind, wanted_verb, handler in self._routes:
            if kind not in (None, ctx.envelope.kind):
                continue
            if wanted_verb is not None and wanted_verb != verb:
                continue
            await handler(ctx)
            return
        log.info("no handler; acked", extra={"kind": ctx.envelope.kind, "envelope_id": ctx.envelope.id})


async def read_checkpoint(bus: Bus, agent_id: str) -> dict[str, Any] | None:
    """The agent's last checkpoint, verified as signed by the agent itself; None if there is none.

    A foreign value there (not the agent's signed checkpoint) is recorded once as ``foreign``
    and the agent starts without it.
    """
    bucket = memory_bucket(bus, direct=True)
    key = checkpoint_key(agent_id)
    try:
        entry = await bucket.get(key)
    except TransportError as exc:
        raise RuntimeSetupError(f"cannot read the checkpoint of {agent_id}: {exc}") from exc
    if entry is None:
        return None
    try:
        return open_checkpoint(entry.value, keyring=bus.keyring.keyring, agent_id=agent_id, stored_ns=entry.stored_ns)
    except ValueError as exc:
        log.error("checkpoint is foreign; starting without it", extra={"error": str(exc)})
        await bus.record_foreign_value(bucket.subject(key), entry.revision, entry.value, entry.headers, detail=str(exc))
        return None


async def run_agent(
    agent: Agent,
    bus: Bus,
    *,
    stop: asyncio.Event,
    ready: Callable[[], None] = lambda: None,
    tools: Toolbox | None = None,
) -> None:
    """Serve ``agent`` on ``bus`` (connected as the agent) until ``stop`` is set; ``ready`` is called once serving.

    ``tools`` binds the agent's tool implementations to a registry, for ``Context.effect``.
    """
    agent_id = bus.name
    if tools is not None:
        await check_direct_gets(bus)
    inbox = subjects.inbox_consumer(agent_id)
    try:
        exists = await bus.consumer_exists(inbox)
    except TransportError as exc:
        raise RuntimeSetupError(f"cannot reach inbox consumer {inbox}: {exc}") from exc
    if not exists:
        # No coordinator has created it yet; a development server lets us.
        await bus.ensure_consumer(inbox, subjects.inbox(bus.tenant, agent_id), settings=INBOX_SETTINGS)
    await agent.on_start(await read_checkpoint(bus, agent_id))
    log.info("agent ready", extra={"agent": agent_id, "tenant": bus.tenant})
    ready()
    turn = asyncio.Lock()  # a delivery and a resumed held call are handled one at a time, as deliveries are
    answers = asyncio.create_task(_resume_answered(agent, bus, tools, stop, turn))
    try:
        async for delivery in bus.consume(inbox, settings=INBOX_SETTINGS, recipient=agent_id, stop=stop):
            handle = functools.partial(_handle_afresh, agent, bus, delivery, tools, stop)
            with log_about(delivery.envelope, agent=agent_id):
                async with delivery.process(), turn:
                    await patiently([delivery], handle, stopping=stop)
    finally:
        for error in await cancel_and_wait(answers):
            raise error


async def _resume_answered(
    agent: Agent, bus: Bus, tools: Toolbox | None, stopping: asyncio.Event, turn: asyncio.Lock
) -> None:
    """Call ``agent.on_answer`` for each held call an operator answers (:func:`agents._held_calls.watch_held`)."""

    async def answer_to(call: HeldCall) -> EffectDenied | bool:
        return await Effector(bus, bus.name, call.cause, tools).answer_to(call)

    async def resume(call: HeldCall, denied: EffectDenied | None) -> None:
        async with turn:
            if call.idempotency_key not in {held.idempotency_key for held in agent.held_calls()}:
                return  # a delivery handled meanwhile went on with it
            ctx = Context.resuming(bus, bus.name, call, tools=tools, stopping=stopping)
            with log_about(call.cause, agent=bus.name):
                await _in_time(agent, ctx, lambda: agent.on_answer(ctx, call, denied))

    await watch_held(agent.held_calls, answer_to, resume, stop=stopping)


async def _handle_afresh(
    agent: Agent, bus: Bus, delivery: Delivery, tools: Toolbox | None, stopping: asyncio.Event
) -> None:
    """Handle ``delivery`` in a new context (a run again after an outage starts as a redelivery would)."""
    ctx = Context(bus, bus.name, delivery, tools=tools, stopping=stopping)
    compensating = compensation_request(ctx.envelope) is not None
    await _in_time(agent, ctx, lambda: compensate(ctx) if compensating else agent.handle(ctx))


async def _in_time(agent: Agent, ctx: Context, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` (the handler, a rollback's compensation, an answer), cancelled after ``agent.handler_timeout_s``."""
    deadline = asyncio.timeout(agent.handler_timeout_s)
    ctx._deadline = deadline  # a tool call held for an operator suspends it (Context._waiting_for_a_person)
    try:
        with invoke_agent(ctx.agent_id, ctx.envelope, attempt=ctx.attempt):
            async with deadline:
                await work()
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # the handler's own timeout, not ours: it decides what that means
        raise TransientError(f"handler still running after {agent.handler_timeout_s} s: cancelled") from exc


COMPENSATES = "compensates"


def compensation_request(envelope: Envelope) -> dict[str, Any] | None:
    """The payload of a rollback's compensation instruction: ``{"verb": tool, "compensates": key, ...}``."""
    if envelope.kind != "instruction" or envelope.content_type != "application/json":
        return None
    try:
        body = decode_json(envelope.payload)
    except MalformedPayload:
        return None
    if isinstance(body, dict) and isinstance(body.get(COMPENSATES), str) and isinstance(body.get("verb"), str):
        return body
    return None


async def compensate(ctx: Context) -> None:
    """Run the compensating tool a rollback asks for, as a recorded effect, and report it.

    The runtime does this for every agent: the tool is the instruction's verb, bound
    like any other tool, and its arguments (which name the compensated effect) are
    the instruction's payload, so the effect record says what it undid.
    """
    request = compensation_request(ctx.envelope)
    assert request is not None
    arguments = {k: v for k, v in request.items() if k != "verb"}
    result = await ctx.effect(request["verb"], arguments)
    await ctx.reply({COMPENSATES: request[COMPENSATES], "result": result}, cites=ctx.effect_keys)


def connect_agent(
    servers: str | list[str], *, tenant: str, agent_id: str, identity: Identity, nkey_auth: bool
) -> Awaitable[Bus]:
    """Connect as an agent: its own nkey (if the server wants one) and its own reply-subject prefix."""
    return Bus.connect(
        servers,
        tenant=tenant,
        name=agent_id,
        identity=identity,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(agent_id) if nkey_auth else None,
    )
