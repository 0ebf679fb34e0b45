"""Tenant administration: seed files on disk, tenant initialisation, key issue, rotation, revocation."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS

from trustbus.bus import _client
from trustbus.bus._connection import connect_options, redacted, split_servers
from trustbus.bus._errors import ConfigError, Refused, Unavailable, VerificationError
from trustbus.bus._identity import Identity
from trustbus.bus._keyring import ADMIN_OWNER, KeyGrant, Role
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._provision import ProvisionReport, pinned_admin_key, provision
from trustbus.bus._subjects import check_name

KEYS_ENV = "TRUSTBUS_KEYS"

log = logging.getLogger("trustbus.admin")


def default_keys_dir() -> Path:
    """``$TRUSTBUS_KEYS``, else ``~/.trustbus/keys``."""
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".trustbus" / "keys")


def wrong_role(tenant: str, owner: str, has: str, needs: Role) -> str:
    """What to say when ``owner``'s key has role ``has`` where ``needs`` is required, and the command that fixes it."""
    return (
        f"the key of {owner!r} has role {has!r}, not {needs!r}: give {owner!r} a {needs} key with "
        f"`trustbus keys rotate --tenant {tenant} --owner {owner} --role {needs}`"
    )


@dataclass(frozen=True)
class KeyDirectory:
    """Where seed files live: ``<root>/<tenant>/<owner>.seed``, mode 0600, dirs 0700."""

    root: Path

    def path(self, tenant: str, owner: str) -> Path:
        """The seed file of ``owner`` in ``tenant``."""
        return self.root / check_name(tenant, what="tenant") / f"{check_name(owner, what='owner')}.seed"

    def load(self, tenant: str, owner: str, *, role: Role | None = None) -> Identity:
        """Read ``owner``'s seed; a clear error names the command that makes one (with ``role``, the role it needs)."""
        path = self.path(tenant, owner)
        if not path.exists():
            if owner == ADMIN_OWNER:
                raise ConfigError(
                    f"no admin key for tenant {tenant!r} at {path}: run `trustbus init --tenant {tenant}` "
                    "(it makes the tenant and its admin key)"
                )
            raise ConfigError(
                f"no key for {owner!r} in tenant {tenant!r} at {path}: "
                f"run `trustbus keys new --tenant {tenant} --owner {owner} --role {role or 'ROLE'}`"
            )
        return Identity.load(path)

    def create(self, tenant: str, owner: str) -> Identity:
        """Generate and save a new seed for ``owner``; refuses to overwrite."""
        identity = Identity.generate()
        identity.save(self.path(tenant, owner))
        return identity

    def admin(self, tenant: str) -> Identity:
        """The tenant admin's seed, generated and saved on first use (the key `trustbus init` pins)."""
        path = self.path(tenant, ADMIN_OWNER)
        return Identity.load(path) if path.exists() else self.create(tenant, ADMIN_OWNER)

    def replace(self, tenant: str, owner: str, identity: Identity) -> None:
        """Atomically replace ``owner``'s seed file with ``identity``'s."""
        path = self.path(tenant, owner)
        staged = path.with_suffix(".seed.new")
        staged.unlink(missing_ok=True)
        identity.save(staged)
        os.replace(staged, path)


INITIAL_ATTEMPTS = 2  # per server, before a short command says it cannot connect


async def connect_nats(
    servers: Sequence[str], *, nkey_seed: str | None = None, inbox_prefix: str | None = None
) -> NATS:
    """A plain NATS connection for administrative and read-only commands.

    It reconnects to any of ``servers`` (a cluster's) if its server goes away,
    and gives up after a bounded number of attempts (see :mod:`bus._connection`).

    Args:
        servers: the server URLs (an item may hold several, separated by commas).
        nkey_seed: authenticate as this nkey user (``SU...``); anonymous (or
            credentials in the URL) without it. Never logged.
        inbox_prefix: reply-subject prefix; under a rendered config every user
            but the admin receives replies only under its own
            (:func:`bus.subjects.reply_prefix`).
    """
    errors: list[Exception] = []
    options = connect_options(servers, long_running=False)  # a URL that is not a NATS one is refused here
    urls = split_servers(servers)
    shown = ", ".join(redacted(url) for url in urls)
    connecting = True

    async def on_error(exc: Exception) -> None:
        # Raised out of nats-py's connect loop, which would otherwise try each server
        # SHORT_RECONNECT_ATTEMPTS times: refused credentials are refused again, and a
        # command whose servers all failed twice says so (the reason is in the error, once).
        errors.append(exc)
        log.debug("nats error: %s", exc)
        if not connecting:
            return
        if "authorization violation" in str(exc).lower():
            raise Refused(
                f"cannot connect to {shown}: the server refused these credentials "
                "(use --nkey with a seed its config lists)"
            )
        if len(errors) >= INITIAL_ATTEMPTS * len(urls):
            raise Unavailable(f"cannot connect to {shown}: {exc} (is `trustbus up` running? set --server or NATS_URL)")

    try:
        client = await _client.connect(
            **options,
            connect_timeout=5,
            nkeys_seed_str=nkey_seed,
            inbox_prefix=(inbox_prefix or "_INBOX").encode(),
            error_cb=on_error,
        )
    except (nats.errors.Error, OSError) as exc:
        cause = errors[-1] if errors else exc
        raise Unavailable(
            f"cannot connect to {shown}: {cause} (is `trustbus up` running? set --server or NATS_URL)"
        ) from exc
    connecting = False
    return client


MAX_REPLICAS = 3


def cluster_size(nc: NATS) -> int:
    """How many servers the connected server's cluster has (1 for a lone server).

    Read from the ``connect_urls`` of the server's INFO: every node's client
    URL, its own included. A cluster configured with ``no_advertise`` sends
    none and counts as 1 here: give the replicas explicitly there.
    """
    info: dict[str, object] = getattr(nc, "_server_info", {}) or {}
    urls = info.get("connect_urls") or []
    return max(1, len(set(urls))) if isinstance(urls, list) else 1


def default_replicas(nc: NATS) -> int:
    """Replicas for a tenant's stream and buckets: the cluster size, at most 3 (R3 tolerates one lost node)."""
    return min(MAX_REPLICAS, cluster_size(nc))


async def init_tenant(
    servers: Sequence[str],
    tenant: str,
    *,
    keys: KeyDirectory,
    replicas: int | None = None,
    partitions: int | None = None,
    purgeable: bool | None = None,
    nkey_seed: str | None = None,
) -> tuple[ProvisionReport, KeyGrant]:
    """Provision the tenant's stream and buckets and register its admin key; idempotent.

    The admin seed is created on first use and pinned in the stream as the
    keyring's trust anchor. Without ``replicas``, the stream and buckets get
    one replica per server of the cluster, at most 3 (:func:`default_replicas`);
    the report says how many. ``partitions`` (default 1, fixed once the tenant
    exists) is how many coordinator processes can share the tenant's work.
    ``purgeable``: archived history may be purged (see :func:`provision`).
    ``nkey_seed`` authenticates the connection (see
    :func:`connect_nats`).
    """
    admin = keys.admin(tenant)
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        wanted = replicas if replicas is not None else default_replicas(nc)
        report = await provision(
            js, tenant, admin_key_id=admin.key_id, replicas=wanted, partitions=partitions, purgeable=purgeable
        )
        async with await KeyringStore.open(js, tenant, follow=False) as store:
            try:
                grant = store.keyring.resolve(admin.key_id)
            except VerificationError:
                grant = await store.grant(
                    admin, key_id=admin.key_id, owner=ADMIN_OWNER, role="admin", valid_from=time.time_ns()
                )
        return report, grant
    finally:
        await nc.close()


async def new_key(
    servers: Sequence[str], tenant: str, owner: str, *, role: Role, keys: KeyDirectory, nkey_seed: str | None = None
) -> KeyGrant:
    """Create ``owner``'s seed file and register its key, signed by the tenant admin.

    ``nkey_seed`` authenticates the connection (see :func:`connect_nats`).
    """
    admin = keys.load(tenant, ADMIN_OWNER)
    if keys.path(tenant, owner).exists():
        raise ConfigError(
            f"{owner!r} already has a key in tenant {tenant!r} ({keys.path(tenant, owner)}): to replace it, "
            f"`trustbus keys rotate --tenant {tenant} --owner {owner}` (with `--role {role}` to give it that role)"
        )
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        async with await KeyringStore.open(nc.jetstream(), tenant, follow=False) as store:
            identity = keys.create(tenant, owner)
            return await store.grant(admin, key_id=identity.key_id, owner=owner, role=role, valid_from=time.time_ns())
    finally:
        await nc.close()


_ANCHOR = (
    "the tenant admin key is the keyring's trust anchor, pinned in the tenant's stream: it cannot be rotated or "
    "revoked with `keys` (see docs/OPERATIONS.md, Keys)"
)


async def rotate_key(
    servers: Sequence[str],
    tenant: str,
    owner: str,
    *,
    keys: KeyDirectory,
    role: Role | None = None,
    nkey_seed: str | None = None,
) -> tuple[KeyGrant | None, KeyGrant]:
    """Issue ``owner`` a new key (with ``role``, else the old key's) and revoke the old one from now.

    Returns (old, new). Envelopes the old key signed before now stay valid in
    replay. A seed whose key the keyring does not know (the server's store was
    replaced) is replaced by a new registered key if ``role`` is given; old is
    None then. ``nkey_seed`` authenticates the connection (see :func:`connect_nats`).
    """
    if owner == ADMIN_OWNER:
        raise ConfigError(_ANCHOR)
    admin = keys.load(tenant, ADMIN_OWNER)
    old_identity = keys.load(tenant, owner, role=role)
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        async with await KeyringStore.open(nc.jetstream(), tenant, follow=False) as store:
            old = store.keyring.resolve(old_identity.key_id) if store.keyring.knows(old_identity.key_id) else None
            if old is not None:
                new_role = role or old.role
            elif role is not None:
                new_role = role
            else:
                raise ConfigError(
                    f"the key of {owner!r} ({old_identity.key_id}) is not in tenant {tenant!r}'s keyring (was the "
                    f"server's store replaced?): register a new one with "
                    f"`trustbus keys rotate --tenant {tenant} --owner {owner} --role ROLE`"
                )
            fresh = Identity.generate()
            now = time.time_ns()
            new = await store.grant(admin, key_id=fresh.key_id, owner=owner, role=new_role, valid_from=now)
            keys.replace(tenant, owner, fresh)
            if old is not None:
                old = await store.revoke(admin, old.key_id, at=now)
            return old, new
    finally:
        await nc.close()


async def revoke_key(
    servers: Sequence[str], tenant: str, key_id: str, *, keys: KeyDirectory, nkey_seed: str | None = None
) -> KeyGrant:
    """Revoke ``key_id`` from now; ``nkey_seed`` authenticates the connection (see :func:`connect_nats`)."""
    admin = keys.load(tenant, ADMIN_OWNER)
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        if key_id == await pinned_admin_key(js, tenant):
            raise ConfigError(_ANCHOR)
        async with await KeyringStore.open(js, tenant, follow=False) as store:
            return await store.revoke(admin, key_id, at=time.time_ns())
    finally:
        await nc.close()


async def list_keys(servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None) -> list[KeyGrant]:
    """Every trusted grant in the tenant's keyring; ``nkey_seed`` authenticates (see :func:`connect_nats`)."""
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        async with await KeyringStore.open(nc.jetstream(), tenant, follow=False) as store:
            return store.keyring.grants()
    finally:
        await nc.close()
