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
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from trustbus.agents._decision import instruction_verb
from trustbus.agents._effector import Effector, check_direct_gets
from trustbus.agents._errors import EffectDenied, RuntimeSetupError
from trustbus.agents._forwarding import INBOX_SETTINGS
from trustbus.agents._held_calls import HeldCall, watch_held
from trustbus.agents._memory import ForeignRecorder, Memory, checkpoint_key, memory_bucket
from trustbus.agents._outages import patiently
from trustbus.agents._signed_value import open_checkpoint
from trustbus.agents._spans import invoke_agent
from trustbus.agents._tools import Tool, Toolbox, ToolImplementation
from trustbus.bus import (
    Bus,
    ContentType,
    Delivery,
    Envelope,
    Identity,
    Kind,
    MalformedPayload,
    TransientError,
    TransportError,
    current_trace,
    decode_json,
    log_about,
    new_envelope,
    subjects,
)

log = logging.getLogger("trustbus.agent")

Payload = bytes | str | dict[str, Any] | list[Any]


def _encode(payload: Payload) -> tuple[bytes, ContentType]:
    if isinstance(payload, bytes):
        return payload, "application/json"
    if isinstance(payload, str):
        return payload.encode(), "text/plain"
    return json.dumps(payload).encode(), "application/json"


class Context:
    """What a handler may do about the envelope it was given.

    Everything it sends continues the same correlation, names the envelope as
    its cause, and carries the taint the coordinator attested for it.
    """

    def __init__(
        self,
        bus: Bus,
        agent_id: str,
        delivery: Delivery,
        *,
        tools: Toolbox | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        """Made by the runtime for each delivery; ``stopping`` ends a tool call's wait for an operator."""
        mediation = delivery.opened.mediation
        self._setup(
            bus,
            agent_id,
            delivery.envelope,
            taint=mediation.effective_taint if mediation else delivery.envelope.taint,
            decision_id=mediation.decision_id if mediation else None,
            attempt=delivery.attempt,
            tools=tools,
            stopping=stopping,
        )

    @classmethod
    def resuming(
        cls,
        bus: Bus,
        agent_id: str,
        call: HeldCall,
        *,
        tools: Toolbox | None = None,
        stopping: asyncio.Event | None = None,
    ) -> Context:
        """A context of the delivery that made the held ``call``, with the taint it had then (for ``on_answer``).

        The same call made here runs under its held key; the delivery's other calls are numbered after it.
        """
        ctx = cls.__new__(cls)
        ctx._setup(
            bus, agent_id, call.cause, taint=call.taint, decision_id=None, attempt=1, tools=tools, stopping=stopping
        )
        ctx._effector.resume((call,))
        return ctx

    def _setup(
        self,
        bus: Bus,
        agent_id: str,
        envelope: Envelope,
        *,
        taint: tuple[str, ...],
        decision_id: str | None,
        attempt: int,
        tools: Toolbox | None,
        stopping: asyncio.Event | None,
    ) -> None:
        self._bus = bus
        self._deadline: asyncio.Timeout | None = None  # the handler's timeout, set by the runtime
        self._effector = Effector(bus, agent_id, envelope, tools, held=self._waiting_for_a_person, stopping=stopping)
        self.agent_id = agent_id
        self.envelope: Envelope = envelope
        self.taint: tuple[str, ...] = taint
        self.decision_id: str | None = decision_id
        self.attempt = attempt
        self.memory = Memory(
            memory_bucket(bus, direct=True),
            agent_id,
            self.send,
            keys=bus.keyring,
            on_read=self._read_taint,
            on_foreign=_foreign(bus),
        )

    @contextlib.contextmanager
    def _waiting_for_a_person(self) -> Iterator[None]:
        """Suspend the handler's timeout while a held tool call waits for an operator; resume it after."""
        deadline, loop = self._deadline, asyncio.get_running_loop()
        when = deadline.when() if deadline is not None else None
        if deadline is None or when is None:
            yield
            return
        remaining = max(0.0, when - loop.time())
        deadline.reschedule(None)
        try:
            yield
        finally:
            deadline.reschedule(loop.time() + remaining)

    def _read_taint(self, taint: tuple[str, ...]) -> None:
        self.taint = tuple(sorted(set(self.taint) | set(taint)))

    def json(self) -> Any:
        """The payload parsed as JSON, within the decoding bounds (raises ``bus.MalformedPayload``)."""
        return decode_json(self.envelope.payload)

    async def send(
        self,
        to: Iterable[str],
        payload: Payload,
        *,
        kind: Kind = "event",
        content_type: ContentType | None = None,
        taint: Iterable[str] = (),
        idempotency_key: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope:
        """Send a new envelope caused by this one, through the coordinator (with the current span's trace
        context, when tracing is on).

        ``causation_id`` names another envelope of the correlation as the cause instead (a reply to an envelope
        handled before, once this one brought what it waited for); the coordinator checks it as any cause.
        """  # noqa: D205
        body, default_type = _encode(payload)
        envelope = new_envelope(
            tenant=self.envelope.tenant,
            kind=kind,
            sender=self.agent_id,
            to=tuple(to),
            payload=body,
            content_type=content_type or default_type,
            correlation_id=self.envelope.correlation_id,
            causation_id=causation_id or self.envelope.id,
            hop=self.envelope.hop + 1,
            taint=set(self.taint) | set(taint),
            idempotency_key=idempotency_key,
            trace=current_trace(),
        )
        await self._emit(envelope)
        return envelope

    async def _emit(self, envelope: Envelope) -> None:
        """Sign and publish to this agent's outbox."""
        await self._bus.send(envelope)

    async def instruct(self, to: Iterable[str], verb: str, **arguments: Any) -> Envelope:
        """Send an ``instruction`` whose JSON payload is ``{"verb": verb, **arguments}``."""
        return await self.send(to, {"verb": verb, **arguments}, kind="instruction")

    async def reply(self, payload: Payload, *, kind: Kind = "reply", cites: Iterable[str] = ()) -> Envelope:
        """Answer the sender of this envelope.

        ``cites`` names effects (idempotency keys, e.g. :attr:`effect_keys`) the
        reply reports: they go in the JSON object payload under ``"cites"``, so a
        claim such as "refund submitted" can be checked against a completed effect.
        """
        cited = [subjects.check_effect_key(key) for key in cites]
        if cited:
            if not isinstance(payload, dict):
                raise TypeError("a reply that cites effects needs a dict payload (a JSON object)")
            payload = {**payload, "cites": cited}
        return await self.send((self.envelope.sender,), payload, kind=kind)

    async def effect(self, tool: str, args: dict[str, Any], *, wait_for_operator: bool = True) -> Any:
        """Call ``tool`` (bound through the agent's :class:`~agents.Toolbox`) as a recorded effect; its JSON result.

        The call's idempotency key is derived from this envelope, the tool, the
        arguments and the call's position among this handler's effect calls, so a
        redelivery makes the same calls under the same keys: a completed one
        returns its recorded result without running the tool again. After it
        completes, :attr:`taint` includes the tool's ``result_taint``. Make the
        calls in the same order on every attempt.

        A call the coordinator holds waits for the operator's answer; with ``wait_for_operator=False``
        it raises :class:`~agents.EffectHeld` instead (see :meth:`Agent.on_answer`).
        """
        result, self.taint = await self._effector.call(
            tool, args, taint=self.taint, wait_for_operator=wait_for_operator
        )
        return result

    async def ask_first(self, tool: str, args: dict[str, Any]) -> HeldCall | None:
        """Ask the coordinator about a call before making it (a framework that asks whether a call needs approval
        before it calls the tool); the held call if the coordinator holds it, else None.

        With None, the next :meth:`effect` of ``tool`` with ``args`` is that call, under the same key.
        """  # noqa: D205
        return await self._effector.ask_first(tool, args, taint=self.taint)

    def resume(self, calls: Iterable[HeldCall]) -> None:
        """Make the next call matching each held call of ``calls`` (same tool and arguments) under its held key.

        :meth:`resuming` does it for the call an answer is about; a handler that goes on with other
        answered calls of the same work (a run that waited for more than one) names them here.
        """
        self._effector.resume(calls)

    @property
    def effect_keys(self) -> list[str]:
        """Idempotency keys of the effects completed so far in this handler invocation, in call order."""
        return self._effector.keys

    async def checkpoint(self, state: dict[str, Any]) -> Envelope:
        """Record ``state`` (JSON) as this agent's checkpoint; a restarted process starts from it."""
        return await self.send((self.agent_id,), state, kind="checkpoint")


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


def _foreign(bus: Bus) -> ForeignRecorder:
    async def record(subject: str, revision: int, body: bytes, headers: Mapping[str, str] | None, detail: str) -> None:
        await bus.record_foreign_value(subject, revision, body, headers, detail=detail)

    return record


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
        answers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answers


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
