"""Lease planning, in-process: fair share, expired and predecessor leases taken, own leases kept, foreign values."""

from __future__ import annotations

import hashlib
import math

from hypothesis import given
from hypothesis import strategies as st

from trustbus.agents._lease_plan import LEASE_S, Lease, plan_leases, still_held

ME, INSTANCE = "c1", "run-2"
FREE = Lease(revision=0, name=None, instance=None, age_s=math.inf)  # never written


def mine(revision: int, age_s: float = 0.5) -> Lease:
    return Lease(revision=revision, name=ME, instance=INSTANCE, age_s=age_s)


def theirs(revision: int, age_s: float = 0.5, name: str = "c2") -> Lease:
    return Lease(revision=revision, name=name, instance="other-run", age_s=age_s)


def member(name: str | None, age_s: float) -> Lease:
    return Lease(revision=1, name=name, instance="x", age_s=age_s)


def order(name: str, partitions: list[int]) -> list[int]:
    return sorted(partitions, key=lambda p: hashlib.sha256(f"{name}:{p}".encode()).digest())


def test_the_share_is_the_partitions_over_the_live_members_rounded_up() -> None:
    leases = dict.fromkeys(range(5), FREE)
    alive = [member(ME, 0.2), member("c2", LEASE_S)]  # LEASE_S old is still alive
    dead = [member("c3", LEASE_S + 0.01), member(None, 0.1)]  # stopped renewing; handed back
    assert plan_leases(leases, members=alive + dead, held=[], name=ME, instance=INSTANCE).share == 3
    assert plan_leases(leases, members=alive[:1], held=[], name=ME, instance=INSTANCE).share == 5
    assert plan_leases(leases, members=[], held=[], name=ME, instance=INSTANCE).share == 5  # never below one live
    seven = [member(f"c{i}", 0.0) for i in range(7)]
    assert plan_leases(leases, members=seven, held=[], name=ME, instance=INSTANCE).share == 1


def test_free_partitions_are_taken_in_this_processes_order_of_preference() -> None:
    leases = dict.fromkeys(range(8), FREE)
    plan = plan_leases(leases, members=[member(ME, 0.0)], held=[], name=ME, instance=INSTANCE)
    assert plan.take == tuple(order(ME, list(range(8)))) and plan.hand_back == ()
    other = plan_leases(leases, members=[member(ME, 0.0)], held=[], name="c2", instance="i")
    assert sorted(other.take) == list(range(8)) and other.take != plan.take  # processes starting together spread


def test_expired_and_handed_back_leases_are_taken_live_ones_are_not() -> None:
    leases = {
        0: theirs(3, age_s=LEASE_S + 0.1),  # its holder stopped renewing
        1: theirs(4, age_s=LEASE_S),  # not yet expired
        2: Lease(revision=5, name=None, instance=None, age_s=0.1),  # handed back (a tombstone)
        3: theirs(6, age_s=0.1),
    }
    plan = plan_leases(leases, members=[member(ME, 0.0)], held=[], name=ME, instance=INSTANCE)
    assert sorted(plan.take) == [0, 2]


def test_a_previous_run_of_this_process_leaves_its_leases_to_this_one_at_once() -> None:
    leases = {0: Lease(revision=3, name=ME, instance="run-1", age_s=0.1), 1: theirs(4, name="c1x")}
    plan = plan_leases(leases, members=[member(ME, 0.0)], held=[], name=ME, instance=INSTANCE)
    assert plan.take == (0,)


def test_own_leases_are_kept_and_never_taken_again() -> None:
    leases = {0: mine(3), 1: mine(4, age_s=LEASE_S + 1), 2: FREE, 3: theirs(5)}
    plan = plan_leases(leases, members=[member(ME, 0.0), member("c2", 0.0)], held=[0, 1], name=ME, instance=INSTANCE)
    assert (plan.share, plan.hand_back, plan.take) == (2, (), (2,))  # 1 is old as read, but held: renewed
    assert still_held(mine(3), instance=INSTANCE, revision=3)
    assert still_held(mine(4, age_s=LEASE_S + 1), instance=INSTANCE, revision=4)


def test_a_lease_rewritten_by_another_is_no_longer_held() -> None:
    assert not still_held(mine(3), instance=INSTANCE, revision=2)  # rewritten since its last write
    assert not still_held(theirs(7), instance=INSTANCE, revision=3)
    assert not still_held(Lease(revision=3, name=ME, instance="run-1", age_s=0.1), instance=INSTANCE, revision=3)
    assert not still_held(Lease(revision=8, name=None, instance=None, age_s=0.1), instance=INSTANCE, revision=3)
    assert not still_held(mine(3), instance=INSTANCE, revision=None)  # a partition it does not hold


def test_what_is_held_beyond_the_share_is_handed_back_highest_first() -> None:
    leases = {p: mine(p + 1) for p in range(4)}
    members = [member(ME, 0.0), member("c2", 0.0)]
    plan = plan_leases(leases, members=members, held=[0, 1, 2, 3], name=ME, instance=INSTANCE)
    assert (plan.share, plan.hand_back, plan.take) == (2, (3, 2), ())
    alone = plan_leases(leases, members=members[:1], held=[0, 1, 2, 3], name=ME, instance=INSTANCE)
    assert alone.hand_back == ()


def test_a_foreign_value_frees_a_lease_only_once_it_is_old() -> None:
    young = Lease(revision=9, name="?", instance=None, age_s=0.1, foreign=True)
    old = Lease(revision=9, name="?", instance=None, age_s=LEASE_S + 0.1, foreign=True)
    plan = plan_leases({0: young, 1: old}, members=[member(ME, 0.0)], held=[], name=ME, instance=INSTANCE)
    assert plan.take == (1,)
    # Written over a lease this process holds, it changes nobody's hold: the holder keeps it (and writes over it).
    assert still_held(young, instance=INSTANCE, revision=3)
    assert not still_held(young, instance=INSTANCE, revision=None)
    assert not still_held(young, instance="x", revision=None)


def test_a_foreign_member_value_counts_as_no_one() -> None:
    # A planted member record would otherwise make every coordinator hand back partitions to no one.
    leases = dict.fromkeys(range(4), FREE)
    for age in (0.1, LEASE_S + 1):
        foreign = Lease(revision=2, name="?", instance=None, age_s=age, foreign=True)
        assert plan_leases(leases, members=[member(ME, 0.0), foreign], held=[], name=ME, instance=INSTANCE).share == 4
    other = member("coord-b", 0.1)  # the twin: a live coordinator's own record halves the share
    assert plan_leases(leases, members=[member(ME, 0.0), other], held=[], name=ME, instance=INSTANCE).share == 2


_leases = st.one_of(
    st.just(FREE),
    st.builds(
        Lease,
        revision=st.integers(1, 50),
        name=st.sampled_from([None, ME, "c2", "?"]),
        instance=st.sampled_from([None, INSTANCE, "run-1", "other-run"]),
        age_s=st.floats(0, 2 * LEASE_S),
        foreign=st.booleans(),
    ),
)


@given(
    leases=st.lists(_leases, min_size=1, max_size=12).map(lambda ls: dict(enumerate(ls))),
    members=st.lists(st.builds(member, st.sampled_from([None, ME, "c2", "c3"]), st.floats(0, 2 * LEASE_S))),
    held=st.sets(st.integers(0, 11)),
)
def test_no_partition_is_taken_twice_and_the_share_is_never_exceeded_by_choice(
    leases: dict[int, Lease], members: list[Lease], held: set[int]
) -> None:
    held &= set(leases)
    plan = plan_leases(leases, members=members, held=held, name=ME, instance=INSTANCE)
    assert len(plan.take) == len(set(plan.take)) and not set(plan.take) & held
    assert set(plan.hand_back) <= held and len(held) - len(plan.hand_back) == min(len(held), plan.share)
    assert all(leases[p].free or (leases[p].name == ME and leases[p].instance != INSTANCE) for p in plan.take)
    assert 1 <= plan.share <= len(leases)
