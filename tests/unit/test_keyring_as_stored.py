"""The keyring judged as it stood: each key's revision in force at a message's store time."""

from __future__ import annotations

from trustbus.bus import Identity, KeyGrant, Keyring, sign_grant

T = "acme"


def _grant(key: Identity, *, role: str, revoked_at: int | None = None) -> KeyGrant:
    return KeyGrant(tenant=T, key_id=key.key_id, owner="coord", role=role, valid_from=100, revoked_at=revoked_at)  # type: ignore[arg-type]


def test_a_demotion_stands_only_from_its_store_time() -> None:
    admin, key = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    keyring.add(key.key_id, sign_grant(_grant(key, role="coordinator"), admin), stored_ns=1_000)
    keyring.add(key.key_id, sign_grant(_grant(key, role="agent"), admin), stored_ns=5_000)
    assert keyring.resolve(key.key_id).role == "agent"  # today
    assert keyring.resolve(key.key_id, at=4_999).role == "coordinator"
    assert keyring.resolve(key.key_id, at=5_000).role == "agent"
    assert keyring.resolve(key.key_id, at=10).role == "coordinator"  # before any revision: the first


def test_revocation_stays_sticky_whatever_the_store_time() -> None:
    """A replayed older grant without ``revoked_at`` does not un-revoke, before or after it was stored."""
    admin, key = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    keyring.add(key.key_id, sign_grant(_grant(key, role="coordinator"), admin), stored_ns=1_000)
    keyring.add(key.key_id, sign_grant(_grant(key, role="coordinator", revoked_at=3_000), admin), stored_ns=3_000)
    keyring.add(key.key_id, sign_grant(_grant(key, role="coordinator"), admin), stored_ns=6_000)
    for at in (None, 2_000, 4_000, 7_000):
        assert keyring.resolve(key.key_id, at=at).revoked_at == 3_000


def test_revisions_without_a_store_time_resolve_as_today() -> None:
    """A bundle written before store times were kept: the last revision stands, as it always did."""
    admin, key = Identity.generate(), Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    keyring.add(key.key_id, sign_grant(_grant(key, role="coordinator"), admin))
    keyring.add(key.key_id, sign_grant(_grant(key, role="agent"), admin))
    assert keyring.resolve(key.key_id, at=123).role == keyring.resolve(key.key_id).role == "agent"
