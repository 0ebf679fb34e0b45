"""Decision records: one decision on its own, or a group's in one record; how each decision is named."""

from __future__ import annotations

import time

import msgspec
import pytest

from trustbus.agents._decision_log import group_records
from trustbus.bus import (
    Decision,
    Identity,
    KeyGrant,
    Keyring,
    VerificationError,
    decode_decision,
    decode_decisions,
    encode_decision,
    encode_decision_group,
    new_envelope,
    open_envelope,
    recorded_decisions,
    seal,
    sign_grant,
)

TENANT = "acme"
ADMIN, COORDINATOR, AGENT = Identity.generate(), Identity.generate(), Identity.generate()


class Coordinator:
    """Signs as the coordinator ``coord`` (what ``group_records`` needs of a bus)."""

    tenant, name = TENANT, "coord"

    @staticmethod
    def clock() -> int:
        return time.time_ns()

    def seal(self, envelope):  # type: ignore[no-untyped-def]
        return seal(envelope, COORDINATOR)


def keyring() -> Keyring:
    ring = Keyring(tenant=TENANT, admin_key_id=ADMIN.key_id)
    for owner, role, identity in (("coord", "coordinator", COORDINATOR), ("mallory", "agent", AGENT)):
        grant = KeyGrant(tenant=TENANT, key_id=identity.key_id, owner=owner, role=role, valid_from=0)
        ring.add(identity.key_id, sign_grant(grant, ADMIN))
    return ring


def decision(n: int, *, taint: tuple[str, ...] = ()) -> Decision:
    return Decision(
        envelope_id=f"e{n}",
        source_seq=n,
        sender="alice",
        kind="event",
        correlation_id=f"c{n % 3}",
        causation_id=None,
        verdict="accept",
        reasons=(),
        deliver_to=("bob",),
        dropped=(),
        hop=0,
        declared_taint=taint,
        effective_taint=taint,
        decided_ns=n,
    )


def test_a_group_is_one_signed_record_naming_each_decision_by_position() -> None:
    decisions = [decision(n, taint=("web",) if n == 2 else ()) for n in range(5)]

    [record] = group_records(Coordinator(), decisions)  # type: ignore[arg-type]
    opened = open_envelope(record.sealed.body, record.sealed.headers, keyring=keyring(), received_ns=time.time_ns())

    named = recorded_decisions(opened.envelope)
    assert [d for _, d in named] == decisions
    assert [i for i, _ in named] == [f"{record.envelope.id}.{n}" for n in range(5)] == list(record.ids)
    assert opened.envelope.correlation_id == opened.envelope.id and opened.envelope.causation_id is None
    assert opened.envelope.taint == ("web",)  # what any decision in it carries


def test_a_lone_decision_record_is_read_as_before_and_named_by_its_envelope() -> None:
    envelope = new_envelope(
        tenant=TENANT, kind="decision", sender="coord", to=(), content_type="application/msgpack",
        payload=encode_decision(decision(1)),
    )  # fmt: skip

    assert recorded_decisions(envelope) == [(envelope.id, decision(1))]
    assert decode_decisions(envelope.payload) == ((decision(1),), False)


@pytest.mark.parametrize(
    "payload",
    [
        msgspec.msgpack.encode((1, [])),  # a group of nothing
        msgspec.msgpack.encode((2, [decision(1)])),  # a version this reader does not know
        msgspec.msgpack.encode((1, [decision(1)], "more")),  # a field too many
        msgspec.msgpack.encode((1, [{"envelope_id": "e1"}])),  # not a decision
        msgspec.msgpack.encode([]),
    ],
)
def test_a_malformed_group_is_refused_whole(payload: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, ValueError)):
        decode_decisions(payload)


def test_a_group_is_no_answer_an_agent_may_take_for_one_decision() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_decision(encode_decision_group([encode_decision(decision(1))]))


def test_a_group_too_large_for_one_record_is_split_in_order() -> None:
    decisions = [decision(n) for n in range(4000)]  # about 250 bytes each: over 128 KiB

    records = group_records(Coordinator(), decisions)  # type: ignore[arg-type]

    assert len(records) > 1
    assert [d for r in records for d in r.decisions] == decisions
    assert all(len(r.sealed.body) < 256 * 1024 for r in records)  # what a receiver reads (bus.Limits)


def test_a_group_record_signed_by_an_agent_key_or_altered_does_not_open() -> None:
    [record] = group_records(Coordinator(), [decision(1), decision(2)])  # type: ignore[arg-type]
    forged = seal(record.envelope, AGENT)  # mallory signs the coordinator's words
    with pytest.raises(VerificationError):
        open_envelope(forged.body, forged.headers, keyring=keyring(), received_ns=time.time_ns())
    altered = record.sealed.body.replace(b"alice", b"alicf")
    with pytest.raises(VerificationError):
        open_envelope(altered, record.sealed.headers, keyring=keyring(), received_ns=time.time_ns())
