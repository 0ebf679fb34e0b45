"""The spans of agents and the coordinator, named after the OpenTelemetry GenAI semantic conventions.

- ``invoke_agent {agent}`` around a handler (:mod:`agents._runtime`);
- ``execute_tool {tool}`` around a recorded effect (:mod:`agents._effector`);
- ``apply_guardrail coordinator`` for each decision the coordinator records
  (:mod:`agents._coordinator`): the verdict (``gen_ai.security.decision.type``)
  apart from the action taken (``trustbus.action``), the policy rule that
  decided (``gen_ai.security.policy.id``) and the reason code
  (``gen_ai.security.decision.code``, the same low-cardinality value as the
  ``reason`` label of ``trustbus_decisions_total``);
- ``approval {verdict}`` around an operator's approval (:mod:`agents._approvals`);
- ``store_memory coordinator`` and ``store_checkpoint coordinator`` around the coordinator's storing of an
  accepted memory write or agent checkpoint (:mod:`agents._memory_writes`).

Each is the child of the span that sent the envelope it is about
(:func:`bus.traced`). docs/OBSERVABILITY.md, "Traces", lists every attribute.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from trustbus.agents._decision import EFFECT_RECORDED, EFFECT_REQUESTED
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, Envelope, record_span, traced, tracing_enabled

if TYPE_CHECKING:
    from opentelemetry.trace import Span

GUARDIAN = "coordinator"

# Reason codes decided by a limit or a taint rule, not by a rule of the policy's `rules`.
_POLICY_PARTS = {
    "hop_limit": "limits.hop_limit",
    "budget": "limits.budget_per_correlation",
    "rate_limit": "limits.rate",
    "fanout": "limits.fanout_per_envelope",
    "tainted_high_risk": "taint.on_tainted_high_risk",
    "tainted_instruction": "taint.on_tainted_instruction",
    "tainted_memory_write": "taint.on_tainted_memory_write",
    "rejection_threshold": "limits.suspension",
}
_TARGETS = {"memory_write": "memory_store", "effect": "tool_call", "checkpoint": "memory_store"}
_STORING = {"memory_write": "store_memory", "checkpoint": "store_checkpoint"}
_OFF: AbstractContextManager[None] = nullcontext()  # tracing off: not even the attributes are made


def invoke_agent(agent_id: str, envelope: Envelope, *, attempt: int) -> AbstractContextManager[Span | None]:
    """The span around one handling of ``envelope`` by ``agent_id``."""
    if not tracing_enabled():
        return _OFF
    return traced(
        f"invoke_agent {agent_id}",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.id": agent_id,
            "gen_ai.conversation.id": envelope.correlation_id,
            "trustbus.envelope.id": envelope.id,
            "trustbus.envelope.kind": envelope.kind,
            "trustbus.attempt": attempt,
        },
        parent=envelope,
    )


def execute_tool(
    agent_id: str, cause: Envelope, *, tool: str, key: str, effect_class: str
) -> AbstractContextManager[Span | None]:
    """The span around one recorded tool call (``key``: its idempotency key) made while handling ``cause``."""
    if not tracing_enabled():
        return _OFF
    return traced(
        f"execute_tool {tool}",
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": key,
            "gen_ai.tool.type": "function",
            "gen_ai.agent.id": agent_id,
            "gen_ai.conversation.id": cause.correlation_id,
            "trustbus.effect.class": effect_class,
        },
    )


def approval(
    operator: str, held: Decision, verdict: str, *, envelope: Envelope | None
) -> AbstractContextManager[Span | None]:
    """The span of an operator's approval (or denial) of ``held``: a child of the span that sent the held
    envelope (``envelope``, if it could be read), so the release joins the incident's trace."""  # noqa: D205, D209
    if not tracing_enabled():
        return _OFF
    return traced(
        f"approval {verdict}",
        {
            "gen_ai.conversation.id": held.correlation_id,
            "gen_ai.security.target.id": held.envelope_id,
            "trustbus.operator": operator,
            "trustbus.approval.verdict": verdict,
        },
        parent=envelope,
    )


def storing(kind: str, envelope: Envelope) -> AbstractContextManager[Span | None]:
    """The span around storing the accepted ``memory_write`` or ``checkpoint`` ``envelope`` in the memory bucket:
    like its decision's, a child of the span that sent it."""  # noqa: D205, D209
    if not tracing_enabled():
        return _OFF
    return traced(
        f"{_STORING[kind]} {GUARDIAN}",
        {"gen_ai.conversation.id": envelope.correlation_id, "trustbus.envelope.id": envelope.id},
        parent=envelope,
    )


def guardrail(policy: Policy, cause: Envelope, decision: Decision, *, start_ns: int) -> None:
    """Record the span of ``decision`` about ``cause`` (decided from ``start_ns`` until now)."""
    if not tracing_enabled():
        return
    record_span(
        f"apply_guardrail {GUARDIAN}",
        lambda: _guardrail_attributes(policy, decision),
        parent=cause,
        start_ns=start_ns,
    )


def _guardrail_attributes(policy: Policy, decision: Decision) -> dict[str, str | bool | int | float | list[str]]:
    # Few attributes: each costs the SDK a few µs per span (the guardian is in the span's name, the
    # coordinator in the process's service name, the sender in the parent span).
    attributes: dict[str, str | bool | int | float | list[str]] = {
        "gen_ai.operation.name": "apply_guardrail",
        "gen_ai.conversation.id": decision.correlation_id,
        "gen_ai.security.target.type": _TARGETS.get(decision.kind, "message"),
        "gen_ai.security.target.id": decision.envelope_id,
        "gen_ai.security.decision.type": decision_type(decision),
        "gen_ai.security.decision.code": decision.reasons[-1] if decision.reasons else "none",
        "trustbus.verdict": decision.verdict,
        "trustbus.action": action(decision),
    }
    rule = deciding_rule(policy, decision)
    if rule is not None:
        attributes["gen_ai.security.policy.id"] = rule
    return attributes


def decision_type(decision: Decision) -> str:
    """The conventions' decision type: ``allow``, ``modify`` (accepted, some recipients dropped) or ``deny``
    (refused, or held: nothing passes until an operator approves)."""  # noqa: D205, D209
    if decision.verdict != "accept":
        return "deny"
    return "modify" if decision.dropped else "allow"


def action(decision: Decision) -> str:
    """What the coordinator does about ``decision``: forward, store, answer (a tool call asked about), record,
    hold or refuse."""  # noqa: D205, D209
    if decision.verdict == "hold":
        return "hold"
    if decision.verdict == "reject":
        return "refuse"
    if decision.kind in ("memory_write", "checkpoint"):
        return "store"
    if EFFECT_REQUESTED in decision.reasons:
        return "answer"
    if EFFECT_RECORDED in decision.reasons or not decision.deliver_to:
        return "record"
    return "forward"


def deciding_rule(policy: Policy, decision: Decision) -> str | None:
    """The part of the policy that decided: a limit or taint rule by its path, else the first rule (``rules[i]``)
    that let the envelope reach its first recipient; None when no rule of the policy was involved."""  # noqa: D205, D209
    for reason in reversed(decision.reasons):
        if reason in _POLICY_PARTS:
            return _POLICY_PARTS[reason]
    if not decision.deliver_to:
        return None
    for index, rule in enumerate(policy.rules):
        if rule.matches(decision.sender, decision.deliver_to[0], decision.kind):
            return f"rules[{index}]"
    return None
