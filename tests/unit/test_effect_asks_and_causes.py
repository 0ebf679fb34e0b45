"""Replies and causes, and high-risk tool calls asked about under taint: the pure decisions, without a server."""

from __future__ import annotations

import json

import msgspec
import pytest

from trustbus.agents._decision import CoordinatorState, Decision, decide, decide_approval, record_effect
from trustbus.agents._effect_asks import UntrustedAnswer, check_answer, decide_ask, is_ask
from trustbus.agents._policy import Policy, parse_policy
from trustbus.bus import (
    EffectRecord,
    Envelope,
    Identity,
    KeyGrant,
    Keyring,
    Opened,
    new_envelope,
    open_envelope,
    seal,
    sign_grant,
)
from trustbus.bus._records import encode_decision

T0 = 1_800_000_000_000_000_000

# The demo's shape: anyone may reply to anyone as far as the rules go.
POLICY = parse_policy(
    {
        "taint": {"high_risk_tools": ["issue_refund"], "on_tainted_high_risk": "hold"},
        "rules": [
            {"from": "desk", "to": ["triage"], "kinds": ["event"]},
            {"from": "triage", "to": ["billing"], "kinds": ["instruction"], "verbs": ["issue_refund"]},
            {"from": "*", "to": ["*"], "kinds": ["reply", "event"]},
        ],
    }
)
REFUND = {"customer": "mallory", "order": 777, "amount": 500}


def env(sender: str, to: tuple[str, ...], kind: str = "event", **kw: object) -> Envelope:
    return new_envelope(tenant="acme", kind=kind, sender=sender, to=to, now_ns=T0, **kw)  # type: ignore[arg-type]


def run(state: CoordinatorState, envelope: Envelope, policy: Policy = POLICY) -> Decision:
    result = decide(policy, envelope, state, received_ns=T0, source_seq=state.last_seq + 1)
    assert isinstance(result, Decision)
    state.apply(result, policy, seq=state.last_seq + 1)
    return result


def reply_from(sender: str, to: str, cause: Decision | None, **kw: object) -> Envelope:
    fields: dict[str, object] = {"payload": json.dumps(REFUND).encode(), **kw}
    if cause is not None:
        fields.update(correlation_id=cause.correlation_id, causation_id=cause.envelope_id)
    return env(sender, (to,), kind="reply", **fields)


def test_refund_sent_as_a_reply_to_nothing_is_an_unsolicited_reply() -> None:
    state = CoordinatorState()
    for taint in ((), ("web",)):
        d = run(state, reply_from("desk", "billing", None, taint=taint))
        assert d.verdict == "reject" and d.reasons == ("unsolicited_reply",) and d.deliver_to == ()


def test_reply_naming_an_invented_cause_is_unknown_cause() -> None:
    d = run(CoordinatorState(), env("desk", ("billing",), kind="reply", causation_id="no-such-envelope"))
    assert d.verdict == "reject" and d.reasons == ("unknown_cause",)


def test_cause_from_another_correlation_is_unknown_cause() -> None:
    state = CoordinatorState()
    ticket = run(state, env("desk", ("triage",)))
    elsewhere = env("triage", ("billing",), kind="instruction", causation_id=ticket.envelope_id,
                    payload=b'{"verb":"issue_refund"}')  # fmt: skip
    assert elsewhere.correlation_id != ticket.correlation_id
    assert run(state, elsewhere).reasons == ("unknown_cause",)


def test_reply_to_an_envelope_the_replier_was_never_given_is_unsolicited() -> None:
    state = CoordinatorState()
    ticket = run(state, env("desk", ("triage",)))  # delivered to triage, not to the researcher
    d = run(state, reply_from("researcher", "desk", ticket, taint=["web"]))
    assert d.verdict == "reject" and d.reasons == ("unsolicited_reply",)
    # Nor may billing answer triage's instruction on someone else's behalf, or answer a held one.
    held = run(state, env("triage", ("billing",), kind="instruction", taint=["web"],
                          payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    assert held.verdict == "hold"
    assert run(state, reply_from("billing", "triage", held)).reasons == ("unsolicited_reply",)


def test_reply_to_a_delivered_envelope_reaches_its_sender_and_no_one_else() -> None:
    state = CoordinatorState()
    ticket = run(state, env("desk", ("triage",)))
    answer = env("triage", ("desk", "billing"), kind="reply", correlation_id=ticket.correlation_id,
                 causation_id=ticket.envelope_id)  # fmt: skip
    d = run(state, answer)
    assert d.verdict == "accept" and d.deliver_to == ("desk",)
    assert [(x.recipient, x.reason) for x in d.dropped] == [("billing", "unsolicited_reply")]
    # and the conversation goes on: an event caused by a decided envelope passes
    follow_up = env("desk", ("triage",), correlation_id=ticket.correlation_id, causation_id=d.envelope_id)
    assert run(state, follow_up).verdict == "accept"


def test_a_reply_to_a_released_hold_reaches_its_sender() -> None:
    state = CoordinatorState()
    held = run(state, env("triage", ("billing",), kind="instruction", taint=["web"],
                          payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    released = decide_approval(held, env("ops", (), kind="approval"), approve=True, received_ns=T0)
    state.apply(released, POLICY, seq=state.last_seq + 1)
    assert run(state, reply_from("billing", "triage", released)).deliver_to == ("triage",)


# -- asks: a high-risk tool call made under taint --------------------------------------------------


def requested(tool: str = "issue_refund", *, high_risk: bool = True, effect_class: str = "reversible") -> EffectRecord:
    return EffectRecord(phase="requested", tool=tool, idempotency_key="k1", args=b"{}",
                        effect_class=effect_class, compensating_tool="charge_back", high_risk=high_risk)  # fmt: skip


def ask_from(agent: str, cause: Decision, taint: tuple[str, ...] = ()) -> Envelope:
    return env(agent, (), kind="effect", correlation_id=cause.correlation_id, causation_id=cause.envelope_id,
               taint=taint, idempotency_key="k1")  # fmt: skip


def ask(state: CoordinatorState, envelope: Envelope, policy: Policy = POLICY) -> Decision:
    d = decide_ask(policy, envelope, requested(), state, received_ns=T0, source_seq=state.last_seq + 1)
    state.apply(d, policy, seq=state.last_seq + 1)
    return d


def tainted_delivery_to_billing(state: CoordinatorState) -> Decision:
    """A reply-shaped refund request, declared `web`, that reached billing (under a policy letting it)."""
    ticket = run(state, env("desk", ("triage",)))
    handed = run(state, env("triage", ("billing",), correlation_id=ticket.correlation_id,
                            causation_id=ticket.envelope_id, taint=["web"]))  # fmt: skip
    assert handed.verdict == "accept"
    return handed


def test_only_a_tainted_requested_record_of_a_tool_that_changes_something_is_an_ask() -> None:
    cause = run(CoordinatorState(), env("desk", ("triage",)))
    tainted, clean = ask_from("billing", cause, ("web",)), ask_from("billing", cause)
    assert is_ask(tainted, requested())
    assert not is_ask(clean, requested())  # untainted: no round trip
    assert is_ask(tainted, requested("notify", high_risk=False))  # changes something: the policy may list it
    assert not is_ask(tainted, requested("lookup", high_risk=False, effect_class="read"))  # read-only: no round trip
    assert not is_ask(tainted, msgspec.structs.replace(requested(), phase="completed"))


def test_a_tool_the_policy_lists_as_high_risk_is_held_though_the_agents_registry_does_not_flag_it() -> None:
    listed = POLICY.with_high_risk_tools(["notify"])
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    envelope = ask_from("billing", handed, ("web",))
    unflagged = requested("notify", high_risk=False)
    held = decide_ask(listed, envelope, unflagged, state, received_ns=T0, source_seq=state.last_seq + 1)
    assert held.verdict == "hold" and held.reasons == ("effect_requested", "tainted_high_risk")
    # The twin: a tool high risk by neither the registry nor the policy is accepted at once.
    passed = decide_ask(POLICY, envelope, unflagged, state, received_ns=T0, source_seq=state.last_seq + 1)
    assert passed.verdict == "accept" and passed.reasons == ("effect_requested", "not_high_risk")


def test_tainted_high_risk_call_is_held_whatever_kind_caused_it_then_approved_or_denied() -> None:
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    spent = state.correlation(handed.correlation_id).spent
    held = ask(state, ask_from("billing", handed, ("web",)))
    assert held.verdict == "hold" and held.reasons == ("effect_requested", "tainted_high_risk")
    assert held.kind == "effect" and held.deliver_to == () and state.held() == [held]
    assert state.correlation(handed.correlation_id).spent == spent  # an ask is no message: no budget spent
    approval = env("ops", (), kind="approval")
    released = decide_approval(held, approval, approve=True, received_ns=T0 + 1)
    denied = decide_approval(held, approval, approve=False, received_ns=T0 + 1)
    assert released.verdict == "accept" and released.reasons[-1] == "approved" and released.deliver_to == ()
    assert denied.verdict == "reject" and denied.reasons[-1] == "denied"
    state.apply(released, POLICY, seq=state.last_seq + 1)
    assert state.held() == [] and state.correlation(handed.correlation_id).spent == spent


def test_ask_is_judged_on_the_taint_the_coordinator_delivered_not_only_what_it_declares() -> None:
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    effect = env("billing", (), kind="effect", correlation_id=handed.correlation_id, causation_id=handed.envelope_id)
    state.apply(record_effect(effect, ("email",), received_ns=T0, source_seq=90), POLICY, seq=90)
    held = ask(state, ask_from("billing", handed, ("llm",)))
    assert held.declared_taint == ("llm",) and held.effective_taint == ("email", "llm", "web")


def test_ask_under_a_policy_that_rejects_tainted_high_risk_calls_is_refused_at_once() -> None:
    strict = parse_policy({**POLICY.model_dump(by_alias=True), "taint": {"on_tainted_high_risk": "reject"}})
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    d = ask(state, ask_from("billing", handed, ("web",)), strict)
    assert d.verdict == "reject" and d.reasons == ("effect_requested", "tainted_high_risk") and state.held() == []


def test_ask_naming_a_cause_never_decided_is_refused_as_unknown_cause() -> None:
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    forged = env("billing", (), kind="effect", correlation_id=handed.correlation_id, causation_id="invented",
                 taint=["web"])  # fmt: skip
    d = ask(state, forged)
    assert d.verdict == "reject" and d.reasons == ("effect_requested", "unknown_cause")


def test_ask_made_acting_on_an_instruction_an_operator_released_is_not_held_again() -> None:
    state = CoordinatorState()
    held = run(state, env("triage", ("billing",), kind="instruction", taint=["web"],
                          payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    released = decide_approval(held, env("ops", (), kind="approval"), approve=True, received_ns=T0)
    state.apply(released, POLICY, seq=state.last_seq + 1)
    d = ask(state, ask_from("billing", released, ("web",)))
    assert d.verdict == "accept" and d.reasons == ("effect_requested", "cause_approved")


def test_held_ask_survives_a_rebuild_of_the_state_from_the_log() -> None:
    live = CoordinatorState()
    handed = tainted_delivery_to_billing(live)
    held = ask(live, ask_from("billing", handed, ("web",)))
    rebuilt = CoordinatorState()
    for seq, decision in enumerate(live.decided.values(), start=1):
        rebuilt.apply(decision, POLICY, seq=seq)
    assert rebuilt.held() == [held]
    assert {c: s.spent for c, s in rebuilt.correlations.items()} == {c: s.spent for c, s in live.correlations.items()}


# -- the answer a runtime accepts -------------------------------------------------------------------


def _signed_answer(
    signer: str, to: str, about: str, *, decision_sender: str = "billing", role: str = "coordinator"
) -> tuple[Opened, str]:
    """A decision about ask ``about`` signed by ``signer`` (of ``role``) for ``to``, opened against a keyring."""
    admin, key = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    grant = KeyGrant(tenant="acme", key_id=key.key_id, owner=signer, valid_from=0, role=role)  # type: ignore[arg-type]
    keyring.add(key.key_id, sign_grant(grant, admin))
    state = CoordinatorState()
    handed = tainted_delivery_to_billing(state)
    decision = msgspec.structs.replace(ask(state, ask_from(decision_sender, handed, ("web",))), envelope_id=about)
    answer = new_envelope(tenant="acme", kind="decision", sender=signer, to=(to,), causation_id=about,
                          content_type="application/msgpack", payload=encode_decision(decision))  # fmt: skip
    sealed = seal(answer, key)
    return open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=answer.ts), decision.verdict


def test_the_coordinators_answer_to_this_ask_is_accepted() -> None:
    opened, verdict = _signed_answer("coordinator", "billing", "ask-1")
    assert check_answer(opened, agent="billing", ask_id="ask-1").verdict == verdict == "hold"


@pytest.mark.parametrize(
    ("forgery", "fields"),
    [
        ("signed by an agent key", {"signer": "billing", "role": "agent"}),
        ("addressed to another agent", {"to": "notes"}),
        ("about another request", {"about": "ask-2"}),
        ("about another agent's request", {"decision_sender": "notes"}),
    ],
)
def test_an_answer_that_is_not_the_coordinators_answer_to_this_ask_is_not_trusted(
    forgery: str, fields: dict[str, str]
) -> None:
    args = {"signer": "coordinator", "to": "billing", "about": "ask-1", **fields}
    signer, to, about = args.pop("signer"), args.pop("to"), args.pop("about")
    opened, _ = _signed_answer(signer, to, about, **args)
    with pytest.raises(UntrustedAnswer):
        check_answer(opened, agent="billing", ask_id="ask-1")


async def test_reexecuting_a_handler_whose_call_was_denied_refuses_it_again() -> None:
    from tests.e2e.fleet_agents import NaiveBilling
    from trustbus.agents._effect_asks import denial_message
    from trustbus.agents._effects import idempotency_key
    from trustbus.agents._reexecute import reexecute

    args = {"order": 7, "amount": 5}
    request = env("desk", ("billing",), payload=json.dumps(args).encode(), taint=["web"])
    key = idempotency_key(request.id, "issue_refund", args, 0)
    error = "EffectDenied: " + denial_message(reason="denied", approver="ops", tool="issue_refund", key=key)
    failed = msgspec.structs.replace(requested(), phase="failed", idempotency_key=key, error=error)
    told = {"refused": "denied", "approver": "ops", "attempt": 1}
    answered = new_envelope(tenant="acme", kind="reply", sender="billing", to=("desk",), taint=["web"],
                            payload=json.dumps(told).encode())  # fmt: skip
    [replayed] = await reexecute(NaiveBilling(), "billing", [(request, ("web",))],
                                 recorded_sends={request.id: [answered]}, effects={key: failed})  # fmt: skip
    assert replayed.divergences == []  # refused again, handled the same way, no tool run
