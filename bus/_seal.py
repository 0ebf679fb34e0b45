"""Seal and open: signing the exact bytes sent, and strict verification on receipt.

``seal`` encodes an envelope once and signs those bytes behind a domain
prefix; the signature and key id travel in NATS headers. ``open_envelope``
checks a received body in a fixed order, each failure its own
:class:`~bus.VerificationError` with a stable reason code:

0. not empty (``foreign``: no one signed an empty message);
1. size within limit (before decoding, so an oversized body costs nothing);
2. decodes, schema version known, schema valid, a JSON or msgpack payload
   nested no deeper than :data:`bus._payload.PAYLOAD_BOUNDS` allow, no signed
   header repeated (:mod:`bus._headers`);
3. signature and key id headers present;
4. key id known for the tenant, its grant signed by the admin, bound to ``sender``;
5. key valid at ``ts`` (not before ``valid_from``, not at or after ``revoked_at``),
   and not revoked when the server stored the message (``ts`` is the sender's
   word; the store time cannot be backdated);
6. signature valid (strict Ed25519: libsodium rejects non-canonical ``s`` and
   small-order points);
7. ``ts`` within the skew window of the time the server stored the message;
8. id not already accepted from another stream position;
9. when the receiver requires mediation: the coordinator's countersignature
   over ``(sha256(body), recipient, decision id, effective taint)``.

Everything here is pure: the clock reading and the seen-id set are passed in.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from trustbus.bus._envelope import Envelope, decode_envelope, encode_envelope
from trustbus.bus._errors import (
    BadCountersignature,
    BadSignature,
    Foreign,
    KeyNotYetValid,
    MissingSignature,
    NotMediated,
    Replayed,
    RevokedKey,
    SenderMismatch,
    Skew,
    TooLarge,
    UnknownKey,
    VerificationError,
)
from trustbus.bus._headers import check_signed_headers
from trustbus.bus._identity import Identity, verify_key
from trustbus.bus._keyring import KeyGrant, Keyring
from trustbus.bus._payload import check_payload
from trustbus.bus._trace_context import HEADER_TRACEPARENT

SIGNATURE_DOMAIN = b"trustbus/v1\x00"
COUNTERSIGNATURE_DOMAIN = b"trustbus/v1/csig\x00"

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_SIG = "Tb-Sig"
HEADER_KEY = "Tb-Key"
HEADER_CSIG = "Tb-Csig"
HEADER_CKEY = "Tb-Ckey"
HEADER_DECISION = "Tb-Decision"
HEADER_TAINT = "Tb-Taint"

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_SKEW_NS = 60 * 1_000_000_000

_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Limits:
    """Receiver limits.

    Attributes:
        max_bytes: largest accepted body.
        skew_ns: largest accepted distance between the sender's ``ts`` and the
            time the server stored the message. The stream's duplicate window
            must be at least this long (see :func:`bus.provision`).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    skew_ns: int = DEFAULT_SKEW_NS


@dataclass(frozen=True, slots=True)
class Sealed:
    """An envelope ready to publish: its wire bytes and the headers carrying the signature."""

    envelope: Envelope
    body: bytes
    headers: dict[str, str]


class Mediation(msgspec.Struct, frozen=True):
    """What the coordinator's countersignature said about a delivery."""

    coordinator_key: str
    decision_id: str
    effective_taint: tuple[str, ...]


class Opened(msgspec.Struct, frozen=True):
    """A verified envelope, the grant of the key that signed it, and its mediation if required."""

    envelope: Envelope
    grant: KeyGrant
    mediation: Mediation | None = None


class SeenIds:
    """Envelope ids accepted recently, each with the stream sequence it was accepted at.

    Only ids within the skew window need remembering: an older envelope fails
    the skew check anyway. ``prune`` forgets the rest, so memory stays bounded
    by the rate times the window.
    """

    def __init__(self, *, window_ns: int = DEFAULT_SKEW_NS) -> None:
        """Remember ids for ``window_ns`` of sender time."""
        self._window_ns = window_ns
        self._ids: OrderedDict[str, tuple[int, int, bool]] = OrderedDict()  # id -> (ts, stream_seq, settled)

    def sequence_of(self, envelope_id: str) -> int | None:
        """The stream sequence ``envelope_id`` was accepted at, if remembered."""
        entry = self._ids.get(envelope_id)
        return None if entry is None else entry[1]

    def settled_at(self, envelope_id: str) -> int | None:
        """The stream sequence ``envelope_id`` was accepted and settled at, if known to be settled."""
        entry = self._ids.get(envelope_id)
        return entry[1] if entry is not None and entry[2] else None

    def add(self, envelope: Envelope, stream_seq: int, *, settled: bool = True) -> None:
        """Remember ``envelope`` as accepted at ``stream_seq``.

        ``settled=False``: handed out but perhaps not settled (a restarted reader's
        view above its ack floor). A copy at another sequence is still a replay, but
        a redelivery at that sequence is handled, not taken as already done.
        """
        self._ids[envelope.id] = (envelope.ts, stream_seq, settled)
        self._ids.move_to_end(envelope.id)

    def prune(self, now_ns: int) -> None:
        """Forget the oldest-added ids while their ``ts`` is older than the window before ``now_ns``.

        Ids are kept in the order they were accepted, which follows ``ts`` up to
        the skew; pruning stops at the first fresh one, so a call costs only what
        it removes. An out-of-order stale id stays a little longer: that only
        makes the check stricter.
        """
        horizon = now_ns - 2 * self._window_ns
        while self._ids:
            envelope_id, (ts, _, _) = next(iter(self._ids.items()))
            if ts >= horizon:
                return
            del self._ids[envelope_id]

    def __len__(self) -> int:
        return len(self._ids)


def seal(envelope: Envelope, identity: Identity) -> Sealed:
    """Encode ``envelope`` once and sign those bytes; ``Nats-Msg-Id`` is the envelope id.

    An envelope with trace context also gets a ``traceparent`` header: unsigned, for nats-server's
    message tracing and other readers of headers; the envelope's own copy is the one trusted.
    """
    body = encode_envelope(envelope)
    headers = {
        HEADER_MSG_ID: envelope.id,
        HEADER_SIG: base64.b64encode(identity.sign(SIGNATURE_DOMAIN + body)).decode(),
        HEADER_KEY: identity.key_id,
    }
    if envelope.trace is not None:
        headers[HEADER_TRACEPARENT] = envelope.trace[0]
    return Sealed(envelope=envelope, body=body, headers=headers)


def countersignature_message(
    body: bytes, *, recipient: str, decision_id: str, effective_taint: tuple[str, ...]
) -> bytes:
    """The bytes a coordinator signs to say it delivered ``body`` to ``recipient``."""
    fields = [hashlib.sha256(body).digest(), recipient, decision_id, sorted(set(effective_taint))]
    return COUNTERSIGNATURE_DOMAIN + _encoder.encode(fields)


def countersign(
    body: bytes,
    *,
    recipient: str,
    decision_id: str,
    effective_taint: tuple[str, ...],
    coordinator: Identity,
) -> dict[str, str]:
    """Headers to add to a forwarded envelope: the coordinator's countersignature."""
    message = countersignature_message(
        body, recipient=recipient, decision_id=decision_id, effective_taint=effective_taint
    )
    return {
        HEADER_CSIG: base64.b64encode(coordinator.sign(message)).decode(),
        HEADER_CKEY: coordinator.key_id,
        HEADER_DECISION: decision_id,
        HEADER_TAINT: ",".join(sorted(set(effective_taint))),
    }


def open_envelope(
    body: bytes,
    headers: Mapping[str, str] | None,
    *,
    keyring: Keyring,
    received_ns: int,
    limits: Limits = Limits(),
    seen: SeenIds | None = None,
    stream_seq: int | None = None,
    recipient: str | None = None,
    at_store: bool = False,
) -> Opened:
    """Verify a received body in the documented order; raise the first failure.

    Args:
        body: the message data, exactly as received.
        headers: the message headers.
        keyring: the tenant's keyring.
        received_ns: when the server stored the message (the skew reference).
        limits: size and skew limits.
        seen: ids already accepted; a hit at another ``stream_seq`` is a replay.
        stream_seq: this message's stream sequence.
        recipient: if set, require a valid countersignature for this recipient (and
            leave the skew check to the coordinator, which made it on the outbox copy).
        at_store: a component's record (:func:`bus.subjects.judged_at_store`): the key must
            be valid when the server stored it, and ``ts``, the signer's clock, is not
            held to the skew window.
    """
    if not body:
        raise Foreign("an empty message: no envelope, no signature (a server status answer stored here?)")
    if len(body) > limits.max_bytes:
        raise TooLarge(f"{len(body)} bytes, limit {limits.max_bytes}")
    envelope = decode_envelope(body)
    check_payload(envelope.content_type, envelope.payload)
    headers = headers or {}
    check_signed_headers(headers)
    sig = _decode_signature(headers.get(HEADER_SIG, ""), missing=MissingSignature, bad=BadSignature)
    key_id = headers.get(HEADER_KEY, "")
    if not key_id:
        raise MissingSignature(f"no {HEADER_KEY} header")

    if envelope.tenant != keyring.tenant:
        raise UnknownKey(f"envelope is for tenant {envelope.tenant!r}, not {keyring.tenant!r}")
    grant = keyring.resolve(key_id, at=received_ns)  # as it stood when the server stored the message
    if grant.owner != envelope.sender:
        raise SenderMismatch(f"key {key_id} belongs to {grant.owner!r}, envelope claims {envelope.sender!r}")
    if at_store:
        _check_valid_when_stored(grant, received_ns)
    elif envelope.ts < grant.valid_from:
        raise KeyNotYetValid(f"key {key_id} valid from {grant.valid_from}, envelope ts {envelope.ts}")
    elif grant.revoked_at is not None and envelope.ts >= grant.revoked_at:
        raise RevokedKey(f"key {key_id} revoked at {grant.revoked_at}, envelope ts {envelope.ts}")
    # The sender writes its own ts; the server's store time of the first copy cannot be backdated.
    if recipient is None and grant.revoked_at is not None and received_ns >= grant.revoked_at:
        raise RevokedKey(f"key {key_id} revoked at {grant.revoked_at}, message stored at {received_ns}")

    try:
        crypto_sign_open(sig + SIGNATURE_DOMAIN + body, _public_key(key_id))
    except (BadSignatureError, ValueError) as exc:
        raise BadSignature("signature does not match the bytes received") from exc

    # A mediated delivery is stored again when the coordinator forwards it, possibly
    # much later; the coordinator checked the skew against the outbox copy.
    if recipient is None and not at_store and abs(envelope.ts - received_ns) > limits.skew_ns:
        skew_s = (envelope.ts - received_ns) / 1e9
        raise Skew(f"sender clock off by {skew_s:+.3f}s, limit {limits.skew_ns / 1e9:.3f}s")

    if seen is not None:
        earlier = seen.sequence_of(envelope.id)
        if earlier is not None and earlier != stream_seq:
            raise Replayed(f"id {envelope.id} already accepted at stream sequence {earlier}")

    mediation = (
        None
        if recipient is None
        else _check_countersignature(body, headers, keyring, recipient, received_ns=received_ns)
    )
    return Opened(envelope=envelope, grant=grant, mediation=mediation)


def _check_valid_when_stored(grant: KeyGrant, stored_ns: int) -> None:
    """A record is judged by its store time, which its signer cannot choose."""
    if stored_ns < grant.valid_from:
        raise KeyNotYetValid(f"key {grant.key_id} valid from {grant.valid_from}, record stored at {stored_ns}")
    if grant.revoked_at is not None and stored_ns >= grant.revoked_at:
        raise RevokedKey(f"key {grant.key_id} revoked at {grant.revoked_at}, record stored at {stored_ns}")


def _check_countersignature(
    body: bytes, headers: Mapping[str, str], keyring: Keyring, recipient: str, *, received_ns: int
) -> Mediation:
    if not headers.get(HEADER_CSIG):
        raise NotMediated("no countersignature: the envelope did not come through the coordinator")
    sig = _decode_signature(headers[HEADER_CSIG], missing=NotMediated, bad=BadCountersignature)
    coordinator_key = headers.get(HEADER_CKEY, "")
    decision_id = headers.get(HEADER_DECISION, "")
    taint_header = headers.get(HEADER_TAINT, "")
    taint = tuple(t for t in taint_header.split(",") if t)
    try:
        grant = keyring.resolve(coordinator_key, at=received_ns)
    except VerificationError as exc:
        raise BadCountersignature(f"countersigning key not trusted: {exc.detail}") from exc
    if grant.role != "coordinator" or (grant.revoked_at is not None and grant.revoked_at <= received_ns):
        raise BadCountersignature(f"key {coordinator_key} may not countersign")
    message = countersignature_message(body, recipient=recipient, decision_id=decision_id, effective_taint=taint)
    try:
        crypto_sign_open(sig + message, _public_key(coordinator_key))
    except (BadSignatureError, ValueError) as exc:
        raise BadCountersignature(f"countersignature is not for {recipient!r} and these bytes") from exc
    return Mediation(coordinator_key=coordinator_key, decision_id=decision_id, effective_taint=taint)


@functools.lru_cache(maxsize=4096)
def _public_key(key_id: str) -> bytes:
    """The raw Ed25519 public key a key id encodes (raises ConfigError, as :func:`verify_key` does).

    Signatures are checked with libsodium's ``crypto_sign_open`` on ``signature + message``, the call
    ``VerifyKey.verify`` makes after its argument checks (a 64-byte signature, bytes): the same strict
    verification without the wrapper. The key id *is* the public key, so this cache holds nothing a
    revocation or rotation could make stale; whether the key may sign is the keyring's answer, asked
    on every call.
    """
    return bytes(verify_key(key_id))


def _decode_signature(value: str, *, missing: type[VerificationError], bad: type[VerificationError]) -> bytes:
    if not value:
        raise missing("empty or missing signature header")
    try:
        sig = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise bad("signature header is not base64") from exc
    if len(sig) != 64:
        raise bad(f"signature is {len(sig)} bytes, Ed25519 signatures are 64")
    if value[_LAST_SIGNATURE_DIGIT] not in _CANONICAL_LAST_DIGITS:
        # One signature, one spelling: the header is chained and hashed into the Merkle leaf as text.
        raise bad("signature header is not canonical base64")
    return sig


# A strict decode to 64 bytes leaves one spelling free: 64 bytes are 86 base64 digits and "==", and the
# 86th digit carries the last 2 bits and 4 that decoding drops. It is canonical (what base64.b64encode
# writes) when those 4 are zero: A, Q, g or w. Checked without encoding the signature again.
_LAST_SIGNATURE_DIGIT = 85
_CANONICAL_LAST_DIGITS = frozenset("AQgw")
