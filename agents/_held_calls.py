"""A tool call the coordinator holds, which the handler did not wait for (``ctx.effect(..., wait_for_operator=False)``).

The handler ends instead (a framework ends its run the way it does for an approval) and keeps the call
(:meth:`HeldCall.as_json`) in its checkpoint; the agent lists what it keeps in
:meth:`agents.Agent.held_calls`. The runtime reads the coordinator's answer to each listed call between
deliveries and, once an operator has answered, calls :meth:`agents.Agent.on_answer` with a context of the
delivery that made the call: there, the same call is made under its key (and runs once, if approved).
Nothing here names an envelope id the agent made, so a replay keeps the same state byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from trustbus.agents._answers import FIRST_PAUSE_S, LONGEST_PAUSE_S
from trustbus.agents._effects import idempotency_key
from trustbus.bus import Envelope, TransientError, TransportError

if TYPE_CHECKING:
    from trustbus.agents._errors import EffectDenied

log = logging.getLogger("trustbus.agent")


@dataclass(frozen=True)
class HeldCall:
    """A held tool call: what was called, its position among the delivery's calls, the delivery, the taint then."""

    tool: str
    args: dict[str, Any]
    index: int
    cause: Envelope
    taint: tuple[str, ...]

    @property
    def idempotency_key(self) -> str:
        """The call's key: the one the tool runs under once approved."""
        return idempotency_key(self.cause.idempotency_key or self.cause.id, self.tool, self.args, self.index)

    @property
    def same_call(self) -> tuple[str, str]:
        """What a later call must match to be this one: the tool and its canonical arguments."""
        return self.tool, canonical(self.args)

    def as_json(self) -> dict[str, Any]:
        """The call as a checkpoint keeps it (JSON; the delivery's payload as base64)."""
        cause: dict[str, Any] = msgspec.to_builtins(self.cause)
        return {"tool": self.tool, "args": self.args, "index": self.index, "cause": cause, "taint": list(self.taint)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> HeldCall:
        """The call a checkpoint kept."""
        cause = msgspec.convert(value["cause"], Envelope)
        return cls(value["tool"], dict(value["args"]), int(value["index"]), cause, tuple(value["taint"]))


class CallNumbers:
    """How a handler's calls are numbered (the position in their keys): in call order, but a held call made
    again under its own number (and cause), and the delivery's calls after the held ones."""  # noqa: D205, D209

    def __init__(self, cause: Envelope) -> None:
        """``cause``: the delivery being handled."""
        self._cause = cause
        self._next = 0
        self._resuming: dict[tuple[str, str], HeldCall] = {}

    def resume(self, calls: Iterable[HeldCall]) -> None:
        """Make the next call matching each of ``calls`` (same tool and arguments) that call again."""
        for call in calls:
            self.reserve(call)
            if call.cause.id == self._cause.id:
                self._next = max(self._next, call.index + 1)

    def reserve(self, call: HeldCall) -> None:
        """Make the next call matching ``call`` that call (numbered already)."""
        self._resuming[call.same_call] = call

    def fresh(self, tool: str, args: dict[str, Any], taint: tuple[str, ...]) -> HeldCall:
        """A new call of this delivery, with the next number."""
        made = HeldCall(tool, args, self._next, self._cause, taint)
        self._next += 1
        return made

    def next(self, tool: str, args: dict[str, Any], taint: tuple[str, ...]) -> tuple[HeldCall, bool]:
        """The call ``tool(args)`` made now, and whether it is one made again (:meth:`resume`, :meth:`reserve`)."""
        again = self._resuming.pop((tool, canonical(args)), None)
        if again is not None:
            return HeldCall(tool, args, again.index, again.cause, taint), True
        return self.fresh(tool, args, taint), False


def canonical(args: dict[str, Any]) -> str:
    """Arguments as the effect records them."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


async def watch_held(
    held_calls: Callable[[], Iterable[HeldCall]],
    answer_to: Callable[[HeldCall], Awaitable[EffectDenied | bool]],
    resume: Callable[[HeldCall, EffectDenied | None], Awaitable[None]],
    *,
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: read the answer to each of ``held_calls()``, and ``resume`` each call an operator answered.

    No event reaches an agent when its call is answered (it may not subscribe to tenant subjects), so the
    answers are read again, backing off to once a second, as a waiting ``ctx.effect`` does. A resumption
    that fails is tried again at the next round (the call is still listed until the agent forgets it).
    """
    pause, watched = FIRST_PAUSE_S, frozenset[str]()
    while not stop.is_set():
        calls = list(held_calls())
        keys = frozenset(call.idempotency_key for call in calls)
        pause = FIRST_PAUSE_S if keys != watched else min(pause * 2, LONGEST_PAUSE_S)
        watched = keys
        for call in calls:
            try:
                answer = await answer_to(call)
                if answer is not False:
                    await resume(call, None if answer is True else answer)
            except (TransientError, TransportError) as exc:
                log.warning("held call not resumed yet", extra={"key": call.idempotency_key, "error": str(exc)})
            except Exception:
                log.exception("resuming a held call failed; trying again", extra={"key": call.idempotency_key})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
