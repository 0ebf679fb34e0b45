"""What a handler may do about the envelope it was given: :class:`Context`.

Everything a handler sends through it continues the correlation, names the
envelope as its cause and carries the taint the coordinator attested for it;
its tool calls go through :mod:`agents._effector`, its memory through
:mod:`agents._memory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from trustbus.agents._effector import Effector
from trustbus.agents._held_calls import HeldCall
from trustbus.agents._memory import ForeignRecorder, Memory, memory_bucket
from trustbus.agents._tools import Toolbox
from trustbus.bus import (
    Bus,
    ContentType,
    Delivery,
    Envelope,
    Kind,
    current_trace,
    decode_json,
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


def _foreign(bus: Bus) -> ForeignRecorder:
    async def record(subject: str, revision: int, body: bytes, headers: Mapping[str, str] | None, detail: str) -> None:
        await bus.record_foreign_value(subject, revision, body, headers, detail=detail)

    return record
