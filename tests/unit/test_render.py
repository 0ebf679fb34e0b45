"""What `trustbus tail` prints for a person: the subject as typed, and records decoded, not ``<msgpack>``."""

from __future__ import annotations

import pytest

from trustbus._commands import TailFilter
from trustbus._render import tail_line
from trustbus.bus import (
    BadSignature,
    Checkpoint,
    ConfigError,
    Decision,
    EffectRecord,
    Identity,
    KeyGrant,
    Opened,
    TailItem,
    encode_checkpoint,
    encode_decision,
    encode_effect,
    new_envelope,
    subjects,
)
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record

T = "acme"
KEY = Identity.generate()


def item(subject: str, kind: str, payload: bytes, *, sender: str = "coordinator", msgpack: bool = True) -> TailItem:
    envelope = new_envelope(
        tenant=T, kind=kind, sender=sender, to=(), payload=payload,  # type: ignore[arg-type]
        content_type="application/msgpack" if msgpack else "application/json",
    )  # fmt: skip
    grant = KeyGrant(tenant=T, key_id=KEY.key_id, owner=sender, role="coordinator", valid_from=0)
    return TailItem(stream_seq=7, subject=subject, stored_ns=0, pending=0, opened=Opened(envelope, grant), error=None)


def test_a_decision_reads_as_its_verdict_reasons_and_recipients() -> None:
    decision = Decision(
        envelope_id="e1", source_seq=3, sender="desk", kind="instruction", correlation_id="c", causation_id=None,
        verdict="hold", reasons=("tainted_high_risk",), deliver_to=("billing",), dropped=(), hop=1,
        declared_taint=(), effective_taint=("web",), decided_ns=0,
    )  # fmt: skip

    line = tail_line(item(subjects.decision(T, 0), "decision", encode_decision(decision)), T)

    assert "#7 decision.0 " in line and "<msgpack>" not in line
    assert "hold (tainted_high_risk): instruction e1 of desk -> billing" in line


def test_an_effect_a_checkpoint_and_a_quarantine_record_are_decoded() -> None:
    effect = EffectRecord(phase="failed", tool="refund", idempotency_key="k9", args=b"{}", error="card expired",
                          effect_class="reversible")  # fmt: skip
    checkpoint = Checkpoint(stream=f"TB_{T}", through_seq=41, head=bytes(range(32)), count=41)
    refused = quarantine_record(b"junk", {}, reason="bad_signature", detail="no", subject=f"tb.{T}.out.mallory.0",
                                stream_seq=5)  # fmt: skip

    effect_line = tail_line(item(subjects.effect_record(T, "bank", 0, "k9"), "effect", encode_effect(effect)), T)
    checkpoint_line = tail_line(item(subjects.checkpoint(T), "checkpoint", encode_checkpoint(checkpoint)), T)
    quarantine_line = tail_line(item(subjects.quarantine(T), "event", encode_quarantine_record(refused)), T)

    assert "refund failed (key k9): card expired" in effect_line
    assert "through #41, head 0001020304050607" in checkpoint_line
    assert "refused bad_signature: #5 out.mallory.0: no" in quarantine_line


def test_a_json_payload_is_shown_compact_and_a_long_one_cut() -> None:
    short = tail_line(
        item(subjects.outbox(T, "alice", 0), "event", b'{"refund": 12}', sender="alice", msgpack=False), T
    )
    long = tail_line(item(subjects.outbox(T, "alice", 0), "event", b'"' + b"x" * 500 + b'"', msgpack=False), T)

    assert "out.alice.0 [bold]event[/bold] alice" in short and '{"refund":12}' in short
    assert "…" in long and "x" * 200 not in long


def test_a_subject_filter_may_be_given_relative_to_the_tenant() -> None:
    assert subjects.absolute(T, "decision.*") == "tb.acme.decision.*"
    assert subjects.absolute(T, "tb.acme.in.bob") == "tb.acme.in.bob"
    assert subjects.relative(T, "tb.acme.in.bob") == "in.bob"
    with pytest.raises(ConfigError, match="not a subject of tenant 'acme'"):
        subjects.absolute(T, "tb.globex.>")


def test_tail_filters_show_only_matching_verified_envelopes() -> None:
    refund = item(subjects.outbox(T, "desk", 0), "instruction", b'{"verb": "refund"}', sender="desk", msgpack=False)
    other = item(subjects.outbox(T, "bob", 0), "event", b"{}", sender="bob", msgpack=False)
    refused = TailItem(stream_seq=9, subject=subjects.outbox(T, "desk", 0), stored_ns=0, pending=0, opened=None,
                       error=BadSignature("tampered"))  # fmt: skip
    assert refund.opened is not None
    correlation = refund.opened.envelope.correlation_id

    assert [TailFilter().shows(i) for i in (refund, other, refused)] == [True, True, True]
    assert [TailFilter(kind="instruction").shows(i) for i in (refund, other, refused)] == [True, False, False]
    assert [TailFilter(agent="desk").shows(i) for i in (refund, other, refused)] == [True, False, False]
    assert [TailFilter(correlation=correlation).shows(i) for i in (refund, other)] == [True, False]
    assert not TailFilter(kind="instruction", agent="bob").shows(refund)
