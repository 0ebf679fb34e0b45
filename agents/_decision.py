"""The coordinator's decision: a pure function of (policy, envelope, state).

``decide`` reads the state and returns a :class:`Decision` (or a
:class:`Deferral` when the sender is over a ``delay`` rate limit);
``CoordinatorState.apply`` folds a recorded decision into the state. The
state is therefore exactly the fold of the decision log over the policy, which
is how a coordinator rebuilds it at start and how a past incident can be
re-decided under another policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trustbus.agents._causes import UNSOLICITED_REPLY, cause_problem, reply_may_reach
from trustbus.agents._memory import parse_write
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, Dropped, Envelope, MalformedPayload, Verdict, decode_json, subjects

EFFECT_RECORDED = "effect_recorded"
UNKNOWN_RECIPIENT = "unknown_recipient"  # a name that owns no key: no inbox is made for it
EFFECT_REQUESTED = "effect_requested"  # a high-risk tool call asked about before it runs (agents._effect_asks)


@dataclass(frozen=True)
class Deferral:
    """Not decided yet: the sender is over its rate and the policy says to slow it down."""

    retry_after_s: float
    reason: str = "rate_limit"


_ABSENT = object()
Undo = list[tuple[Any, Any, Any]]


@dataclass
class _Bucket:
    tokens: float
    at_ns: int


@dataclass
class CoordinatorState:
    """Everything decisions depend on, derived only from the decision log.

    Attributes:
        decided: envelope id -> the decision about it.
        spent: accepted envelopes per correlation.
        hops: effective hop of each accepted envelope (to derive a reply's hop
            from its cause instead of trusting the sender).
        seen_taint: (correlation, agent) -> taint of everything delivered to it.
        last_seq: stream sequence of the last decision applied.
    """

    decided: dict[str, Decision] = field(default_factory=dict)
    spent: Counter[str] = field(default_factory=Counter)
    hops: dict[str, int] = field(default_factory=dict)
    seen_taint: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    last_seq: int = 0

    def effective_taint(self, envelope: Envelope) -> tuple[str, ...]:
        """The declared taint and that of everything delivered to the sender in its correlation, sorted."""
        inherited = self.seen_taint.get((envelope.correlation_id, envelope.sender), frozenset())
        return tuple(sorted(set(envelope.taint) | inherited))

    def tokens(self, policy: Policy, sender: str, at_ns: int) -> float | None:
        """Rate tokens ``sender`` has at ``at_ns`` (None: no rate limit applies)."""
        rate = policy.rate_for(sender)
        if rate is None:
            return None
        bucket = self.buckets.get(sender)
        if bucket is None:
            return float(rate.burst)
        elapsed_s = max(0, at_ns - bucket.at_ns) / 1e9
        return min(float(rate.burst), bucket.tokens + elapsed_s * rate.per_second)

    def apply(self, decision: Decision, policy: Policy, *, seq: int, undo: Undo | None = None) -> None:
        """Fold one recorded decision (at stream sequence ``seq``) into the state.

        With ``undo``, every value it replaces is noted there first, so
        :meth:`rollback` can take provisional decisions back out.
        """
        first = decision.envelope_id not in self.decided
        self._set(self.decided, decision.envelope_id, decision, undo)
        if undo is not None:
            undo.append((self, "last_seq", self.last_seq))
        self.last_seq = max(self.last_seq, seq)
        if EFFECT_RECORDED in decision.reasons:  # a tool result the sender has now seen
            key = (decision.correlation_id, decision.sender)
            self._set(
                self.seen_taint, key, self.seen_taint.get(key, frozenset()) | frozenset(decision.effective_taint), undo
            )
            return
        if EFFECT_REQUESTED in decision.reasons:  # nothing delivered, nothing spent
            return
        if first and "rate_limit" not in decision.reasons:
            tokens = self.tokens(policy, decision.sender, decision.decided_ns)
            if tokens is not None:
                self._set(self.buckets, decision.sender, _Bucket(tokens - 1, decision.decided_ns), undo)
        if decision.verdict != "accept":
            return
        self._set(self.spent, decision.correlation_id, self.spent[decision.correlation_id] + 1, undo)
        self._set(self.hops, decision.envelope_id, decision.hop, undo)
        taint = frozenset(decision.effective_taint)
        for recipient in decision.deliver_to:
            key = (decision.correlation_id, recipient)
            self._set(self.seen_taint, key, self.seen_taint.get(key, frozenset()) | taint, undo)

    @staticmethod
    def _set(table: dict[Any, Any], key: Any, value: Any, undo: Undo | None) -> None:
        if undo is not None:
            undo.append((table, key, table.get(key, _ABSENT)))
        table[key] = value

    @staticmethod
    def rollback(undo: Undo) -> None:
        """Restore every value ``undo`` noted, newest first."""
        for target, key, old in reversed(undo):
            if isinstance(target, CoordinatorState):
                target.last_seq = old
            elif old is _ABSENT:
                target.pop(key, None)
            else:
                target[key] = old
        undo.clear()

    def held(self) -> list[Decision]:
        """Decisions still waiting for an operator, oldest first."""
        return sorted((d for d in self.decided.values() if d.verdict == "hold"), key=lambda d: d.decided_ns)


def instruction_verb(envelope: Envelope) -> str | None:
    """The ``verb`` of a JSON instruction payload, if it has a non-empty string one."""
    if envelope.content_type != "application/json":
        return None
    try:
        body = decode_json(envelope.payload)
    except MalformedPayload:
        return None
    verb = body.get("verb") if isinstance(body, dict) else None
    return verb if isinstance(verb, str) and verb else None


def decide(
    policy: Policy,
    envelope: Envelope,
    state: CoordinatorState,
    *,
    received_ns: int,
    source_seq: int,
    memory_revision: int = 0,
    sender_role: str = "agent",
    known: Callable[[str], bool] = lambda _: True,
) -> Decision | Deferral:
    """Decide one envelope. Pure: reads ``state``, never changes it.

    Args:
        policy: the policy in force.
        envelope: the verified envelope from an outbox.
        state: the fold of every earlier decision.
        received_ns: when the server stored the envelope (the decision's clock).
        source_seq: the envelope's stream sequence.
        memory_revision: for a ``memory_write``, the key's current revision (0: absent).
        sender_role: the keyring role of the signing key (an ``operator`` may revert
            another agent's memory during a rollback; no one else may write it).
        known: whether a recipient name owns a key in the tenant's keyring; one that does
            not is dropped (``unknown_recipient``): every name delivered to costs the
            server an inbox consumer, so names may not be invented.
    """
    hop = max(envelope.hop, state.hops.get(envelope.causation_id or "", -1) + 1)
    effective = state.effective_taint(envelope)
    recipients = list(dict.fromkeys(envelope.to))

    def decision(verdict: Verdict, reasons: list[str], deliver: list[str], dropped: list[Dropped]) -> Decision:
        return Decision(
            envelope_id=envelope.id,
            source_seq=source_seq,
            sender=envelope.sender,
            kind=envelope.kind,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.causation_id,
            verdict=verdict,
            reasons=tuple(dict.fromkeys(reasons)),
            deliver_to=tuple(deliver),
            dropped=tuple(dropped),
            hop=hop,
            declared_taint=envelope.taint,
            effective_taint=effective,
            decided_ns=received_ns,
        )

    def refuse_all(reason: str) -> Decision:
        return decision("reject", [reason], [], [Dropped(r, reason) for r in recipients])

    if hop > policy.limits.hop_limit:
        return refuse_all("hop_limit")
    if state.spent[envelope.correlation_id] >= policy.limits.budget_per_correlation:
        return refuse_all("budget")
    tokens = state.tokens(policy, envelope.sender, received_ns)
    if tokens is not None and tokens < 1:
        rate = policy.rate_for(envelope.sender)
        assert rate is not None
        if rate.over_limit == "delay":
            return Deferral(retry_after_s=(1 - tokens) / rate.per_second)
        return refuse_all("rate_limit")
    problem = cause_problem(envelope, state.decided)
    if problem is not None:
        return refuse_all(problem)

    if envelope.kind == "checkpoint":
        # An agent may always checkpoint to itself; the coordinator stores it, nobody receives it.
        if recipients == [envelope.sender]:
            return decision("accept", ["checkpoint"], [], [])
        return refuse_all("not_allowed")

    if envelope.kind == "memory_write":
        # An agent writes only its own namespace, by addressing the write to itself;
        # an operator may write one agent's namespace, only to revert it in a rollback.
        write = parse_write(envelope.payload)
        reverting = sender_role == "operator" and len(recipients) == 1 and write is not None and bool(write.reverts)
        if recipients != [envelope.sender] and not reverting:
            return refuse_all("foreign_namespace")
        if write is None:
            return refuse_all("bad_memory_write")
        if write.expected_revision != memory_revision:
            return refuse_all("stale_revision")
        if effective:
            on_tainted = policy.taint.on_tainted_memory_write
            if on_tainted == "hold":
                return decision("hold", ["tainted_memory_write"], [], [])
            if on_tainted == "quarantine":
                return refuse_all("tainted_memory_write")
        return decision("accept", ["memory_write"], [], [])

    verb = instruction_verb(envelope) if envelope.kind == "instruction" else None
    allowed: list[str] = []
    dropped: list[Dropped] = []
    for recipient in recipients:
        rule = policy.rule_for(envelope.sender, recipient, envelope.kind)
        if rule is None:
            dropped.append(Dropped(recipient, "not_allowed"))
        elif not recipient.startswith(subjects.TOPIC_PREFIX) and not known(recipient):
            dropped.append(Dropped(recipient, UNKNOWN_RECIPIENT))
        elif envelope.kind == "reply" and not reply_may_reach(envelope, recipient, state.decided):
            dropped.append(Dropped(recipient, UNSOLICITED_REPLY))
        elif envelope.kind == "instruction" and verb is None:
            dropped.append(Dropped(recipient, "no_verb"))
        elif envelope.kind == "instruction" and verb is not None and not rule.allows_verb(verb):
            dropped.append(Dropped(recipient, "verb_not_allowed"))
        else:
            allowed.append(recipient)
    reasons = [d.reason for d in dropped]
    limit = policy.limits.fanout_per_envelope
    if len(allowed) > limit:
        dropped.extend(Dropped(r, "fanout") for r in allowed[limit:])
        allowed = allowed[:limit]
        reasons.append("fanout")
    if not allowed:
        return decision("reject", reasons or ["no_recipients"], [], dropped)
    if envelope.kind == "instruction" and effective:
        high_risk = verb in policy.taint.high_risk_tools
        action = policy.taint.on_tainted_high_risk if high_risk else policy.taint.on_tainted_instruction
        reason = "tainted_high_risk" if high_risk else "tainted_instruction"
        if action == "hold":
            return decision("hold", [*reasons, reason], allowed, dropped)
        if action == "reject":
            return decision("reject", [*reasons, reason], [], [*dropped, *(Dropped(r, reason) for r in allowed)])
    return decision("accept", reasons, allowed, dropped)


def decide_approval(held: Decision, approval: Envelope, *, approve: bool, received_ns: int) -> Decision:
    """The decision that releases (``approve``) or drops a held envelope, on an operator's approval."""
    return msgspec.structs.replace(
        held,
        verdict="accept" if approve else "reject",
        reasons=(*held.reasons, "approved" if approve else "denied"),
        deliver_to=held.deliver_to if approve else (),
        dropped=held.dropped if approve else (*held.dropped, *(Dropped(r, "denied") for r in held.deliver_to)),
        decided_ns=received_ns,
        approval_id=approval.id,
        approver=approval.sender,
    )


def record_effect(envelope: Envelope, taint: tuple[str, ...], *, received_ns: int, source_seq: int) -> Decision:
    """The decision that records a completed tool call, so its result's taint follows its agent."""
    return Decision(
        envelope_id=envelope.id,
        source_seq=source_seq,
        sender=envelope.sender,
        kind=envelope.kind,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
        verdict="accept",
        reasons=(EFFECT_RECORDED,),
        deliver_to=(),
        dropped=(),
        hop=envelope.hop,
        declared_taint=envelope.taint,
        effective_taint=tuple(sorted(set(envelope.taint) | set(taint))),
        decided_ns=received_ns,
    )
