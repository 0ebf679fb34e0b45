"""High-risk tool calls made under taint are decided by the coordinator before they run. Pure: no I/O.

The protocol (docs/EFFECTS.md, "Held effects"):

1. The runtime records every call's ``requested`` record on its effect subject,
   ``tb.<T>.effect.<agent>.<p>.<key>``, with the registry's ``high_risk`` flag.
   A ``requested`` record of a tool that changes something (not ``read``) whose
   envelope carries taint (the taint the coordinator attested for the delivery
   being handled, plus what the handler's tool results and memory reads added)
   is an **ask**: the runtime does not call the tool until the coordinator
   answers. The coordinator holds it if the tool is high risk by the agent's
   registry or by the policy's list, and accepts it at once otherwise. Nothing
   else waits, so an untainted call or a read-only tool costs no round trip.
2. The coordinator of the partition decides the ask (:func:`decide_ask`) against
   its own state: the taint it delivered to that agent in that correlation and
   the result taint of its recorded tool calls, not only what the ask declares.
   The decision (``hold``, ``reject`` or ``accept``) is appended to the
   partition's log like any other, so a hold survives restarts and is listed by
   ``trustbus approvals list``; an operator's approval or denial is a second
   decision, as for a held envelope.
3. After each decision about an ask the coordinator stores its signed answer
   under the agent's own memory namespace, ``<agent>.effect.<ask id>`` (a key no
   memory write can name: memory keys have no dot), which the agent may read and
   nobody but the coordinator may write. The runtime reads it there
   (:func:`check_answer`), waits while it says ``hold``, runs the tool on
   ``accept`` and fails the call with :class:`agents.EffectDenied` otherwise.
"""

from __future__ import annotations

from trustbus.agents._answers import UntrustedAnswer, answer_of
from trustbus.agents._causes import UNKNOWN_CAUSE
from trustbus.agents._decision import EFFECT_REQUESTED, CoordinatorState
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, EffectRecord, Envelope, Opened, Verdict

ANSWER_TOKEN = "effect"
CAUSE_APPROVED = "cause_approved"
NOT_HIGH_RISK = "not_high_risk"
TAINTED_HIGH_RISK = "tainted_high_risk"


def asks_first(*, high_risk: bool, effect_class: str, taint: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether a call asks the coordinator before it runs: under taint, and not a read-only tool.

    Every tool that changes something asks, not only those the agent's registry
    flags ``high_risk``: the policy's ``high_risk_tools`` list, which only the
    coordinator knows, must hold a call whatever the agent's registry says.
    """
    return bool(taint) and (high_risk or effect_class != "read")


def is_ask(envelope: Envelope, record: EffectRecord) -> bool:
    """Whether an effect record asks the coordinator first (:func:`asks_first`): a ``requested`` one."""
    return record.phase == "requested" and asks_first(
        high_risk=record.high_risk, effect_class=record.effect_class, taint=envelope.taint
    )


def decide_ask(
    policy: Policy,
    envelope: Envelope,
    record: EffectRecord,
    state: CoordinatorState,
    *,
    received_ns: int,
    source_seq: int,
) -> Decision:
    """Decide an ask (see :func:`is_ask`). Pure: reads ``state``, never changes it.

    - its cause names no envelope decided in this correlation: ``reject``, ``unknown_cause``;
    - the tool is high risk neither by the agent's registry nor by the policy's
      ``high_risk_tools``: ``accept``, ``not_high_risk``;
    - its cause was released by an operator's approval: ``accept``, ``cause_approved`` (the
      person already decided on what the agent is acting on);
    - otherwise ``taint.on_tainted_high_risk``: ``hold`` (the default) or ``reject``,
      ``tainted_high_risk``.

    Every such decision carries ``effect_requested`` first among its reasons.
    """
    effective = state.effective_taint(envelope)
    cause = state.decision(envelope.correlation_id, envelope.causation_id or "")
    verdict: Verdict
    if cause is None:
        verdict, reason = "reject", UNKNOWN_CAUSE
    elif not record.high_risk and record.tool not in policy.taint.high_risk_tools:
        verdict, reason = "accept", NOT_HIGH_RISK
    elif cause.verdict == "accept" and cause.approval_id is not None:
        verdict, reason = "accept", CAUSE_APPROVED
    else:
        verdict, reason = ("reject" if policy.taint.on_tainted_high_risk == "reject" else "hold"), TAINTED_HIGH_RISK
    return Decision(
        envelope_id=envelope.id,
        source_seq=source_seq,
        sender=envelope.sender,
        kind=envelope.kind,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
        verdict=verdict,
        reasons=(EFFECT_REQUESTED, reason),
        deliver_to=(),
        dropped=(),
        hop=envelope.hop,
        declared_taint=envelope.taint,
        effective_taint=effective,
        decided_ns=received_ns,
    )


def is_ask_decision(decision: Decision) -> bool:
    """Whether ``decision`` is about an ask (the first one, or an operator's answer to its hold)."""
    return EFFECT_REQUESTED in decision.reasons


def answer_key(agent: str, ask_id: str) -> str:
    """The memory key (``<agent>.effect.<ask id>``) under which the answer to an ask is stored."""
    return f"{agent}.{ANSWER_TOKEN}.{ask_id}"


def check_answer(opened: Opened, *, agent: str, ask_id: str) -> Decision:
    """The decision a verified answer states, if it is the coordinator's answer to ``agent``'s ask ``ask_id``.

    Raises:
        UntrustedAnswer: not signed by a coordinator key, not addressed to ``agent``,
            or about another envelope than that ask.
    """
    decision = answer_of(opened, agent=agent, about=ask_id)
    if not is_ask_decision(decision):
        raise UntrustedAnswer(f"a decision about {decision.sender}'s {decision.kind} {decision.envelope_id}")
    return decision


_DENIED = "EffectDenied: "


def denial_message(*, reason: str, approver: str | None, tool: str, key: str) -> str:
    """What a refused call's ``failed`` record says after ``EffectDenied: ``; :func:`parse_denial` reads it back."""
    by = f" by {approver}" if approver else ""
    return f"{reason}{by}: {tool} call {key} refused; the tool was not called"


def parse_denial(error: str | None) -> tuple[str, str | None] | None:
    """(reason, approver) of a ``failed`` record's error if the coordinator refused the call, else None."""
    if error is None or not error.startswith(_DENIED):
        return None
    reason, _, approver = error[len(_DENIED) :].split(":", 1)[0].partition(" by ")
    return reason, approver or None
