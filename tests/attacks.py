"""Forged and tampered messages, shared by the unit and the integration attack tests.

Each attack takes a :class:`Cast` of identities and returns the body and
headers an attacker would put on the wire, and the reason code the receiver
must reject it with.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from trustbus.bus import Identity, Sealed, new_envelope, seal

ED25519_L = 2**252 + 27742317777372353535851937790883648493


@dataclass
class Cast:
    """Who is who: alice and bob are registered agents, the rest are not trustworthy."""

    tenant: str
    alice: Identity
    bob: Identity
    stranger: Identity  # not in the keyring
    revoked: Identity  # carol's key, revoked before the attack
    untrusted: Identity  # mallory's key, whose keyring entry is not signed by the admin


def valid(cast: Cast, *, sender: str = "alice", identity: Identity | None = None, **fields: object) -> Sealed:
    """A legitimate envelope from alice to bob (or as told)."""
    envelope = new_envelope(
        tenant=cast.tenant,
        kind="event",
        sender=sender,
        to=("bob",),
        payload=b'{"order": 42}',
        **fields,  # type: ignore[arg-type]
    )
    return seal(envelope, identity or cast.alice)


def _tamper(sealed: Sealed, **changes: object) -> tuple[bytes, dict[str, str]]:
    fields = msgspec.msgpack.decode(sealed.body)
    fields.update(changes)
    return msgspec.msgpack.encode(fields), dict(sealed.headers)


def flipped_payload_byte(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast)
    body = bytearray(sealed.body)
    at = body.rindex(b"42")
    body[at] ^= 0x01  # '4' -> '5': still valid JSON, still valid msgpack
    return bytes(body), dict(sealed.headers)


def flipped_kind(cast: Cast) -> tuple[bytes, dict[str, str]]:
    return _tamper(valid(cast), kind="instruction")


def flipped_to(cast: Cast) -> tuple[bytes, dict[str, str]]:
    return _tamper(valid(cast), to=["mallory"])


def flipped_taint(cast: Cast) -> tuple[bytes, dict[str, str]]:
    return _tamper(valid(cast, taint=("web",)), taint=[])


def flipped_tenant(cast: Cast) -> tuple[bytes, dict[str, str]]:
    return _tamper(valid(cast), tenant=cast.tenant + "x")


def missing_signature(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast)
    headers = dict(sealed.headers)
    del headers["Tb-Sig"]
    return sealed.body, headers


def empty_signature(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast)
    return sealed.body, {**sealed.headers, "Tb-Sig": ""}


def unknown_key(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast, identity=cast.stranger)
    return sealed.body, dict(sealed.headers)


def signed_by_bob_as_alice(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast, sender="alice", identity=cast.bob)
    return sealed.body, dict(sealed.headers)


def malleated_signature(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast)
    sig = base64.b64decode(sealed.headers["Tb-Sig"])
    s = int.from_bytes(sig[32:], "little") + ED25519_L
    forged = sig[:32] + s.to_bytes(32, "little")
    return sealed.body, {**sealed.headers, "Tb-Sig": base64.b64encode(forged).decode()}


def respelled_signature(cast: Cast) -> tuple[bytes, dict[str, str]]:
    """The same 64 signature bytes, spelled with an unused bit of the last base64 digit set."""
    sealed = valid(cast)
    text = sealed.headers["Tb-Sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = len(text) - 3  # 88 characters end "X==": X carries 2 bits of the signature and 4 unused ones
    respelled = text[:last] + alphabet[alphabet.index(text[last]) ^ 1] + text[last + 1 :]
    assert base64.b64decode(respelled) == base64.b64decode(text)
    return sealed.body, {**sealed.headers, "Tb-Sig": respelled}


def revoked_key(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast, sender="carol", identity=cast.revoked)
    return sealed.body, dict(sealed.headers)


def untrusted_keyring_entry(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast, sender="mallory", identity=cast.untrusted)
    return sealed.body, dict(sealed.headers)


def outside_skew_window(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast, now_ns=time.time_ns() - 10 * 60 * 1_000_000_000)
    return sealed.body, dict(sealed.headers)


def oversized_payload(cast: Cast) -> tuple[bytes, dict[str, str]]:
    envelope = new_envelope(tenant=cast.tenant, kind="event", sender="alice", to=("bob",), payload=b"x" * (300 * 1024))
    sealed = seal(envelope, cast.alice)
    return sealed.body, dict(sealed.headers)


def malformed_msgpack(cast: Cast) -> tuple[bytes, dict[str, str]]:
    sealed = valid(cast)
    return b"\xc1" + sealed.body[1:], dict(sealed.headers)


def unknown_schema_version(cast: Cast) -> tuple[bytes, dict[str, str]]:
    body, headers = _tamper(valid(cast), v=99)
    headers["Tb-Sig"] = base64.b64encode(cast.alice.sign(b"trustbus/v1\x00" + body)).decode()
    return body, headers


Attack = Callable[[Cast], tuple[bytes, dict[str, str]]]

ATTACKS: dict[str, tuple[Attack, str]] = {
    "flipped_payload_byte": (flipped_payload_byte, "bad_signature"),
    "flipped_kind": (flipped_kind, "bad_signature"),
    "flipped_to": (flipped_to, "bad_signature"),
    "flipped_taint": (flipped_taint, "bad_signature"),
    "flipped_tenant": (flipped_tenant, "unknown_key"),
    "missing_signature": (missing_signature, "missing_signature"),
    "empty_signature": (empty_signature, "missing_signature"),
    "unknown_key": (unknown_key, "unknown_key"),
    "signed_by_bob_as_alice": (signed_by_bob_as_alice, "sender_mismatch"),
    "malleated_signature_s_plus_l": (malleated_signature, "bad_signature"),
    "respelled_signature": (respelled_signature, "bad_signature"),
    "revoked_key": (revoked_key, "revoked_key"),
    "untrusted_keyring_entry": (untrusted_keyring_entry, "untrusted_key"),
    "outside_skew_window": (outside_skew_window, "skew"),
    "oversized_payload": (oversized_payload, "too_large"),
    "malformed_msgpack": (malformed_msgpack, "malformed"),
    "unknown_schema_version": (unknown_schema_version, "unsupported_version"),
}
