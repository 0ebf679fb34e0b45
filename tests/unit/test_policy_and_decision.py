"""Policy loading and the pure decision function, without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustbus.agents._decision import CoordinatorState, Decision, Deferral, decide
from trustbus.agents._errors import PolicyError
from trustbus.agents._policy import Policy, load_policy, parse_policy
from trustbus.bus import Envelope, new_envelope

T0 = 1_800_000_000_000_000_000

POLICY = parse_policy(
    {
        "limits": {"hop_limit": 3, "fanout_per_envelope": 2, "budget_per_correlation": 4},
        "rules": [
            {"from": "triage", "to": ["billing", "research"], "kinds": ["instruction"], "verbs": ["refund"]},
            {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
        ],
    }
)


def env(sender: str = "triage", to: tuple[str, ...] = ("billing",), kind: str = "event", **kw: object) -> Envelope:
    return new_envelope(tenant="acme", kind=kind, sender=sender, to=to, now_ns=T0, **kw)  # type: ignore[arg-type]


def run(policy: Policy, state: CoordinatorState, envelope: Envelope, at: int = T0) -> Decision:
    result = decide(policy, envelope, state, received_ns=at, source_seq=state.last_seq + 1)
    assert isinstance(result, Decision)
    state.apply(result, policy, seq=state.last_seq + 1)
    return result


def test_allowed_event_is_accepted_for_its_recipient() -> None:
    d = run(POLICY, CoordinatorState(), env())
    assert d.verdict == "accept" and d.deliver_to == ("billing",) and d.reasons == ()


def test_unlisted_kind_or_pair_is_refused_by_default() -> None:
    d = run(POLICY, CoordinatorState(), env(sender="billing", kind="instruction", payload=b'{"verb":"refund"}'))
    assert d.verdict == "reject" and d.reasons == ("not_allowed",)


def test_instruction_verb_must_be_allowed_between_that_pair() -> None:
    ok = run(POLICY, CoordinatorState(), env(kind="instruction", payload=b'{"verb":"refund"}'))
    bad = run(POLICY, CoordinatorState(), env(kind="instruction", payload=b'{"verb":"delete_all"}'))
    none = run(POLICY, CoordinatorState(), env(kind="instruction", payload=b'"refund"'))
    assert ok.verdict == "accept"
    assert bad.verdict == "reject" and bad.reasons == ("verb_not_allowed",)
    assert none.verdict == "reject" and none.reasons == ("no_verb",)


def test_fan_out_is_cut_to_the_limit() -> None:
    d = run(POLICY, CoordinatorState(), env(to=tuple(f"r{i}" for i in range(1000))))
    assert d.verdict == "accept" and d.deliver_to == ("r0", "r1")
    assert len(d.dropped) == 998 and {x.reason for x in d.dropped} == {"fanout"}
    assert d.reasons == ("fanout",)


def test_mixed_recipients_deliver_to_the_allowed_ones_only() -> None:
    d = run(
        POLICY, CoordinatorState(), env(kind="instruction", to=("billing", "mallory"), payload=b'{"verb":"refund"}')
    )
    assert d.deliver_to == ("billing",) and [(x.recipient, x.reason) for x in d.dropped] == [("mallory", "not_allowed")]


def test_ping_pong_is_stopped_by_the_hop_limit_even_if_agents_reset_hop() -> None:
    state = CoordinatorState()
    first = run(POLICY, state, env(sender="a", to=("b",)))
    cause, hops = first, []
    for i in range(10):
        # each reply declares hop 0: the coordinator derives it from the cause instead
        reply = env(sender="b" if i % 2 == 0 else "a", to=("a" if i % 2 == 0 else "b",), kind="reply",
                    correlation_id=first.correlation_id, causation_id=cause.envelope_id)  # fmt: skip
        cause = run(POLICY, state, reply)
        hops.append((cause.hop, cause.verdict))
        if cause.verdict == "reject":
            break
    assert hops[-1] == (4, "reject") and cause.reasons == ("hop_limit",)
    assert [h for h, v in hops if v == "accept"] == [1, 2, 3]


def test_correlation_budget_stops_a_conversation_but_not_others() -> None:
    state = CoordinatorState()
    first = run(POLICY, state, env())
    verdicts = [run(POLICY, state, env(correlation_id=first.correlation_id)).verdict for _ in range(5)]
    assert verdicts == ["accept"] * 3 + ["reject"] * 2
    assert state.decided[list(state.decided)[-1]].reasons == ("budget",)
    assert run(POLICY, state, env()).verdict == "accept"  # a new correlation has its own budget


def test_rate_limit_rejects_then_refills_with_time() -> None:
    policy = parse_policy(
        {"limits": {"rate": {"per_second": 2, "burst": 3}}, "rules": POLICY.model_dump(by_alias=True)["rules"]}
    )
    state = CoordinatorState()
    verdicts = [run(policy, state, env(), at=T0).verdict for _ in range(5)]
    assert verdicts == ["accept"] * 3 + ["reject"] * 2
    assert run(policy, state, env(), at=T0 + 500_000_000).verdict == "accept"  # one token after 0.5 s


def test_rate_limit_can_delay_instead_of_rejecting() -> None:
    policy = parse_policy(
        {
            "limits": {"rate": {"per_second": 10, "burst": 1, "over_limit": "delay"}},
            "rules": [{"from": "*", "to": ["*"], "kinds": ["event"]}],
        }
    )
    state = CoordinatorState()
    run(policy, state, env())
    deferred = decide(policy, env(), state, received_ns=T0, source_seq=9)
    assert isinstance(deferred, Deferral) and deferred.retry_after_s == pytest.approx(0.1)


def test_effective_taint_includes_what_was_delivered_to_the_sender() -> None:
    state = CoordinatorState()
    web = run(POLICY, state, env(sender="fetcher", to=("triage",), taint=["web"]))
    laundered = run(POLICY, state, env(sender="triage", to=("billing",), correlation_id=web.correlation_id))
    assert laundered.declared_taint == () and laundered.effective_taint == ("web",)
    other = run(POLICY, state, env(sender="triage", to=("billing",)))
    assert other.effective_taint == ()


def test_checkpoint_to_self_is_accepted_and_delivered_to_nobody() -> None:
    d = run(POLICY, CoordinatorState(), env(sender="billing", to=("billing",), kind="checkpoint"))
    assert d.verdict == "accept" and d.deliver_to == ()
    assert run(POLICY, CoordinatorState(), env(sender="billing", to=("triage",), kind="checkpoint")).verdict == "reject"


def test_state_rebuilt_from_the_decision_log_decides_the_same() -> None:
    live = CoordinatorState()
    envelopes = [env()] + [env(to=("research",)) for _ in range(3)]
    decisions = [run(POLICY, live, e) for e in envelopes]
    rebuilt = CoordinatorState()
    for seq, d in enumerate(decisions, start=1):
        rebuilt.apply(d, POLICY, seq=seq)
    probe = env()
    assert decide(POLICY, probe, rebuilt, received_ns=T0, source_seq=99) == decide(
        POLICY, probe, live, received_ns=T0, source_seq=99
    )


def test_policy_errors_name_the_field_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("limits:\n  hop_limit: -1\nrules:\n  - from: a.b\n    to: [x]\n    kinds: [shout]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(bad)
    text = str(caught.value)
    assert f"{bad}: limits.hop_limit: Input should be greater than or equal to 0" in text
    assert "rules.0.from" in text and "'a.b' is not an agent id" in text
    assert "rules.0.kinds.0" in text


def test_unknown_fields_and_bad_syntax_are_refused(tmp_path: Path) -> None:
    typo = tmp_path / "p.toml"
    typo.write_text("[limits]\nhop_limt = 3\n")
    with pytest.raises(PolicyError, match=r"limits\.hop_limt: Extra inputs are not permitted"):
        load_policy(typo)
    broken = tmp_path / "q.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(PolicyError, match="unknown format"):
        load_policy(tmp_path / "p.json")


def test_toml_and_yaml_give_the_same_policy(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        '[limits]\nhop_limit = 2\n\n[[rules]]\nfrom = "a"\nto = ["b"]\nkinds = ["event"]\n'
    )
    (tmp_path / "p.yaml").write_text("limits: {hop_limit: 2}\nrules:\n  - {from: a, to: [b], kinds: [event]}\n")
    assert load_policy(tmp_path / "p.toml") == load_policy(tmp_path / "p.yaml")
    assert json.loads(load_policy(tmp_path / "p.toml").model_dump_json())["limits"]["hop_limit"] == 2


def test_the_shipped_example_policy_loads() -> None:
    policy = load_policy(Path(__file__).resolve().parents[2] / "examples" / "policy.yaml")
    assert policy.rule_for("triage", "billing", "instruction") is not None
    assert policy.rate_for("researcher") is not None and policy.rate_for("researcher").over_limit == "delay"  # type: ignore[union-attr]


TAINT_POLICY = parse_policy(
    {
        "taint": {"high_risk_tools": ["issue_refund"], "on_tainted_high_risk": "hold"},
        "rules": [
            {"from": "researcher", "to": ["billing"], "kinds": ["instruction"], "verbs": ["issue_refund", "lookup"]},
            {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
        ],
    }
)


def _tainted_researcher(state: CoordinatorState) -> str:
    """The researcher is shown a web page in a new correlation; returns that correlation."""
    page = run(TAINT_POLICY, state, env(sender="fetcher", to=("researcher",), taint=["web"]))
    return page.correlation_id


def test_tainted_instruction_to_a_high_risk_tool_is_held_even_when_taint_is_not_declared() -> None:
    state = CoordinatorState()
    corr = _tainted_researcher(state)
    held = run(TAINT_POLICY, state, env(sender="researcher", kind="instruction", correlation_id=corr,
                                          payload=b'{"verb":"issue_refund","amount":500}'))  # fmt: skip
    assert held.verdict == "hold" and held.reasons == ("tainted_high_risk",)
    assert held.declared_taint == () and held.effective_taint == ("web",)
    assert held.deliver_to == ("billing",)
    assert state.held() == [held]
    assert state.correlation(corr).spent == 1  # the held instruction is not spent until released


def test_untainted_high_risk_instruction_and_tainted_low_risk_instruction_pass_without_a_person() -> None:
    state = CoordinatorState()
    clean = run(TAINT_POLICY, state, env(sender="researcher", kind="instruction", payload=b'{"verb":"issue_refund"}'))
    corr = _tainted_researcher(state)
    lookup = run(TAINT_POLICY, state, env(sender="researcher", kind="instruction", correlation_id=corr,
                                            payload=b'{"verb":"lookup"}'))  # fmt: skip
    assert clean.verdict == "accept" and lookup.verdict == "accept" and lookup.effective_taint == ("web",)


def test_approval_releases_a_held_instruction_and_denial_drops_it() -> None:
    from trustbus.agents._decision import decide_approval

    state = CoordinatorState()
    corr = _tainted_researcher(state)
    held = run(TAINT_POLICY, state, env(sender="researcher", kind="instruction", correlation_id=corr,
                                          payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    approval = env(sender="ops", kind="approval", to=())
    released = decide_approval(held, approval, approve=True, received_ns=T0 + 1)
    state.apply(released, TAINT_POLICY, seq=state.last_seq + 1)
    assert released.verdict == "accept" and released.deliver_to == ("billing",) and released.approver == "ops"
    assert state.held() == [] and state.correlation(corr).spent == 2
    denied = decide_approval(held, approval, approve=False, received_ns=T0 + 1)
    assert (
        denied.verdict == "reject"
        and denied.deliver_to == ()
        and ("billing", "denied") in [(d.recipient, d.reason) for d in denied.dropped]
    )


def test_policy_can_reject_tainted_instructions_outright() -> None:
    policy = parse_policy({**TAINT_POLICY.model_dump(by_alias=True), "taint": {"high_risk_tools": ["issue_refund"],
                           "on_tainted_high_risk": "reject"}})  # fmt: skip
    state = CoordinatorState()
    corr = _tainted_researcher(state)
    d = run(policy, state, env(sender="researcher", kind="instruction", correlation_id=corr,
                               payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    assert d.verdict == "reject" and d.reasons == ("tainted_high_risk",) and d.deliver_to == ()


def test_a_recorded_tool_result_taints_what_its_agent_sends_next() -> None:
    from trustbus.agents._decision import record_effect

    state = CoordinatorState()
    effect = env(sender="researcher", kind="effect", to=())
    state.apply(record_effect(effect, ("web",), received_ns=T0, source_seq=1), TAINT_POLICY, seq=1)
    held = run(TAINT_POLICY, state, env(sender="researcher", kind="instruction", correlation_id=effect.correlation_id,
                                          payload=b'{"verb":"issue_refund"}'))  # fmt: skip
    assert held.verdict == "hold" and held.effective_taint == ("web",)


def _write(key: str = "k", expected: int = 0, to: tuple[str, ...] = ("scribe",), **kw: object) -> Envelope:
    payload = json.dumps({"key": key, "value": 1, "expected_revision": expected}).encode()
    return env(sender="scribe", to=to, kind="memory_write", payload=payload, **kw)


def test_memory_write_rules() -> None:
    state = CoordinatorState()
    assert run(TAINT_POLICY, state, _write()).verdict == "accept"
    stale = decide(TAINT_POLICY, _write(expected=0), state, received_ns=T0, source_seq=9, memory_revision=4)
    assert isinstance(stale, Decision) and stale.reasons == ("stale_revision",)
    assert run(TAINT_POLICY, state, _write(to=("bob",))).reasons == ("foreign_namespace",)
    assert run(TAINT_POLICY, state, _write(key="a.b")).reasons == ("bad_memory_write",)
    assert run(TAINT_POLICY, state, _write(key="checkpoint")).reasons == ("bad_memory_write",)
    corr = _tainted_researcher(state)
    state.apply(run(TAINT_POLICY, state, env(sender="fetcher", to=("scribe",), taint=["web"], correlation_id=corr)),
                TAINT_POLICY, seq=99)  # fmt: skip
    tainted = run(TAINT_POLICY, state, _write(correlation_id=corr))
    assert tainted.verdict == "reject" and tainted.reasons == ("tainted_memory_write",)
    hold_policy = parse_policy({**TAINT_POLICY.model_dump(by_alias=True), "taint": {"on_tainted_memory_write": "hold"}})
    assert run(hold_policy, state, _write(correlation_id=corr)).verdict == "hold"


def test_provisional_decisions_can_be_rolled_back_exactly() -> None:
    import copy

    state = CoordinatorState()
    corr = _tainted_researcher(state)
    run(POLICY, state, env(correlation_id=corr))
    before = copy.deepcopy(state)
    undo: list[tuple[object, object, object]] = []
    for e in [env(correlation_id=corr), env(sender="fetcher", to=("billing",), taint=["web"]), env(to=("research",))]:
        d = decide(TAINT_POLICY, e, state, received_ns=T0, source_seq=99)
        assert isinstance(d, Decision)
        state.apply(d, TAINT_POLICY, seq=state.last_seq, undo=undo)  # type: ignore[arg-type]
    assert state.decided != before.decided
    CoordinatorState.rollback(undo)  # type: ignore[arg-type]
    assert (state.correlations, state.buckets, state.holds, state.suspensions, state.last_seq) == (
        before.correlations, before.buckets, before.holds, before.suspensions, before.last_seq
    )  # fmt: skip


def test_only_an_operator_reverting_a_rollback_may_write_another_agents_memory() -> None:
    state = CoordinatorState()
    revert = json.dumps({"key": "k", "value": 1, "expected_revision": 0, "reverts": ["e1"]}).encode()
    plain = json.dumps({"key": "k", "value": 1, "expected_revision": 0}).encode()
    by_ops = env(sender="ops", to=("scribe",), kind="memory_write", payload=revert)
    assert run(TAINT_POLICY, state, by_ops).verdict == "reject"  # an agent key (the default role) may not
    assert decide(TAINT_POLICY, by_ops, state, received_ns=T0, source_seq=1, sender_role="operator").verdict == "accept"  # type: ignore[union-attr]
    no_reverts = env(sender="ops", to=("scribe",), kind="memory_write", payload=plain)
    refused = decide(TAINT_POLICY, no_reverts, state, received_ns=T0, source_seq=2, sender_role="operator")
    assert refused.reasons == ("foreign_namespace",)  # type: ignore[union-attr]
