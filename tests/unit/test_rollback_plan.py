"""The compensation plan: reverse order, irreversible effects for a person, nothing compensated twice."""

from __future__ import annotations

import json

from trustbus.bus import EffectRecord, new_envelope
from trustbus.ledger import Incident
from trustbus.ledger._rollback import compensated_keys, plan_rollback


def effect(seq: int, tool: str, effect_class: str, key: str, *, compensating: str | None = None, args: object = None):  # type: ignore[no-untyped-def]
    record = EffectRecord(
        phase="completed",
        tool=tool,
        idempotency_key=key,
        args=json.dumps(args if args is not None else {"n": seq}).encode(),
        result=json.dumps({"ok": True}).encode(),
        effect_class=effect_class,  # type: ignore[arg-type]
        compensating_tool=compensating,
    )
    envelope = new_envelope(tenant="acme", kind="effect", sender="billing", to=(), correlation_id="c1")
    return (seq, seq * 10, envelope, record)


INCIDENT = Incident(
    correlation_id="c1",
    steps=[],
    roots=[],
    effects=[
        effect(3, "fetch_page", "read", "k-read"),
        effect(5, "issue_refund", "reversible", "k-a", compensating="charge_back"),
        effect(7, "issue_refund", "reversible", "k-b", compensating="charge_back"),
        effect(9, "send_email", "irreversible", "k-mail"),
        effect(11, "issue_refund", "reversible", "k-c", compensating="charge_back"),
    ],
)


def test_three_reversible_effects_are_compensated_latest_first_and_the_email_is_listed() -> None:
    plan = plan_rollback(INCIDENT, compensated=set())
    assert [c.idempotency_key for c in plan.compensate] == ["k-c", "k-b", "k-a"]
    assert [c.compensating_tool for c in plan.compensate] == ["charge_back"] * 3
    assert [c.tool for c in plan.for_a_person] == ["send_email"]
    assert plan.compensate[0].arguments()["compensates"] == "k-c"


def test_a_second_rollback_compensates_nothing() -> None:
    done = [effect(20 + i, "charge_back", "reversible", f"undo-{key}", compensating="issue_refund",
                   args={"compensates": key}) for i, key in enumerate(["k-c", "k-b", "k-a"])]  # fmt: skip
    keys = compensated_keys(record for *_, record in done)
    assert keys == {"k-a", "k-b", "k-c"}
    incident = Incident(correlation_id="c1", steps=[], roots=[], effects=[*INCIDENT.effects, *done])
    plan = plan_rollback(incident, compensated=keys)
    assert plan.compensate == [] and len(plan.already_compensated) == 3
    assert [c.tool for c in plan.for_a_person] == ["send_email"]  # still for a person: it can never be undone


def test_from_sequence_limits_the_plan() -> None:
    plan = plan_rollback(INCIDENT, compensated=set(), from_seq=8)
    assert [c.idempotency_key for c in plan.compensate] == ["k-c"]
    assert [c.tool for c in plan.for_a_person] == ["send_email"]
