"""Seal and open without a server: every attack is rejected with its reason code; valid twins pass."""

from __future__ import annotations

import base64
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.attacks import ATTACKS, Cast, valid
from trustbus.bus import (
    Identity,
    KeyGrant,
    Keyring,
    Limits,
    NotMediated,
    RevokedKey,
    SeenIds,
    VerificationError,
    countersign,
    new_envelope,
    open_envelope,
    seal,
    sign_grant,
)
from trustbus.bus._errors import BadCountersignature, BadSignature, Malformed, Replayed, UnknownKey
from trustbus.bus._headers import SIGNED_HEADERS

NOW = time.time_ns()


def _grant(admin: Identity, keyring: Keyring, identity: Identity, owner: str, **fields: object) -> None:
    grant = KeyGrant(
        tenant=keyring.tenant, key_id=identity.key_id, owner=owner, valid_from=NOW - 3600 * 10**9, **fields
    )  # type: ignore[arg-type]
    keyring.add(identity.key_id, sign_grant(grant, admin))


@pytest.fixture
def world() -> tuple[Cast, Keyring, Identity]:
    admin = Identity.generate()
    cast = Cast(
        tenant="acme",
        alice=Identity.generate(),
        bob=Identity.generate(),
        stranger=Identity.generate(),
        revoked=Identity.generate(),
        untrusted=Identity.generate(),
    )
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    coordinator = Identity.generate()
    _grant(admin, keyring, cast.alice, "alice", role="agent")
    _grant(admin, keyring, cast.bob, "bob", role="agent")
    _grant(admin, keyring, cast.revoked, "carol", role="agent", revoked_at=NOW - 10**9)
    _grant(admin, keyring, coordinator, "coordinator", role="coordinator")
    impostor = Identity.generate()
    forged = KeyGrant(tenant="acme", key_id=cast.untrusted.key_id, owner="mallory", role="agent", valid_from=0)
    keyring.add(cast.untrusted.key_id, sign_grant(forged, impostor))
    return cast, keyring, coordinator


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_rejected_with_its_reason(attack: str, world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    forge, reason = ATTACKS[attack]
    body, headers = forge(cast)
    with pytest.raises(VerificationError) as caught:
        open_envelope(body, headers, keyring=keyring, received_ns=time.time_ns())
    assert caught.value.reason == reason


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_valid_twin_of_each_attack_passes(attack: str, world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    sealed = valid(cast, taint=("web",)) if attack == "flipped_taint" else valid(cast)
    opened = open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=time.time_ns())
    assert opened.envelope == sealed.envelope
    assert opened.grant.owner == "alice"


def test_envelope_signed_before_revocation_still_verifies(world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    early = NOW - 5 * 10**9  # carol's key was revoked at NOW - 1s
    sealed = valid(cast, sender="carol", identity=cast.revoked, now_ns=early)
    opened = open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=early + 10**6)
    assert opened.envelope.sender == "carol"


def test_envelope_backdated_to_before_revocation_is_rejected_by_its_store_time(
    world: tuple[Cast, Keyring, Identity],
) -> None:
    cast, keyring, _ = world
    backdated = NOW - 5 * 10**9  # carol's key was revoked at NOW - 1s; a stolen seed signs "before" it
    sealed = valid(cast, sender="carol", identity=cast.revoked, now_ns=backdated)
    with pytest.raises(RevokedKey, match="stored at"):  # within the skew window, so only the store time shows it
        open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=NOW)


def test_replay_of_accepted_id_from_another_position_is_rejected(world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    seen = SeenIds()
    opened = open_envelope(
        sealed.body, sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts, seen=seen, stream_seq=7
    )
    seen.add(opened.envelope, 7)
    with pytest.raises(Replayed):
        open_envelope(
            sealed.body, sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts, seen=seen, stream_seq=9
        )
    # the twin: a redelivery of the same stream position is not a replay
    again = open_envelope(
        sealed.body, sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts, seen=seen, stream_seq=7
    )
    assert again.envelope.id == sealed.envelope.id


def test_seen_ids_forget_only_what_skew_already_rejects() -> None:
    seen = SeenIds(window_ns=10)
    old = new_envelope(tenant="a", kind="event", sender="x", to=["y"], now_ns=1_000)
    fresh = new_envelope(tenant="a", kind="event", sender="x", to=["y"], now_ns=1_100)
    seen.add(old, 1)
    seen.add(fresh, 2)
    seen.prune(1_110)
    assert seen.sequence_of(old.id) is None
    assert seen.sequence_of(fresh.id) == 2


def test_countersigned_delivery_is_accepted_for_its_recipient(world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, coordinator = world
    sealed = valid(cast)
    headers = {
        **sealed.headers,
        **countersign(
            sealed.body, recipient="bob", decision_id="d1", effective_taint=("web",), coordinator=coordinator
        ),
    }
    opened = open_envelope(sealed.body, headers, keyring=keyring, received_ns=sealed.envelope.ts, recipient="bob")
    assert opened.mediation is not None
    assert opened.mediation.decision_id == "d1"
    assert opened.mediation.effective_taint == ("web",)


def test_unmediated_envelope_is_refused_by_a_recipient_that_requires_mediation(
    world: tuple[Cast, Keyring, Identity],
) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    with pytest.raises(NotMediated):
        open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts, recipient="bob")


@pytest.mark.parametrize(
    "tamper",
    ["other_recipient", "dropped_taint", "agent_countersigns"],
)
def test_forged_or_redirected_countersignature_is_rejected(tamper: str, world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, coordinator = world
    sealed = valid(cast)
    signer = cast.alice if tamper == "agent_countersigns" else coordinator
    recipient = "mallory" if tamper == "other_recipient" else "bob"
    headers = {
        **sealed.headers,
        **countersign(sealed.body, recipient=recipient, decision_id="d1", effective_taint=("web",), coordinator=signer),
    }
    if tamper == "dropped_taint":
        headers["Tb-Taint"] = ""
    with pytest.raises(BadCountersignature):
        open_envelope(sealed.body, headers, keyring=keyring, received_ns=sealed.envelope.ts, recipient="bob")


def test_size_limit_is_configurable(world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    limits = Limits(max_bytes=len(sealed.body))
    assert open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts, limits=limits)
    with pytest.raises(VerificationError, match="too_large"):
        open_envelope(
            sealed.body,
            sealed.headers,
            keyring=keyring,
            received_ns=sealed.envelope.ts,
            limits=Limits(max_bytes=len(sealed.body) - 1),
        )


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
_labels = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_:./-]{0,20}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    sender=_names,
    to=st.lists(_names | _names.map(lambda n: f"topic:{n}"), min_size=1, max_size=5),
    payload=st.binary(max_size=2048),
    taint=st.sets(_labels, max_size=4),
    kind=st.sampled_from(["event", "instruction", "reply", "memory_write", "effect"]),
    hop=st.integers(min_value=0, max_value=1000),
)
def test_seal_then_open_round_trips(
    sender: str, to: list[str], payload: bytes, taint: set[str], kind: str, hop: int
) -> None:
    admin, signer = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    keyring.add(
        signer.key_id,
        sign_grant(KeyGrant(tenant="acme", key_id=signer.key_id, owner=sender, role="agent", valid_from=0), admin),
    )
    envelope = new_envelope(
        tenant="acme",
        kind=kind,
        sender=sender,
        to=to,
        payload=payload,
        taint=taint,
        hop=hop,  # type: ignore[arg-type]
    )
    sealed = seal(envelope, signer)
    opened = open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=envelope.ts)
    assert opened.envelope == envelope
    assert opened.envelope.taint == tuple(sorted(taint))


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_in_the_body_is_rejected(position: int, bit: int) -> None:
    admin, signer = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    keyring.add(
        signer.key_id,
        sign_grant(KeyGrant(tenant="acme", key_id=signer.key_id, owner="alice", role="agent", valid_from=0), admin),
    )
    sealed = seal(new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], payload=b"{}"), signer)
    body = bytearray(sealed.body)
    body[position % len(body)] ^= 1 << bit
    with pytest.raises(VerificationError):
        open_envelope(bytes(body), sealed.headers, keyring=keyring, received_ns=sealed.envelope.ts)


_BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@pytest.mark.parametrize("digit", list(_BASE64_DIGITS))
def test_every_respelling_of_the_last_signature_digit_is_refused(
    digit: str, world: tuple[Cast, Keyring, Identity]
) -> None:
    """The last digit before "==" carries 2 bits and 4 unused ones: only the spelling base64.b64encode writes is read.

    Another canonical digit is another signature (its 2 bits differ), which does not verify.
    """
    cast, keyring, _ = world
    sealed = valid(cast)
    text = sealed.headers["Tb-Sig"]
    respelled = text[:85] + digit + "=="
    headers = {**sealed.headers, "Tb-Sig": respelled}
    if respelled == text:
        assert open_envelope(sealed.body, headers, keyring=keyring, received_ns=time.time_ns()).grant.owner == "alice"
        return
    canonical = base64.b64encode(base64.b64decode(respelled)).decode() == respelled
    with pytest.raises(BadSignature, match="does not match" if canonical else "not canonical base64"):
        open_envelope(sealed.body, headers, keyring=keyring, received_ns=time.time_ns())


def test_a_key_revoked_after_it_verified_an_envelope_is_refused_at_once() -> None:
    """The public key is cached per key id; whether it may still sign is asked of the keyring every time."""
    admin, alice = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant="acme", admin_key_id=admin.key_id)
    grant = KeyGrant(tenant="acme", key_id=alice.key_id, owner="alice", role="agent", valid_from=NOW - 3600 * 10**9)
    keyring.add(alice.key_id, sign_grant(grant, admin))
    first = seal(new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], payload=b"{}"), alice)
    assert open_envelope(first.body, first.headers, keyring=keyring, received_ns=first.envelope.ts).grant == grant

    revoked_at = first.envelope.ts + 10**9
    revocation = msgspec.structs.replace(grant, revoked_at=revoked_at)
    keyring.add(alice.key_id, sign_grant(revocation, admin), stored_ns=revoked_at)
    later = seal(
        new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], payload=b"{}", now_ns=revoked_at),
        alice,
    )
    with pytest.raises(RevokedKey):
        open_envelope(later.body, later.headers, keyring=keyring, received_ns=revoked_at)
    with pytest.raises(RevokedKey):  # the envelope that verified before, stored again after the revocation
        open_envelope(first.body, first.headers, keyring=keyring, received_ns=revoked_at)
    # Its twin: as stored before the revocation, it still verifies.
    assert open_envelope(first.body, first.headers, keyring=keyring, received_ns=first.envelope.ts).grant.owner == (
        "alice"
    )


def test_a_key_verified_in_one_tenant_is_unknown_in_another(world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    assert open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=time.time_ns()).grant.owner == (
        "alice"
    )
    other = Keyring(tenant="acme", admin_key_id=Identity.generate().key_id)  # same name, another admin, no grants
    with pytest.raises(UnknownKey):
        open_envelope(sealed.body, sealed.headers, keyring=other, received_ns=time.time_ns())


@pytest.mark.parametrize("name", SIGNED_HEADERS)
@pytest.mark.parametrize(
    "others",
    [{}, {"X-Note": "a\r\nb"}, {"X-Note": "plain"}, {"X-Note": b"not text"}],
    ids=["alone", "crlf", "text", "bytes"],
)
def test_a_repeated_signed_header_is_malformed_whatever_else_the_headers_hold(
    name: str, others: dict[str, object], world: tuple[Cast, Keyring, Identity]
) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    value = sealed.headers.get(name, "x")
    headers = {**sealed.headers, **others, name: f"{value}\r\n{value}"}
    with pytest.raises(Malformed, match=f"repeated {name} header"):
        open_envelope(sealed.body, headers, keyring=keyring, received_ns=time.time_ns())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["X-Note", "traceparent", "Nats-Msg-Id-Extra"])
def test_a_repeated_unsigned_header_is_not_refused(name: str, world: tuple[Cast, Keyring, Identity]) -> None:
    cast, keyring, _ = world
    sealed = valid(cast)
    headers = {**sealed.headers, name: "a\r\nb", "X-Bytes": b"not text"}
    opened = open_envelope(sealed.body, headers, keyring=keyring, received_ns=time.time_ns())  # type: ignore[arg-type]
    assert opened.envelope == sealed.envelope
