"""subjects.parse reads back what the subject builders wrote, and says when a subject has no proper shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustbus.bus import subjects

Subject = subjects.Subject
NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
PARTITIONS = st.integers(min_value=0, max_value=subjects.MAX_PARTITIONS - 1)


@given(NAMES, NAMES, PARTITIONS, NAMES)
def test_every_built_subject_parses_back_to_its_parts(tenant: str, agent: str, partition: int, key: str) -> None:
    built = {
        subjects.outbox(tenant, agent, partition): Subject(tenant, "outbox", agent, partition, None, True, 2),
        subjects.inbox(tenant, agent): Subject(tenant, "inbox", agent, None, None, True, 1),
        subjects.topic(tenant, agent): Subject(tenant, "topic", agent, None, None, True, 1),
        subjects.decision(tenant, partition): Subject(tenant, "decision", None, partition, None, True, 1),
        subjects.effect_record(tenant, agent, partition, key): Subject(
            tenant, "effect", agent, partition, key, True, 3
        ),
        subjects.approval(tenant, partition): Subject(tenant, "approval", None, partition, None, True, 1),
        subjects.quarantine(tenant): Subject(tenant, "quarantine", None, None, None, True, 0),
        subjects.checkpoint(tenant): Subject(tenant, "checkpoint", None, None, None, True, 0),
    }
    for subject, expected in built.items():
        assert subjects.parse(subject) == expected, subject


@pytest.mark.parametrize(
    ("subject", "channel", "partition", "well_formed"),
    [
        ("tb.t.out.alice.07", "outbox", None, False),  # a second name for partition 7
        ("tb.t.out.alice.+7", "outbox", None, False),
        ("tb.t.out.alice.\u0667", "outbox", None, False),  # a digit, but not an ASCII one
        ("tb.t.out.alice.7.extra", "outbox", 7, False),
        ("tb.t.out.alice", "outbox", None, False),
        ("tb.t.in.alice.bob", "inbox", None, False),
        ("tb.t.decision", "decision", None, False),
        ("tb.t.ledger.other", "other", None, False),
        ("tb.t.nothing.here", "other", None, False),
    ],
)
def test_a_subject_without_its_channels_shape_is_not_well_formed(
    subject: str, channel: str, partition: int | None, well_formed: bool
) -> None:
    parsed = subjects.parse(subject)
    assert parsed is not None
    assert (parsed.tenant, parsed.channel, parsed.partition, parsed.well_formed) == (
        "t",
        channel,
        partition,
        well_formed,
    )


def test_an_old_effect_record_subject_has_no_partition() -> None:
    assert subjects.parse("tb.t.effect.alice.k1") == Subject("t", "effect", "alice", None, "k1", True, 2)


@pytest.mark.parametrize("subject", ["", "tb", "tb.t", "x.t.out.alice.0", "$KV.tb_mem_t.alice.k"])
def test_what_is_no_trustbus_subject_parses_to_none(subject: str) -> None:
    assert subjects.parse(subject) is None


def test_the_readers_built_on_it_agree_with_the_subjects() -> None:
    assert subjects.mediated_recipient("t", "tb.t.in.alice") == "alice"
    assert subjects.mediated_recipient("t", "tb.t.topic.news") == "topic:news"
    assert subjects.mediated_recipient("u", "tb.t.in.alice") is None  # another tenant's
    assert subjects.mediated_recipient("t", "tb.t.in.alice.x") is None
    assert subjects.effect_owner("t", "tb.t.effect.alice.0.k") == "alice"
    assert subjects.effect_owner("t", "tb.t.effect.alice.k") is None
