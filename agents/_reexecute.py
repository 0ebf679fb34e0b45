"""Re-executing an agent's handler on the inputs the ledger recorded, with no side effects.

Each recorded delivery is handed to the handler again through a
:class:`ReplayContext`: what it sends is collected instead of published, and
every effect it calls is answered from the recorded result of the same call
(same idempotency key, so the same cause, tool, arguments and position), so no
tool, no model, no system is touched. The outputs are then compared with what
the agent recorded the first time.

A call the coordinator held (``held``) and the handler did not wait for ends the
handler again (:class:`~agents.EffectHeld`); once the delivery is handled, each held
call the agent still lists is answered as the ledger recorded (completed: approved,
refused: denied) through ``on_answer``, right after that delivery.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustbus.agents._context import Context
from trustbus.agents._effect_asks import denial_message, parse_denial
from trustbus.agents._errors import EffectDenied, EffectHeld
from trustbus.agents._held_calls import CallNumbers, HeldCall
from trustbus.agents._memory_outcomes import MemoryOutcome
from trustbus.agents._runtime import Agent, compensate, compensation_request
from trustbus.bus import EffectRecord, Envelope, decode_json


class NotRecorded(Exception):
    """The handler called an effect the ledger has no completed record of: a divergence."""


@dataclass
class Divergence:
    """Where the re-executed handler did something else than the recorded one."""

    delivery_id: str
    what: str
    recorded: Any
    replayed: Any


class _ReplayMemory:
    """Memory reads are not recorded in the ledger: a replay sees an empty namespace, and its writes, which are
    not published, are never decided."""  # noqa: D205, D209

    def __init__(self, context: ReplayContext) -> None:
        self._context = context

    async def get(self, key: str) -> None:
        return None

    async def write(self, key: str, value: object, *, expected_revision: int) -> Envelope:
        payload = {"key": key, "value": value, "expected_revision": expected_revision}
        return await self._context.send((self._context.agent_id,), payload, kind="memory_write")

    async def outcome(
        self, envelope: Envelope, *, timeout_s: float = 10.0, wait_for_operator: bool = False
    ) -> MemoryOutcome:
        """Nothing answers a write a replay did not publish: as when no answer came in time, at once."""
        raise TimeoutError(f"memory write {envelope.id} was not published (a replay): no coordinator decides it")


class ReplayContext(Context):
    """A handler context that publishes nothing and runs no tool."""

    def __init__(
        self,
        agent_id: str,
        envelope: Envelope,
        taint: tuple[str, ...],
        effects: dict[str, EffectRecord],
        held: Collection[str] = (),
    ) -> None:
        """``effects``: the recorded completed effects by idempotency key; ``held``: keys of calls that were held."""
        self.agent_id = agent_id
        self.envelope = envelope
        self.taint = taint
        self.decision_id = None
        self.attempt = 1
        self.memory = _ReplayMemory(self)  # type: ignore[assignment]
        self.sent: list[Envelope] = []
        self.called: list[tuple[str, Any]] = []
        self._effects = effects
        self._keys: list[str] = []
        self._held = held
        self._numbers = CallNumbers(envelope)

    async def _emit(self, envelope: Envelope) -> None:
        """Keep what the handler sends instead of publishing it."""
        self.sent.append(envelope)

    def resume(self, calls: Iterable[HeldCall]) -> None:
        """As :meth:`Context.resume`: the next call matching each held call has its key."""
        self._numbers.resume(calls)

    async def ask_first(self, tool: str, args: dict[str, Any]) -> HeldCall | None:
        """As :meth:`Context.ask_first`: the held call if the ledger shows it held."""
        made = self._numbers.fresh(tool, args, self.taint)
        if made.idempotency_key in self._held:
            return made
        self._numbers.reserve(made)
        return None

    async def effect(self, tool: str, args: dict[str, Any], *, wait_for_operator: bool = True) -> Any:
        """The recorded result of this call; NotRecorded if there is none (EffectHeld if it was held, as then)."""
        made, again = self._numbers.next(tool, args, self.taint)
        key = made.idempotency_key
        self.called.append((tool, args))
        if not again and not wait_for_operator and key in self._held:
            raise EffectHeld(made)
        record = self._effects.get(key)
        denial = parse_denial(record.error) if record is not None and record.tool == tool else None
        if denial is not None:  # the coordinator refused it then: refuse it again
            reason, approver = denial
            message = denial_message(reason=reason, approver=approver, tool=tool, key=key)
            raise EffectDenied(message, reason=reason, tool=tool, idempotency_key=key, approver=approver)
        if record is None or record.phase != "completed" or record.tool != tool:
            raise NotRecorded(f"{tool}({json.dumps(args, sort_keys=True)}) has no completed record")
        self._keys.append(key)
        self.taint = tuple(sorted(set(self.taint) | set(record.taint)))
        return decode_json(record.result or b"null")

    @property
    def effect_keys(self) -> list[str]:
        """Keys of the effects answered so far."""
        return list(self._keys)


@dataclass
class Replayed:
    """One re-executed delivery and how it compares."""

    delivery: Envelope
    divergences: list[Divergence] = field(default_factory=list)


def _answer(call: HeldCall, effects: dict[str, EffectRecord], resumed: set[str]) -> EffectDenied | bool | None:
    """How the ledger says ``call`` was answered: True approved (completed), the refusal, None not (yet, or again)."""
    key = call.idempotency_key
    record = effects.get(key)
    if key in resumed or record is None:
        return None
    if record.phase == "completed":
        return True
    denial = parse_denial(record.error) if record.phase == "failed" else None
    if denial is None:
        return None
    return EffectDenied.refusing(reason=denial[0], approver=denial[1], tool=call.tool, idempotency_key=key)


def _output(envelope: Envelope) -> dict[str, Any]:
    try:
        payload: Any = decode_json(envelope.payload)
    except ValueError:
        payload = envelope.payload.hex()
    return {"kind": envelope.kind, "to": list(envelope.to), "payload": payload, "taint": list(envelope.taint)}


async def reexecute(
    agent: Agent,
    agent_id: str,
    deliveries: Sequence[tuple[Envelope, tuple[str, ...]]],
    *,
    recorded_sends: dict[str, list[Envelope]],
    effects: dict[str, EffectRecord],
    checkpoint: dict[str, Any] | None = None,
    held: Collection[str] = (),
) -> list[Replayed]:
    """Hand each recorded delivery (with the taint it was delivered with) to ``agent`` again and compare.

    Args:
        agent: the agent, as ``trustbus agent run`` would load it.
        agent_id: its id.
        deliveries: what was delivered to it, in order, with each delivery's effective taint.
        recorded_sends: by delivered envelope id, what the agent sent because of it (naming it as the cause), in
            order; what the re-executed agent sends is compared by the cause it names the same way.
        effects: every recorded effect record of the incident, by idempotency key (the latest phase).
        checkpoint: the state its ``on_start`` is given first: its last checkpoint before the
            first delivery (:func:`ledger.checkpoint_before`), as a process started then would get.
        held: idempotency keys of the calls the coordinator held (whatever was answered after).
    """
    await agent.on_start(checkpoint)
    results = []
    sent: dict[str, list[Envelope]] = {}  # by cause, as ``recorded_sends``: a later delivery may answer an earlier one

    async def run(ctx: ReplayContext, result: Replayed, work: Awaitable[None]) -> None:
        try:
            await work
        except NotRecorded as exc:
            result.divergences.append(Divergence(result.delivery.id, "effect", None, str(exc)))
        except Exception as exc:  # the handler's own failure is a finding, not a crash of the replay
            result.divergences.append(Divergence(result.delivery.id, "raised", None, f"{type(exc).__name__}: {exc}"))
        for out in ctx.sent:
            sent.setdefault(out.causation_id or result.delivery.id, []).append(out)

    for envelope, taint in deliveries:
        ctx = ReplayContext(agent_id, envelope, taint, effects, held)
        result = Replayed(delivery=envelope)
        compensating = compensation_request(envelope) is not None
        await run(ctx, result, compensate(ctx) if compensating else agent.handle(ctx))
        resumed: set[str] = set()
        while call := next((c for c in agent.held_calls() if _answer(c, effects, resumed) is not None), None):
            resumed.add(call.idempotency_key)
            again = ReplayContext(agent_id, call.cause, call.taint, effects, held)
            again.resume((call,))
            denied = _answer(call, effects, set())
            await run(again, result, agent.on_answer(again, call, denied if isinstance(denied, EffectDenied) else None))
        results.append(result)
    for result in results:
        recorded = [_output(e) for e in recorded_sends.get(result.delivery.id, [])]
        replayed = [_output(e) for e in sent.get(result.delivery.id, [])]
        if recorded != replayed:
            result.divergences.append(Divergence(result.delivery.id, "sent", recorded, replayed))
    return results
