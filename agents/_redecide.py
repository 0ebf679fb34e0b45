"""Re-deciding a recorded incident under another policy: would it have stopped this?

The ledger yields the incident's envelopes; this folds them through the pure
``decide`` in stream order, from an empty state (the correlation's own budget,
hops and taint are rebuilt as it goes; rate limits, which depend on traffic
outside the incident, are not), and compares each new decision with the
recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustbus.agents._decision import CoordinatorState, Deferral, decide, record_effect
from trustbus.agents._memory import parse_write
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, EffectRecord, Envelope


@dataclass(frozen=True)
class Redecision:
    """One envelope: what was decided then, and what this policy decides."""

    envelope: Envelope
    recorded: Decision | None
    now: Decision | Deferral

    @property
    def changed(self) -> bool:
        """Whether the verdict (or the recipients) would differ."""
        if self.recorded is None or isinstance(self.now, Deferral):
            return True
        return (self.recorded.verdict, self.recorded.deliver_to) != (self.now.verdict, self.now.deliver_to)


def redecide(
    policy: Policy,
    sent: list[tuple[int, int, Envelope, Decision | None]],
    effects: list[tuple[int, int, Envelope, EffectRecord]],
) -> list[Redecision]:
    """Decide again every envelope ``sent`` (seq, stored_ns, envelope, recorded first decision).

    ``effects`` are the incident's recorded tool calls, folded in at their place
    so their result taint counts as it did.
    """
    state = CoordinatorState()
    timeline: list[tuple[int, int, Envelope, Decision | None, EffectRecord | None]] = [
        (seq, ns, env, decision, None) for seq, ns, env, decision in sent
    ] + [(seq, ns, env, None, record) for seq, ns, env, record in effects]
    results: list[Redecision] = []
    for seq, stored_ns, envelope, recorded, effect in sorted(timeline, key=lambda item: item[0]):
        if effect is not None:
            if effect.phase == "completed":
                state.apply(
                    record_effect(envelope, effect.taint, received_ns=stored_ns, source_seq=seq), policy, seq=seq
                )
            continue
        write = parse_write(envelope.payload) if envelope.kind == "memory_write" else None
        now = decide(
            policy,
            envelope,
            state,
            received_ns=stored_ns,
            source_seq=seq,
            memory_revision=write.expected_revision if write else 0,  # as the writer expected: not re-judged
        )
        if isinstance(now, Decision):
            state.apply(now, policy, seq=seq)
        results.append(Redecision(envelope=envelope, recorded=recorded, now=now))
    return results
