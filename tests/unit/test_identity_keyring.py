"""Identities, seed files and the keyring's trust rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nkeys
import pytest

from trustbus.bus import ConfigError, Identity, KeyGrant, Keyring, UnknownKey, UntrustedKey, sign_grant, verify_key


def test_seed_file_is_written_0600_and_loads_back(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = identity.save(tmp_path / "keys" / "alice.seed")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).key_id == identity.key_id


def test_seed_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = Identity.generate().save(tmp_path / "a.seed")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Identity.load(path)


def test_existing_seed_file_is_never_overwritten(tmp_path: Path) -> None:
    path = Identity.generate().save(tmp_path / "a.seed")
    with pytest.raises(ConfigError, match="already exists"):
        Identity.generate().save(path)


def test_seed_is_an_nkey_user_seed_with_the_same_public_key() -> None:
    identity = Identity.generate()
    assert identity.nkey_seed.startswith("SU")
    pair = nkeys.from_seed(identity.nkey_seed.encode())
    assert pair.public_key.decode() == identity.key_id
    message = b"nonce"
    verify_key(identity.key_id).verify(message, pair.sign(message))


def test_seed_never_appears_in_repr() -> None:
    identity = Identity.generate()
    assert identity.nkey_seed not in repr(identity)


def test_corrupted_key_id_is_refused() -> None:
    key_id = Identity.generate().key_id
    broken = key_id[:-1] + ("A" if key_id[-1] != "A" else "B")
    with pytest.raises(ConfigError):
        verify_key(broken)


def _keyring() -> tuple[Keyring, Identity]:
    admin = Identity.generate()
    return Keyring(tenant="acme", admin_key_id=admin.key_id), admin


def test_grant_signed_by_admin_is_trusted_and_by_anyone_else_is_not() -> None:
    keyring, admin = _keyring()
    good, bad = Identity.generate(), Identity.generate()
    keyring.add(
        good.key_id,
        sign_grant(KeyGrant(tenant="acme", key_id=good.key_id, owner="a", role="agent", valid_from=0), admin),
    )
    keyring.add(
        bad.key_id, sign_grant(KeyGrant(tenant="acme", key_id=bad.key_id, owner="b", role="agent", valid_from=0), bad)
    )
    assert keyring.resolve(good.key_id).owner == "a"
    with pytest.raises(UntrustedKey):
        keyring.resolve(bad.key_id)
    with pytest.raises(UnknownKey):
        keyring.resolve(Identity.generate().key_id)


def test_grant_for_another_tenant_or_filed_under_another_key_is_untrusted() -> None:
    keyring, admin = _keyring()
    k = Identity.generate()
    keyring.add(
        k.key_id, sign_grant(KeyGrant(tenant="other", key_id=k.key_id, owner="a", role="agent", valid_from=0), admin)
    )
    with pytest.raises(UntrustedKey, match="tenant"):
        keyring.resolve(k.key_id)
    k2 = Identity.generate()
    keyring.add(
        k2.key_id, sign_grant(KeyGrant(tenant="acme", key_id=k.key_id, owner="a", role="agent", valid_from=0), admin)
    )
    with pytest.raises(UntrustedKey, match="stored under"):
        keyring.resolve(k2.key_id)


def test_revocation_is_sticky_against_a_replayed_older_grant() -> None:
    keyring, admin = _keyring()
    k = Identity.generate()
    original = sign_grant(KeyGrant(tenant="acme", key_id=k.key_id, owner="a", role="agent", valid_from=0), admin)
    revoked = sign_grant(
        KeyGrant(tenant="acme", key_id=k.key_id, owner="a", role="agent", valid_from=0, revoked_at=100), admin
    )
    keyring.add(k.key_id, original)
    keyring.add(k.key_id, revoked)
    keyring.add(k.key_id, original)  # an attacker with KV write access re-puts the old grant
    assert keyring.resolve(k.key_id).revoked_at == 100


def test_active_key_is_the_newest_valid_one() -> None:
    keyring, admin = _keyring()
    old, new = Identity.generate(), Identity.generate()
    keyring.add(
        old.key_id,
        sign_grant(
            KeyGrant(tenant="acme", key_id=old.key_id, owner="a", role="agent", valid_from=0, revoked_at=50), admin
        ),
    )
    keyring.add(
        new.key_id,
        sign_grant(KeyGrant(tenant="acme", key_id=new.key_id, owner="a", role="agent", valid_from=50), admin),
    )
    assert keyring.active_key("a", now_ns=10).key_id == old.key_id  # type: ignore[union-attr]
    assert keyring.active_key("a", now_ns=60).key_id == new.key_id  # type: ignore[union-attr]
