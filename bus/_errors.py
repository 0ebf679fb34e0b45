"""Errors raised by the bus.

The tree::

    BusError
    ├── ConfigError                 bad name, bad setting, bad key file
    ├── ServerError                 the embedded nats-server could not run
    │   ├── ServerBinaryNotFound
    │   └── PortInUse
    ├── TransportError              a NATS call failed; see bus._translate for the mapping
    │   ├── Unavailable              no server or no stream leader answered (retry later)
    │   ├── Timeout                  no answer in time (it may still have happened)
    │   ├── Refused                  the server said no; ``reason`` is its words
    │   ├── NotFound                 no such message, key, stream or consumer
    │   └── Conflict                 a compare-and-set expected another revision
    ├── KeyringError                the keyring could not be read or written
    ├── TransientError              raised by a handler: redeliver the message later
    └── VerificationError           an envelope was rejected; ``reason`` is stable
        ├── Foreign                  foreign
        ├── TooLarge                 too_large
        ├── Malformed                malformed
        │   └── MalformedPayload     malformed (a JSON/msgpack body over a bound; see bus._payload)
        ├── UnsupportedVersion       unsupported_version
        ├── MissingSignature         missing_signature
        ├── UnknownKey               unknown_key
        ├── UntrustedKey             untrusted_key
        ├── SenderMismatch           sender_mismatch
        ├── KeyNotYetValid           key_not_yet_valid
        ├── RevokedKey               revoked_key
        ├── BadSignature             bad_signature
        ├── Skew                     skew
        ├── Replayed                 replayed
        ├── NotMediated              not_mediated
        └── BadCountersignature      bad_countersignature

A reason code is what the ledger records and what an operator filters on: it
never changes once released.
"""

from __future__ import annotations


class BusError(Exception):
    """Base of every error raised by :mod:`bus`."""


class ConfigError(BusError):
    """A name, setting or key file is not acceptable."""


class ServerError(BusError):
    """The embedded nats-server could not be started or stopped."""


class ServerBinaryNotFound(ServerError):
    """No nats-server binary was found."""


class PortInUse(ServerError):
    """The requested port is already taken."""


class TransientError(BusError):
    """Raise from a handler to have the message redelivered later (nak with backoff)."""


class TransportError(BusError):
    """A call to NATS failed; the original nats-py error is the ``__cause__``."""


class Unavailable(TransportError):
    """No server, or no stream leader, answered: retrying later may succeed."""


class StoreFull(Unavailable):
    """The server's JetStream store (or the account's share of it) has no room: nothing was stored.

    It passes once space is freed or the limit raised, so it is an
    :class:`Unavailable`: whoever retries those retries this, and says why.
    """


class Timeout(TransportError):
    """No answer came in time; the request may still have taken effect."""


class Refused(TransportError):
    """The server refused the request (permissions, limits, bad request).

    Attributes:
        reason: the server's own words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(TransportError):
    """No such message, key, stream or consumer."""


class Conflict(TransportError):
    """A compare-and-set found another revision than the one expected: someone wrote first."""


class KeyringError(BusError):
    """The keyring could not be read or written."""


class VerificationError(BusError):
    """An envelope failed verification.

    Attributes:
        reason: stable reason code recorded in the quarantine and the ledger.
    """

    reason: str = "invalid"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail


class Foreign(VerificationError):
    """Not content anyone signed: an empty message, such as the status answer the server stores when a
    request's reply subject points at a stream subject or KV key."""  # noqa: D205, D209

    reason = "foreign"


class TooLarge(VerificationError):
    """The body exceeds the size limit."""

    reason = "too_large"


class Malformed(VerificationError):
    """The body is not a valid msgpack envelope of the current schema."""

    reason = "malformed"


class UnsupportedVersion(VerificationError):
    """The envelope's schema version is not one this code understands."""

    reason = "unsupported_version"


class MissingSignature(VerificationError):
    """No signature or key id header, or an empty one."""

    reason = "missing_signature"


class UnknownKey(VerificationError):
    """The key id is not in the tenant's keyring."""

    reason = "unknown_key"


class UntrustedKey(VerificationError):
    """The key is in the keyring, but its entry is not signed by the tenant admin."""

    reason = "untrusted_key"


class SenderMismatch(VerificationError):
    """The key belongs to someone other than the envelope's ``sender``."""

    reason = "sender_mismatch"


class KeyNotYetValid(VerificationError):
    """The envelope's ``ts`` is before the key's ``valid_from``."""

    reason = "key_not_yet_valid"


class RevokedKey(VerificationError):
    """The key was revoked at or before the envelope's ``ts``."""

    reason = "revoked_key"


class BadSignature(VerificationError):
    """The signature does not verify (strict Ed25519) over the exact bytes."""

    reason = "bad_signature"


class Skew(VerificationError):
    """The sender's ``ts`` is too far from the time the server stored it."""

    reason = "skew"


class Replayed(VerificationError):
    """An envelope with this id was already accepted."""

    reason = "replayed"


class NotMediated(VerificationError):
    """A recipient that accepts only mediated envelopes got one without a countersignature."""

    reason = "not_mediated"


class BadCountersignature(VerificationError):
    """The coordinator's countersignature is invalid or not for this recipient."""

    reason = "bad_countersignature"
