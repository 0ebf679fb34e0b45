"""The keyring: which key belongs to whom in a tenant, and since and until when.

Every entry is a :class:`KeyGrant` signed by the tenant's admin key. The
keyring is pure (no I/O); :mod:`bus._keyring_store` keeps it in a KV bucket.

Revocation is sticky: once any admin-signed revision of a key carries a
``revoked_at``, a later revision without it (a replayed older grant written by
someone with KV write access) does not un-revoke it. The earliest
``revoked_at`` seen wins.

Every trusted revision is kept with the time the server stored it, so a
message is judged by the grant that stood when it was stored
(``resolve(key_id, at=stored_ns)``): demoting a key today does not turn what
it signed in its old role into a forgery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec
from nacl.exceptions import BadSignatureError

from trustbus.bus._errors import ConfigError, KeyringError, UnknownKey, UntrustedKey
from trustbus.bus._identity import Identity, verify_key
from trustbus.bus._payload import check_msgpack
from trustbus.bus._subjects import check_name

KEYRING_DOMAIN = b"trustbus/v1/keyring\x00"
ADMIN_OWNER = "admin"

Role = Literal["admin", "agent", "coordinator", "ledger", "operator"]


class KeyGrant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the admin vouches for: key ``key_id`` is ``owner``'s, in ``tenant``, from ``valid_from``."""

    v: int = 1
    tenant: str
    key_id: str
    owner: str
    role: Role
    valid_from: int
    revoked_at: int | None = None


class SignedGrant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A grant as stored: its exact encoded bytes and the admin's signature over them."""

    grant: bytes
    signed_by: str
    sig: bytes


_grant_decoder = msgspec.msgpack.Decoder(KeyGrant)
_signed_decoder = msgspec.msgpack.Decoder(SignedGrant)
_encoder = msgspec.msgpack.Encoder()


def sign_grant(grant: KeyGrant, admin: Identity) -> SignedGrant:
    """Sign ``grant`` with the tenant admin's identity."""
    body = _encoder.encode(grant)
    return SignedGrant(grant=body, signed_by=admin.key_id, sig=admin.sign(KEYRING_DOMAIN + body))


def encode_signed_grant(signed: SignedGrant) -> bytes:
    """The KV value of a signed grant."""
    return _encoder.encode(signed)


def decode_signed_grant(value: bytes) -> SignedGrant:
    """Parse a KV value; raises KeyringError if it is not a signed grant."""
    try:
        check_msgpack(value)  # bounded: a value nested deep is refused, not a RecursionError
        return _signed_decoder.decode(value)
    except (msgspec.DecodeError, ValueError) as exc:
        raise KeyringError(f"keyring entry is not a signed grant: {exc}") from exc


def decode_grant(signed: SignedGrant) -> KeyGrant:
    """The grant inside a signed grant, without checking the signature."""
    try:
        check_msgpack(signed.grant)
        return _grant_decoder.decode(signed.grant)
    except (msgspec.DecodeError, ValueError) as exc:
        raise KeyringError(f"keyring entry holds no valid grant: {exc}") from exc


@dataclass
class Keyring:
    """The keys of one tenant, as vouched for by its admin key.

    Args:
        tenant: the tenant name.
        admin_key_id: the admin's key id, the trust anchor (pinned at provisioning).
    """

    tenant: str
    admin_key_id: str
    _trusted: dict[str, KeyGrant] = field(default_factory=dict)
    _untrusted: dict[str, str] = field(default_factory=dict)
    _history: dict[str, list[tuple[int, KeyGrant]]] = field(default_factory=dict)
    _owners: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        check_name(self.tenant, what="tenant")
        try:
            self._admin_verify_key = verify_key(self.admin_key_id)
        except ConfigError as exc:
            raise KeyringError(f"admin key id {self.admin_key_id!r} is not valid: {exc}") from exc

    def add(self, entry_key: str, signed: SignedGrant, *, stored_ns: int = 0) -> KeyGrant | None:
        """Take one KV revision, stored by the server at ``stored_ns`` (0: unknown, as of the start).

        Returns the grant if trusted; records why not otherwise.
        """
        problem = self._check(entry_key, signed)
        if problem is not None:
            if entry_key not in self._trusted:
                self._untrusted[entry_key] = problem
            return None
        grant = decode_grant(signed)
        revisions = self._history.setdefault(grant.key_id, [])
        revisions.append((stored_ns, grant))
        revisions.sort(key=lambda revision: revision[0])  # stable: revisions stored at one time keep their order
        known = self._trusted.get(grant.key_id)
        if known is not None and known.revoked_at is not None:
            if grant.revoked_at is None or grant.revoked_at > known.revoked_at:
                grant = msgspec.structs.replace(grant, revoked_at=known.revoked_at)
        self._trusted[grant.key_id] = grant
        self._untrusted.pop(grant.key_id, None)
        self._owners.add(grant.owner)
        return grant

    def has_owner(self, owner: str) -> bool:
        """Whether ``owner`` has, or had, a trusted key in this keyring."""
        return owner in self._owners

    def _check(self, entry_key: str, signed: SignedGrant) -> str | None:
        if signed.signed_by != self.admin_key_id:
            return f"signed by {signed.signed_by}, not the tenant admin"
        try:
            self._admin_verify_key.verify(KEYRING_DOMAIN + signed.grant, signed.sig)
        except (BadSignatureError, ValueError, TypeError):
            return "admin signature does not verify"
        try:
            grant = decode_grant(signed)
        except KeyringError as exc:
            return str(exc)
        if grant.tenant != self.tenant:
            return f"grant is for tenant {grant.tenant!r}"
        if grant.key_id != entry_key:
            return f"grant for {grant.key_id} stored under {entry_key}"
        return None

    def resolve(self, key_id: str, *, at: int | None = None) -> KeyGrant:
        """The trusted grant for ``key_id``; raises UnknownKey or UntrustedKey.

        With ``at`` (a store time, unix ns): the revision that stood then (the
        last one stored at or before ``at``; the first if none was), so owner,
        role and ``valid_from`` are judged as they were. Revocation stays sticky:
        the earliest ``revoked_at`` of any revision applies whatever ``at`` is.
        """
        grant = self._trusted.get(key_id)
        if grant is not None:
            return grant if at is None else self._as_of(key_id, at, grant.revoked_at)
        problem = self._untrusted.get(key_id)
        if problem is not None:
            raise UntrustedKey(f"key {key_id}: {problem}")
        raise UnknownKey(f"key {key_id} is not in tenant {self.tenant!r}'s keyring")

    def _as_of(self, key_id: str, at: int, revoked_at: int | None) -> KeyGrant:
        revisions = self._history[key_id]
        standing = revisions[0][1]
        for stored_ns, grant in revisions:
            if stored_ns > at:
                break
            standing = grant
        if standing.revoked_at == revoked_at:
            return standing
        return msgspec.structs.replace(standing, revoked_at=revoked_at)

    def knows(self, key_id: str) -> bool:
        """Whether any entry, trusted or not, exists for ``key_id``."""
        return key_id in self._trusted or key_id in self._untrusted

    def grants(self) -> list[KeyGrant]:
        """Every trusted grant, oldest first."""
        return sorted(self._trusted.values(), key=lambda g: (g.valid_from, g.key_id))

    def active_key(self, owner: str, *, now_ns: int) -> KeyGrant | None:
        """The newest key of ``owner`` that is valid at ``now_ns``, if any."""
        live = [
            g
            for g in self._trusted.values()
            if g.owner == owner and g.valid_from <= now_ns and (g.revoked_at is None or g.revoked_at > now_ns)
        ]
        return max(live, key=lambda g: g.valid_from, default=None)
