"""Partitions of a tenant's correlations: where each correlation's envelopes, effects, approvals and decisions go."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from trustbus.bus import ConfigError, new_id, subjects


def test_a_correlation_always_lands_in_the_same_partition_in_range() -> None:
    ids = [new_id() for _ in range(4000)]
    spread = Counter(subjects.partition_of(i, 4) for i in ids)
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 800  # about even
    assert [subjects.partition_of(i, 4) for i in ids[:50]] == [subjects.partition_of(i, 4) for i in ids[:50]]
    assert {subjects.partition_of(i, 1) for i in ids} == {0}
    # The documented formula: any client in any language places a correlation the same way.
    expected = int.from_bytes(hashlib.sha256(b"a fixed id").digest()[:8], "big") % 4
    assert subjects.partition_of("a fixed id", 4) == expected


@pytest.mark.parametrize("count", [0, -1, subjects.MAX_PARTITIONS + 1])
def test_partition_counts_out_of_range_are_refused(count: int) -> None:
    with pytest.raises(ConfigError, match="partition count"):
        subjects.partition_of("x", count)


def test_partition_subjects() -> None:
    assert subjects.outbox("acme", "alice", 3) == "tb.acme.out.alice.3"
    assert subjects.own_outboxes("acme", "alice") == "tb.acme.out.alice.*"
    assert subjects.partition_outboxes("acme", 3) == "tb.acme.out.*.3"
    assert subjects.effect_record("acme", "alice", 3, "k1") == "tb.acme.effect.alice.3.k1"
    assert subjects.partition_effects("acme", 3) == "tb.acme.effect.*.3.*"
    assert (
        subjects.decision("acme", 3) == "tb.acme.decision.3" and subjects.all_decisions("acme") == "tb.acme.decision.*"
    )
    assert subjects.approval("acme", 3) == "tb.acme.approval.3"
    assert subjects.is_decision("acme", "tb.acme.decision.12")
    assert not subjects.is_decision("acme", "tb.acme.decision") and not subjects.is_decision("acme", "tb.x.decision.1")
    assert not subjects.is_decision("acme", "tb.acme.decision.x")
