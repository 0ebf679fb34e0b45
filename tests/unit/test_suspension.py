"""Suspension as the fold of the decision log (agents._suspension): pure, no server."""

from __future__ import annotations

import msgspec

from trustbus.agents import CoordinatorState, parse_policy
from trustbus.agents._suspension import SUSPENSION_KIND, Suspensions, suspension_id
from trustbus.bus import subjects

S = 1_000_000_000


def suspensions(state: CoordinatorState, rejections: int = 10, window_s: float = 60) -> Suspensions:
    policy = parse_policy({"limits": {"suspension": {"rejections": rejections, "window_s": window_s}}})
    return Suspensions(state, policy, partition=2, partitions=4, tenant="acme")


def test_a_sender_over_the_threshold_within_the_window_is_due_and_its_decision_is_a_hold_in_its_partition() -> None:
    state = CoordinatorState()
    watch = suspensions(state)
    watch.refused("mallory", {"bad_signature": 6}, last_seq=10, at_ns=100 * S)
    assert watch.due() == []
    watch.refused("mallory", {"bad_signature": 4}, last_seq=20, at_ns=101 * S)
    assert watch.due() == [("mallory", 20)]
    made = watch.decision("mallory", source_seq=20, now_ns=102 * S)
    assert made is not None
    cause, decision = made
    assert cause.id == decision.envelope_id == suspension_id("mallory", 2, 1)
    assert (decision.kind, decision.verdict, decision.sender, decision.source_seq) == (
        SUSPENSION_KIND,
        "hold",
        "mallory",
        20,
    )
    assert subjects.partition_of(decision.correlation_id, 4) == 2  # an approval of it lands on this partition


def test_refusals_spread_wider_than_the_window_do_not_suspend() -> None:
    watch = suspensions(CoordinatorState(), window_s=10)
    for i in range(20):
        watch.refused("slow", {"bad_signature": 1}, last_seq=i, at_ns=i * 11 * S)
    assert watch.due() == []


def test_a_recorded_suspension_is_read_from_the_state_and_lifted_by_its_approval() -> None:
    state = CoordinatorState()
    watch = suspensions(state)
    watch.refused("mallory", {"bad_signature": 10}, last_seq=5, at_ns=S)
    [(sender, seq)] = watch.due()
    made = watch.decision(sender, source_seq=seq, now_ns=S)
    assert made is not None
    _, held = made
    state.apply(held, parse_policy({}), seq=7)
    assert watch.suspended("mallory") and not watch.suspended("bob")
    assert watch.decision("mallory", source_seq=9, now_ns=S) is None  # suspended already
    state.apply(msgspec.structs.replace(held, verdict="accept", reasons=("approved",)), parse_policy({}), seq=8)
    assert not watch.suspended("mallory")
    # Over the threshold again: a second suspension, under the next id.
    watch.refused("mallory", {"bad_signature": 10}, last_seq=30, at_ns=2 * S)
    [(sender, seq)] = watch.due()
    again = watch.decision(sender, source_seq=seq, now_ns=2 * S)
    assert again is not None and again[1].envelope_id == suspension_id("mallory", 2, 2)


def test_suspension_off_in_the_policy_counts_nothing() -> None:
    policy = parse_policy({"limits": {"suspension": None}})
    watch = Suspensions(CoordinatorState(), policy, partition=0, partitions=1, tenant="acme")
    watch.refused("mallory", {"bad_signature": 10_000}, last_seq=1, at_ns=S)
    assert watch.due() == []


def test_a_long_sender_name_still_makes_a_valid_envelope_id() -> None:
    assert len(suspension_id("a" * 64, 1023, 99)) <= 64
