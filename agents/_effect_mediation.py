"""Effect records in the coordinator's path: completed tool calls and the asks of high-risk ones.

An agent records each tool call on its effect subject ``tb.<T>.effect.<agent>.<p>.<key>``
(docs/EFFECTS.md). The coordinator of the partition records a completed call's
result taint as a decision, so it follows the agent in that correlation, and
decides an ask (a high-risk call made under taint, :mod:`agents._effect_asks`)
before the tool runs, leaving the agent its signed answer.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import msgspec

from trustbus.agents._decision import record_effect
from trustbus.agents._effect_answers import store_ask_answer
from trustbus.agents._effect_asks import decide_ask, is_ask
from trustbus.bus import ConfigError, Decision, Delivery, EffectRecord, decode_effect, subjects

if TYPE_CHECKING:
    from trustbus.agents._coordinator import Coordinator


class EffectMediation:
    """Mediates the effect records of one coordinator's partition."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def mediate(self, delivery: Delivery) -> None:
        """Record a completed tool call's taint, or decide an ask; quarantine what is not an agent's own record."""
        coordinator, envelope = self._coordinator, delivery.envelope
        parsed = subjects.parse(delivery.subject)
        owner = parsed.owner if parsed is not None else None
        misplaced = coordinator.bus.partition(envelope.correlation_id) != coordinator.partition
        if owner != envelope.sender or envelope.kind != "effect" or misplaced:
            detail = f"{envelope.sender}'s {envelope.kind} arrived on {delivery.subject}"
            await coordinator.refuse(delivery, "wrong_outbox", detail)
            return
        try:
            record = decode_effect(envelope.payload)
        except (msgspec.DecodeError, ValueError) as exc:
            await delivery.reject("bad_effect", str(exc))
            return
        if is_ask(envelope, record):
            await self._ask(delivery, record)
        elif record.phase == "completed":
            taint = functools.partial(
                record_effect, envelope, record.taint, received_ns=delivery.stored_ns, source_seq=delivery.stream_seq
            )
            await coordinator.record_new(delivery, taint)

    async def _ask(self, delivery: Delivery, record: EffectRecord) -> None:
        """Decide a high-risk tool call made under taint before it runs, and leave the agent the answer."""
        coordinator, envelope = self._coordinator, delivery.envelope
        try:
            subjects.check_effect_key(envelope.id)
        except ConfigError:
            await delivery.reject("bad_effect", f"effect request id {envelope.id!r} cannot name its answer's key")
            return

        def decide() -> Decision:
            clock, seq = delivery.stored_ns, delivery.stream_seq
            return decide_ask(
                coordinator.policy, envelope, record, coordinator.state, received_ns=clock, source_seq=seq
            )

        await coordinator.record_new(delivery, decide)
        if delivery.settled:
            return  # quarantined: its correlation is full
        decision = coordinator.state.decision(envelope.correlation_id, envelope.id)
        assert decision is not None, envelope.id
        await store_ask_answer(coordinator.bus, decision)
