"""The coordinator's decision: a pure function of (policy, envelope, state).

``decide`` reads the state and returns a :class:`Decision` (or a
:class:`Deferral` when the sender is over a ``delay`` rate limit);
``CoordinatorState.apply`` folds a recorded decision into the state. The
state is therefore exactly the fold of the decision log over the policy, which
is how a coordinator rebuilds it at start and how a past incident can be
re-decided under another policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from trustbus.agents._causes import UNSOLICITED_REPLY, cause_problem, reply_may_reach
from trustbus.agents._memory import parse_write
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, Dropped, Envelope, MalformedPayload, Verdict, decode_json

EFFECT_RECORDED = "effect_recorded"
EFFECT_REQUESTED = "effect_requested"  # a high-risk tool call asked about before it runs (agents._effect_asks)


@dataclass(frozen=True)
class Deferral:
    """Not decided yet: the sender is over its rate and the policy says to slow it down."""

    retry_after_s: float
    reason: str = "rate_limit"


_ABSENT = object()
Undo = list[tuple[Any, Any, Any]]
SUSPENSION_KIND = "suspension"  # a decision suspending a sender (agents._suspension)


@dataclass
class TokenBucket:
    """A sender's rate tokens as of ``at_ns``."""

    tokens: float
    at_ns: int


@dataclass
class Correlation:
    """What decisions about one correlation depend on: the fold of that correlation's decisions.

    Attributes:
        decided: envelope id -> the last decision about it (replays, causes, replies).
        spent: accepted envelopes.
        hops: effective hop of each accepted envelope (to derive a reply's hop
            from its cause instead of trusting the sender).
        seen_taint: agent -> taint of everything delivered to it.
        record_ids: envelope id -> id of the record of its last decision.
        records: ids of every decision record folded in (a second copy is a replay).
        last_ns: the clock of its latest decision (0: none); once ``limits.correlation_idle_s`` passed since,
            the correlation has expired and starts again empty (:meth:`CoordinatorState.live`).
        covered: the log sequence through which a stored copy of it was complete
            (0: never stored); :class:`agents._correlation_store.CorrelationStore`'s bookkeeping.
        revision: that stored copy's revision in the state bucket (0: none).
        dirty: changed since it was last stored or loaded.
    """

    decided: dict[str, Decision] = field(default_factory=dict)
    spent: int = 0
    hops: dict[str, int] = field(default_factory=dict)
    seen_taint: dict[str, frozenset[str]] = field(default_factory=dict)
    record_ids: dict[str, str] = field(default_factory=dict)
    records: set[str] = field(default_factory=set)
    last_ns: int = 0
    covered: int = 0
    revision: int = 0
    dirty: bool = False


_NONE = Correlation()  # what an unknown correlation reads as; never changed


@dataclass
class CoordinatorState:
    """Everything decisions depend on, derived only from the decision log.

    Per correlation (:class:`Correlation`, in ``correlations``, which a
    :class:`agents._correlation_store.CorrelationStore` may bound by keeping
    only the recently used ones in memory), plus what the partition as a whole
    needs, which is bounded by its senders and by what waits for an operator:

    Attributes:
        correlations: correlation id -> its state, least recently used first.
        buckets: sender -> its rate bucket.
        holds: envelope id -> decision of each envelope still held for an operator.
        suspensions: envelope id -> the decision about each suspension (agents._suspension).
        last_seq: stream sequence of the last decision applied.
        changed: ids of the correlations changed since they were stored, the longest changed first; it may
            also name some stored or dropped since (:meth:`agents._correlation_store.CorrelationStore.store_changed`
            skips those), and it is only a hint: a flush looks at every correlation.
    """

    correlations: dict[str, Correlation] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    holds: dict[str, Decision] = field(default_factory=dict)
    suspensions: dict[str, Decision] = field(default_factory=dict)
    last_seq: int = 0
    changed: dict[str, None] = field(default_factory=dict, compare=False, repr=False)

    def correlation(self, correlation_id: str) -> Correlation:
        """The state of ``correlation_id`` (an empty one, not kept, if nothing was decided in it)."""
        return self.correlations.get(correlation_id, _NONE)

    def live(self, correlation_id: str, policy: Policy, at_ns: int) -> Correlation:
        """The state of ``correlation_id`` as a decision at ``at_ns`` sees it: empty if it has expired.

        A correlation expires ``limits.correlation_idle_s`` after its latest
        decision, so stored correlations need not be kept for ever (the state
        bucket's keys expire after longer still). It starts again with its whole
        budget and no taint: what a new correlation id would get, which any
        sender may choose at any time. Envelopes it decided can no longer be
        replayed (the replay window is far shorter) nor named as causes.
        """
        correlation = self.correlation(correlation_id)
        return _NONE if expired(correlation, policy, at_ns) else correlation

    def decision(self, correlation_id: str, envelope_id: str) -> Decision | None:
        """The last decision about ``envelope_id`` in ``correlation_id``, if any."""
        return self.correlation(correlation_id).decided.get(envelope_id)

    def decided_about(self, envelope: Envelope) -> bool:
        """Whether ``envelope`` was decided already (in its own correlation)."""
        return envelope.id in self.correlation(envelope.correlation_id).decided

    def find(self, envelope_id: str) -> Decision | None:
        """The last decision about ``envelope_id`` in any correlation in memory (a scan: for operators' tools)."""
        held = self.holds.get(envelope_id)
        if held is not None:
            return held
        return next((c.decided[envelope_id] for c in self.correlations.values() if envelope_id in c.decided), None)

    @property
    def decided(self) -> dict[str, Decision]:
        """Every decision in memory by envelope id, correlation after correlation (a copy: for tests and benches)."""
        return {k: d for c in self.correlations.values() for k, d in c.decided.items()}

    def effective_taint(self, envelope: Envelope, correlation: Correlation | None = None) -> tuple[str, ...]:
        """The declared taint and that of everything delivered to the sender in its correlation
        (``correlation``, else the one in memory), sorted."""  # noqa: D205, D209
        if correlation is None:
            correlation = self.correlation(envelope.correlation_id)
        inherited = correlation.seen_taint.get(envelope.sender, frozenset())
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

    def apply(
        self,
        decision: Decision,
        policy: Policy,
        *,
        seq: int,
        undo: Undo | None = None,
        record_id: str | None = None,
    ) -> None:
        """Fold one recorded decision (at stream sequence ``seq``) into the state.

        ``record_id``: the id of the decision record. With ``undo``, every value
        it replaces is noted there first, so :meth:`rollback` can take
        provisional decisions back out.

        A correlation loaded from a stored copy that covers ``seq`` already
        holds the decision (a peer, or this process before a restart, stored it
        later): only what the partition keeps is folded in then, and whether it
        was the envelope's first decision is read from the decision itself (only
        an operator's answer decides an envelope a second time).
        """
        correlation = self.correlations.get(decision.correlation_id)
        if correlation is not None and 0 < seq <= correlation.covered and undo is None:
            self._apply_partition(decision, policy, first=decision.approval_id is None, undo=None)
            self.last_seq = max(self.last_seq, seq)
            return
        if correlation is None or (decision.approval_id is None and expired(correlation, policy, decision.decided_ns)):
            # Decided as a new one (an approval answers a hold the correlation still holds).
            correlation = self._restarted(correlation)
            self._set(self.correlations, decision.correlation_id, correlation, undo)
        self._set(correlation, "last_ns", max(correlation.last_ns, decision.decided_ns), undo)
        first = decision.envelope_id not in correlation.decided
        self._set(correlation.decided, decision.envelope_id, decision, undo)
        if record_id is not None:
            self._set(correlation.record_ids, decision.envelope_id, record_id, undo)
            correlation.records.add(record_id)
        self._set(correlation, "dirty", True, undo)
        self.changed.setdefault(decision.correlation_id)  # no undo: a correlation named but clean is skipped
        self._set(self, "last_seq", max(self.last_seq, seq), undo)
        self._apply_partition(decision, policy, first=first, undo=undo)
        if EFFECT_RECORDED in decision.reasons:  # a tool result the sender has now seen
            self._taint(correlation, decision.sender, decision.effective_taint, undo)
            return
        if EFFECT_REQUESTED in decision.reasons or decision.verdict != "accept":
            return
        self._set(correlation, "spent", correlation.spent + 1, undo)
        self._set(correlation.hops, decision.envelope_id, decision.hop, undo)
        for recipient in decision.deliver_to:
            self._taint(correlation, recipient, decision.effective_taint, undo)

    def _restarted(self, old: Correlation | None) -> Correlation:
        """A correlation started again (``old``: its expired state): empty but for the holds still waiting,
        which an operator's answer must find however long it took."""  # noqa: D205, D209
        if old is None:
            return Correlation(dirty=True)
        waiting = [envelope_id for envelope_id in old.decided if envelope_id in self.holds]
        return Correlation(
            decided={envelope_id: old.decided[envelope_id] for envelope_id in waiting},
            record_ids={e: old.record_ids[e] for e in waiting if e in old.record_ids},
            records={old.record_ids[e] for e in waiting if e in old.record_ids},
            revision=old.revision,
            dirty=True,
        )

    def _apply_partition(self, decision: Decision, policy: Policy, *, first: bool, undo: Undo | None) -> None:
        """Fold in what the partition keeps about ``decision``: its sender's rate bucket, holds, suspensions."""
        if decision.verdict == "hold":
            self._set(self.holds, decision.envelope_id, decision, undo)
        elif decision.envelope_id in self.holds:
            self._set(self.holds, decision.envelope_id, _ABSENT, undo)
        if decision.kind == SUSPENSION_KIND:
            self._set(self.suspensions, decision.envelope_id, decision, undo)
        if EFFECT_RECORDED in decision.reasons or EFFECT_REQUESTED in decision.reasons:
            return  # nothing delivered, nothing spent
        if first and "rate_limit" not in decision.reasons:
            tokens = self.tokens(policy, decision.sender, decision.decided_ns)
            if tokens is not None:
                self._set(self.buckets, decision.sender, TokenBucket(tokens - 1, decision.decided_ns), undo)

    def _taint(self, correlation: Correlation, agent: str, taint: tuple[str, ...], undo: Undo | None) -> None:
        seen = correlation.seen_taint.get(agent, frozenset())
        self._set(correlation.seen_taint, agent, seen | frozenset(taint), undo)

    def recorded(self, decision: Decision, record_id: str) -> None:
        """Note the id of the record of ``decision`` (applied provisionally, then stored)."""
        correlation = self.correlations[decision.correlation_id]
        correlation.record_ids[decision.envelope_id] = record_id
        correlation.records.add(record_id)

    @staticmethod
    def _set(target: Any, key: Any, value: Any, undo: Undo | None) -> None:
        """Set ``target[key]`` (a dict) or ``target.key`` (an object) to ``value`` (``_ABSENT``: remove it)."""
        table = isinstance(target, dict)
        if undo is not None:
            undo.append((target, key, target.get(key, _ABSENT) if table else getattr(target, key)))
        if not table:
            setattr(target, key, value)
        elif value is _ABSENT:
            target.pop(key, None)
        else:
            target[key] = value

    @staticmethod
    def rollback(undo: Undo) -> None:
        """Restore every value ``undo`` noted, newest first."""
        for target, key, old in reversed(undo):
            CoordinatorState._set(target, key, old, None)
        undo.clear()

    def held(self) -> list[Decision]:
        """Decisions still waiting for an operator, oldest first."""
        return sorted(self.holds.values(), key=lambda d: d.decided_ns)


def expired(correlation: Correlation, policy: Policy, at_ns: int) -> bool:
    """Whether ``correlation`` had no decision for ``limits.correlation_idle_s`` before ``at_ns``."""
    idle_ns = int(policy.limits.correlation_idle_s * 1e9)
    return 0 < correlation.last_ns and at_ns - correlation.last_ns > idle_ns


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
    """
    correlation = state.live(envelope.correlation_id, policy, received_ns)
    hop = max(envelope.hop, correlation.hops.get(envelope.causation_id or "", -1) + 1)
    effective = state.effective_taint(envelope, correlation)
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
    if correlation.spent >= policy.limits.budget_per_correlation:
        return refuse_all("budget")
    tokens = state.tokens(policy, envelope.sender, received_ns)
    if tokens is not None and tokens < 1:
        rate = policy.rate_for(envelope.sender)
        assert rate is not None
        if rate.over_limit == "delay":
            return Deferral(retry_after_s=(1 - tokens) / rate.per_second)
        return refuse_all("rate_limit")
    problem = cause_problem(envelope, correlation.decided)
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
        elif envelope.kind == "reply" and not reply_may_reach(envelope, recipient, correlation.decided):
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
