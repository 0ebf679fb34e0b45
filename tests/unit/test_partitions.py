"""Partitions of a tenant's correlations: where each correlation's envelopes, effects, approvals and decisions go."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import msgspec
import pytest

from trustbus.agents._signed_value import Holder, holder_value, open_holder
from trustbus.bus import ConfigError, Identity, KeyGrant, Keyring, new_envelope, new_id, seal, sign_grant, subjects

T = "acme"
NOW = 1_800_000_000 * 10**9


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


def _coordinators() -> tuple[Keyring, dict[str, Identity]]:
    admin = Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    people = {"coord-a": Identity.generate(), "coord-b": Identity.generate(), "mallory": Identity.generate()}
    for owner, identity in people.items():
        role = "agent" if owner == "mallory" else "coordinator"
        grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=NOW - 10**12)
        keyring.add(identity.key_id, sign_grant(grant, admin))
    return keyring, people


def test_a_lease_a_coordinator_signed_for_its_key_names_its_holder() -> None:
    """The twin: leases and member records as coordinators write them (held, handed back)."""
    keyring, people = _coordinators()
    lease = holder_value(people["coord-a"], "coord-a", "partition-0", "i1", tenant=T, now_ns=NOW)
    assert open_holder(lease, keyring=keyring, key="partition-0", stored_ns=NOW) == Holder(
        "partition-0", "coord-a", "i1"
    )
    back = holder_value(people["coord-a"], "coord-a", "member-coord-a", None, tenant=T, now_ns=NOW)
    assert open_holder(back, keyring=keyring, key="member-coord-a", stored_ns=NOW).instance is None


@pytest.mark.parametrize(
    ("planted", "why"),
    [
        ("unsigned", "not a signed value"),
        ("empty", "an empty value"),
        ("agent-signed", "agent key, not a coordinator's"),
        ("copied from another partition", "the value of partition-1, not of partition-0"),
        ("naming another holder", "names coord-b as holder, signed by coord-a"),
    ],
)
def test_a_lease_no_coordinator_signed_for_its_key_and_holder_is_refused_with_why(planted: str, why: str) -> None:
    keyring, people = _coordinators()
    if planted == "unsigned":  # well-formed, as leases were stored before they were signed
        value = json.dumps({"name": "coord-b", "instance": "i2"}).encode()
    elif planted == "empty":  # what a request's reply subject leaves there, or a deletion
        value = b""
    elif planted == "agent-signed":
        value = holder_value(people["mallory"], "mallory", "partition-0", "i3", tenant=T, now_ns=NOW)
    elif planted == "copied from another partition":
        value = holder_value(people["coord-a"], "coord-a", "partition-1", "i1", tenant=T, now_ns=NOW)
    else:
        payload = json.dumps({"key": "partition-0", "name": "coord-b", "instance": "i2"}).encode()
        envelope = new_envelope(tenant=T, kind="event", sender="coord-a", to=(), payload=payload, now_ns=NOW)
        sealed = seal(envelope, people["coord-a"])
        value = msgspec.msgpack.encode({"body": sealed.body, "headers": sealed.headers})
    with pytest.raises(ValueError, match=why):
        open_holder(value, keyring=keyring, key="partition-0", stored_ns=NOW)
