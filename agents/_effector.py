"""Calling tools from a handler as recorded effects (``Context.effect``).

Each call gets an idempotency key derived from the delivery that caused it
(:func:`agents._effects.idempotency_key`), so a redelivery of the same
envelope makes the same calls under the same keys. The records of one call
live on their own subject, ``tb.<T>.effect.<agent>.<key>``; the latest one is a
single direct get away, and decides what happens:

- ``completed``: the recorded result is returned; the tool is not called again.
- ``failed`` or nothing: the call is made (a retry after a failure is a new attempt).
- only ``requested``: an earlier attempt died mid-call; the tool is called again
  with the same key, so a tool whose system drops repeated keys acts once.

Every attempt records ``requested`` (with a JetStream ack) before the tool
runs, then ``completed`` with the result or ``failed`` with the error.

A call to a high-risk tool while the handler carries taint is mediated
(:mod:`agents._effect_asks`): its ``requested`` record asks the coordinator,
and the tool runs only once the coordinator accepts (an operator approved a
hold); a refusal raises :class:`~agents.EffectDenied`. That record stands for
the attempt's ``requested``: a process that dies while it is held finds it
again on redelivery and waits for the same answer.

A handler may ask not to wait for an operator (``wait_for_operator=False``): a
held call then raises :class:`~agents.EffectHeld` and the handler ends; once an
operator answers, the runtime gives the agent a context that :meth:`Effector.resume`
told about the call (:mod:`agents._held_calls`), where the same call gets its
held key back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from trustbus.agents import _metrics as metrics
from trustbus.agents._effect_answers import await_answer, read_ask_answer
from trustbus.agents._effect_asks import asks_first, denial_message, is_ask, parse_denial
from trustbus.agents._errors import EffectDenied, EffectError, EffectHeld, RuntimeSetupError, UnknownTool
from trustbus.agents._held_calls import CallNumbers, HeldCall, canonical
from trustbus.agents._spans import execute_tool
from trustbus.agents._tools import Tool, Toolbox, ToolImplementation
from trustbus.bus import (
    Bus,
    Decision,
    EffectRecord,
    Envelope,
    TransientError,
    TransportError,
    VerificationError,
    current_trace,
    decode_effect,
    decode_json,
    encode_effect,
    new_envelope,
    open_envelope,
    subjects,
    unless_stopped,
)

log = logging.getLogger("trustbus.agent")


class Effector:
    """The tool calls of one handler invocation: numbered in call order, recorded, never repeated once completed."""

    def __init__(
        self,
        bus: Bus,
        agent_id: str,
        cause: Envelope,
        toolbox: Toolbox | None,
        *,
        held: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        stopping: asyncio.Event | None = None,
    ) -> None:
        """Made by the runtime for each delivery; ``cause`` is the delivered envelope.

        ``held()`` is entered while a call waits for an operator (the runtime suspends the
        handler's timeout meanwhile: waiting for a person is not a hung handler).
        ``stopping``: once set, a call waiting for an operator gives up waiting (the process stops).
        """
        self._bus = bus
        self._held = held
        self._stopping = stopping
        self._agent_id = agent_id
        self._cause = cause
        self._toolbox = toolbox
        self._numbers = CallNumbers(cause)
        self._made = 0
        self._completed: dict[int, str] = {}

    def resume(self, calls: Iterable[HeldCall]) -> None:
        """Make the next call matching each of ``calls`` (same tool and arguments) under that call's key.

        Calls of this delivery are numbered after the held ones, so none takes a key the
        delivery's earlier calls had.
        """
        self._numbers.resume(calls)

    async def ask_first(self, tool: str, args: dict[str, Any], *, taint: tuple[str, ...]) -> HeldCall | None:
        """Ask the coordinator about the call ``tool(args)`` before making it; the held call if it holds it.

        Otherwise (the call needs no asking, was accepted or refused, or completed before) None, and the
        next :meth:`call` of ``tool`` with ``args`` is this call: same key, and it finds the answer.
        """
        if self._toolbox is None:
            raise UnknownTool(f"tool {tool!r}: this agent was started without a tool registry")
        spec, _ = self._toolbox.bound(tool)
        made = self._numbers.fresh(tool, args, taint)
        if not asks_first(high_risk=spec.high_risk, effect_class=spec.effect_class, taint=taint):
            self._numbers.reserve(made)
            return None
        key = made.idempotency_key
        partition = self._bus.partition(self._cause.correlation_id)
        subject = subjects.effect_record(self._bus.tenant, self._agent_id, partition, key)
        found = await self._last_record(subject, key, tool)
        if found is not None and not is_ask(*found):
            self._numbers.reserve(made)  # completed or failed before: the call itself reads it
            return None
        ask = found[0] if found is not None else await self._record(subject, _requested(made, spec), taint)
        answer = await self._answer(ask, tool, hold_ends_wait=True)
        if answer.verdict == "hold":
            return made
        self._numbers.reserve(made)
        return None

    @property
    def keys(self) -> list[str]:
        """Keys of the calls completed so far, in call order (also when calls ran concurrently)."""
        return [self._completed[index] for index in sorted(self._completed)]

    async def call(
        self, tool: str, args: dict[str, Any], *, taint: tuple[str, ...], wait_for_operator: bool = True
    ) -> tuple[Any, tuple[str, ...]]:
        """Perform (or recall) one call; returns its JSON result and the taint the handler carries from now on.

        ``wait_for_operator``: False raises :class:`~agents.EffectHeld` if the coordinator holds the call.

        Raises:
            UnknownTool: no registry entry or no implementation for ``tool``.
            TypeError: ``args`` or the result is not JSON.
            EffectError: the stored record does not verify or is another call's.
            EffectDenied: a mediated call (high-risk tool, tainted handler) was refused by the coordinator.
            EffectHeld: the coordinator holds the call and ``wait_for_operator`` is False.
            TransportError: a record could not be read or stored (the delivery is retried).
            Exception: whatever the tool raised, after recording ``failed``.
        """
        if self._toolbox is None:
            raise UnknownTool(f"tool {tool!r}: this agent was started without a tool registry")
        spec, implementation = self._toolbox.bound(tool)
        position = self._made  # among this handler's calls, for effect_keys
        self._made += 1
        made, _ = self._numbers.next(tool, args, taint)
        # An instruction that carries an idempotency key makes the same effect keys however
        # often it is sent (a rollback run twice); otherwise the envelope id does (HeldCall.idempotency_key).
        key = made.idempotency_key
        with execute_tool(self._agent_id, self._cause, tool=tool, key=key, effect_class=spec.effect_class) as span:
            result, outcome, gained = await self._call(made, spec, implementation, key, waits=wait_for_operator)
            if span is not None:
                span.set_attribute("trustbus.effect.outcome", outcome)
        self._completed[position] = key
        return result, gained

    async def _call(
        self, made: HeldCall, spec: Tool, implementation: ToolImplementation, key: str, *, waits: bool
    ) -> tuple[Any, str, tuple[str, ...]]:
        """:meth:`call` (``made``) under its key: the result, how it was had (``recalled`` or ``ran``), the taint after.

        ``waits``: whether a held call waits for the operator (else it raises :class:`~agents.EffectHeld`).
        """
        tool, taint = made.tool, made.taint
        arguments = canonical(made.args).encode()
        partition = self._bus.partition(self._cause.correlation_id)
        subject = subjects.effect_record(self._bus.tenant, self._agent_id, partition, key)
        found = await self._last_record(subject, key, tool)
        last = found[1] if found is not None else None
        if last is not None and last.phase == "completed":
            log.info("effect already completed; recorded result returned", extra={"tool": tool, "key": key})
            return decode_json(last.result or b"null"), "recalled", _union(taint, last.taint, spec.result_taint)
        mediated = asks_first(high_risk=spec.high_risk, effect_class=spec.effect_class, taint=taint)
        if last is not None and last.phase == "requested" and not mediated:
            log.warning("effect requested but never finished; calling again with its key", extra={"key": key})
        requested = _requested(made, spec)
        if mediated:
            # Mediated: the requested record asks the coordinator; the tool waits for its answer.
            # A request already made for this call (by a process that died waiting) is waited on, not repeated.
            ask = found[0] if found is not None and is_ask(*found) else await self._record(subject, requested, taint)
            if waits:
                with self._held():
                    answer = await self._answer(ask, tool)
            else:
                answer = await self._answer(ask, tool, hold_ends_wait=True)
                if answer.verdict == "hold":
                    raise EffectHeld(made)
            if answer.verdict != "accept":
                raise await self._refused(subject, requested, ask.taint, answer)
        else:
            await self._record(subject, requested, taint)
        try:
            with metrics.EFFECT_SECONDS.labels(tool).time():
                result = json.dumps(await implementation(json.loads(arguments), idempotency_key=key)).encode()
        except Exception as exc:
            await self._record_failure(subject, requested, taint, exc)
            raise
        gained = _union(taint, spec.result_taint)
        completed = msgspec.structs.replace(requested, phase="completed", result=result, taint=spec.result_taint)
        await self._record(subject, completed, gained)
        return json.loads(result), "ran", gained

    async def _refused(
        self, subject: str, requested: EffectRecord, taint: tuple[str, ...], answer: Decision
    ) -> EffectDenied:
        """Record that the coordinator refused the call ``requested`` asks for; the refusal to raise."""
        reason = answer.reasons[-1]
        key, tool = requested.idempotency_key, requested.tool
        denied = EffectDenied(
            denial_message(reason=reason, approver=answer.approver, tool=tool, key=key),
            reason=reason,
            tool=tool,
            idempotency_key=key,
            approver=answer.approver,
        )
        await self._record_failure(subject, requested, taint, denied)
        return denied

    async def answer_to(self, call: HeldCall) -> EffectDenied | bool:
        """Whether an operator has answered the held ``call``: False not yet, True approved, the refusal if denied.

        A denial is recorded (``failed``) here. A call whose latest record is not its ask any more
        (it went on, or failed) counts as answered: going on makes it again under its key.

        Raises:
            TransportError: a record or the answer could not be read.
            EffectError: the stored record does not verify or is another call's.
        """
        key = call.idempotency_key
        partition = self._bus.partition(call.cause.correlation_id)
        subject = subjects.effect_record(self._bus.tenant, self._agent_id, partition, key)
        found = await self._last_record(subject, key, call.tool)
        if found is None or not is_ask(*found):
            denial = parse_denial(found[1].error) if found is not None and found[1].phase == "failed" else None
            if denial is None:
                return True
            return EffectDenied.refusing(reason=denial[0], approver=denial[1], tool=call.tool, idempotency_key=key)
        ask, requested = found
        answer = await read_ask_answer(self._bus, self._agent_id, ask)
        if answer is None or answer.verdict == "hold":
            return False
        if answer.verdict == "accept":
            return True
        return await self._refused(subject, requested, ask.taint, answer)

    async def _answer(self, ask: Envelope, tool: str, *, hold_ends_wait: bool = False) -> Decision:
        """The coordinator's answer to ``ask``, waited for until the process stops.

        ``hold_ends_wait``: a ``hold`` is an answer (the handler does not wait for the operator).

        Raises:
            TransientError: the process is stopping; the request stands, and the
                redelivery after a restart waits on it again (never asks twice).
        """
        waiting = await_answer(self._bus, self._agent_id, ask, tool=tool, hold_ends_wait=hold_ends_wait)
        if self._stopping is None:
            return await waiting
        answer = await unless_stopped(waiting, self._stopping)
        if answer is None:
            raise TransientError(f"stopping while {tool} waits for an operator; the request stands")
        return answer

    async def _last_record(self, subject: str, key: str, tool: str) -> tuple[Envelope, EffectRecord] | None:
        """The latest record of this call (envelope and record), verified as this agent's own; None if none."""
        found = await self._bus.log(subject, direct=True).last()
        if found is None:
            return None
        try:
            opened = open_envelope(
                found.body,
                found.headers,
                keyring=self._bus.keyring.keyring,
                received_ns=found.stored_ns,
                limits=self._bus.limits,
            )
            record = decode_effect(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError) as exc:
            raise EffectError(f"the record of effect {key} cannot be trusted: {exc}") from exc
        envelope = opened.envelope
        mine = envelope.sender == self._agent_id and envelope.kind == "effect" and envelope.idempotency_key == key
        if not mine or record.idempotency_key != key or record.tool != tool:
            raise EffectError(f"the record on {subject} is not {self._agent_id}'s record of this {tool} call")
        return envelope, record

    async def _record(self, subject: str, record: EffectRecord, taint: tuple[str, ...]) -> Envelope:
        envelope = new_envelope(
            tenant=self._bus.tenant,
            kind="effect",
            sender=self._agent_id,
            to=(),
            content_type="application/msgpack",
            payload=encode_effect(record),
            correlation_id=self._cause.correlation_id,
            causation_id=self._cause.id,
            hop=self._cause.hop + 1,
            taint=taint,
            idempotency_key=record.idempotency_key,
            trace=current_trace(),
        )
        await self._bus.publish(subject, self._bus.seal(envelope))
        metrics.EFFECTS.labels(record.tool, record.phase).inc()
        return envelope

    async def _record_failure(
        self, subject: str, requested: EffectRecord, taint: tuple[str, ...], exc: Exception
    ) -> None:
        """Record ``failed``; if that cannot be stored, the ``requested`` record stands (the call is retried)."""
        failed = msgspec.structs.replace(requested, phase="failed", error=f"{type(exc).__name__}: {exc}")
        try:
            await self._record(subject, failed, taint)
        except TransportError:
            log.exception("could not record a failed effect", extra={"key": requested.idempotency_key})


async def check_direct_gets(bus: Bus) -> None:
    """RuntimeSetupError unless the tenant stream allows the direct gets effect look-ups use."""
    try:
        allowed = await bus.allows_direct_gets()
    except TransportError as exc:
        raise RuntimeSetupError(f"cannot read stream {bus.stream}: {exc}") from exc
    if not allowed:
        raise RuntimeSetupError(
            f"stream {bus.stream} does not allow direct gets, which effects need: "
            f"run `trustbus init --tenant {bus.tenant}` again (as the admin) to turn them on"
        )


def _requested(call: HeldCall, spec: Tool) -> EffectRecord:
    """The ``requested`` record of ``call``."""
    return EffectRecord(
        phase="requested",
        tool=call.tool,
        idempotency_key=call.idempotency_key,
        args=canonical(call.args).encode(),
        effect_class=spec.effect_class,
        compensating_tool=spec.compensating_tool,
        high_risk=spec.high_risk,
    )


def _union(*taints: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set().union(*taints)))
