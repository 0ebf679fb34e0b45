"""Which outbox subjects no coordinator reads (ledger._strays)."""

from __future__ import annotations

import pytest

from trustbus.ledger._strays import stray_partition


@pytest.mark.parametrize(
    "subject", ["tb.acme.out.alice.99", "tb.acme.out.alice.4", "tb.acme.out.alice.01", "tb.acme.out.alice.x",
                "tb.acme.out.alice.٣", "tb.acme.out.alice.0.extra", "tb.acme.out.alice"],
)  # fmt: skip
def test_an_outbox_subject_beyond_the_partitions_is_a_stray(subject: str) -> None:
    assert stray_partition("acme", subject, 4)


@pytest.mark.parametrize(
    "subject", ["tb.acme.out.alice.0", "tb.acme.out.alice.3", "tb.acme.in.alice", "tb.other.out.alice.9"]
)
def test_an_outbox_subject_of_a_partition_the_tenant_has_is_read(subject: str) -> None:
    assert not stray_partition("acme", subject, 4)
