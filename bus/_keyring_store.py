"""The keyring kept in the tenant's KV bucket, followed live."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus._errors import KeyringError, TransportError
from bus._identity import Identity
from bus._keyring import (
    KeyGrant,
    Keyring,
    Role,
    SignedGrant,
    decode_grant,
    decode_signed_grant,
    encode_signed_grant,
    sign_grant,
)
from bus._provision import pinned_admin_key
from bus._subjects import keyring_bucket

log = logging.getLogger("trustbus.keyring")


async def history_watcher(kv: KeyValue) -> KeyValue.KeyWatcher:
    """A watcher of every revision of every key of ``kv``."""
    try:
        return await kv.watchall(include_history=True)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"cannot read keyring: {exc}") from exc


async def stored_entries(watcher: KeyValue.KeyWatcher, stored: int) -> list[KeyValue.Entry]:
    """The entries a history watcher delivers first: at least ``stored``, however early it says it is done.

    nats-py's "initial values done" marker comes from the consumer's pending
    count, which can read 0 while the entries are still in flight (seen under
    load: a keyring loaded empty, and every signature then failed as
    ``unknown_key``); so the count of messages the bucket stores decides.
    """
    entries: list[KeyValue.Entry] = []
    marked = False  # the watcher said it was done (perhaps before the entries: then the count decides)
    try:
        while not (marked and len(entries) >= stored):
            entry = await watcher.updates(timeout=10.0)  # type: ignore[no-untyped-call]
            if entry is None:
                marked = True
            else:
                entries.append(entry)
        return entries
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"cannot read keyring ({len(entries)} of {stored} entries): {exc}") from exc


def entry_stored_ns(entry: KeyValue.Entry) -> int:
    """When the server stored a KV revision (unix ns; 0 if the client did not say)."""
    created: object = entry.created  # nats-py types it int, but hands the message's datetime
    if isinstance(created, datetime):
        return int(created.timestamp() * 1_000_000_000)
    return created if isinstance(created, int) else 0


class KeyringStore:
    """A :class:`Keyring` loaded from KV (with history, so revocations stay sticky) and kept current.

    Use ``async with await KeyringStore.open(js, tenant)`` or call :meth:`aclose`.
    """

    def __init__(self, kv: KeyValue, keyring: Keyring) -> None:
        """Wrap an opened bucket; use :meth:`open`."""
        self._kv = kv
        self.keyring = keyring
        self._follower: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    @classmethod
    async def open(cls, js: JetStreamContext, tenant: str, *, follow: bool = True) -> KeyringStore:
        """Load every revision of every key; with ``follow``, apply later writes as they land."""
        admin_key_id = await pinned_admin_key(js, tenant)
        try:
            kv = await js.key_value(keyring_bucket(tenant))
            stored = (await js.stream_info(f"KV_{keyring_bucket(tenant)}")).state.messages
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot open keyring bucket: {exc}") from exc
        store = cls(kv, Keyring(tenant=tenant, admin_key_id=admin_key_id))
        await store._load(follow=follow, stored=stored)
        return store

    async def _load(self, *, follow: bool, stored: int) -> None:
        watcher = await history_watcher(self._kv)
        for entry in await stored_entries(watcher, stored):
            self._apply(entry)
        if follow:
            self._watcher = watcher
            self._follower = asyncio.create_task(self._follow(watcher), name="keyring-follow")
        else:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.value is None or entry.operation is not None:
            return  # deletes and purges do not remove a key from the keyring
        try:
            signed = decode_signed_grant(entry.value)
        except KeyringError as exc:
            log.warning("keyring entry %s rev %s ignored: %s", entry.key, entry.revision, exc)
            return
        if self.keyring.add(entry.key, signed, stored_ns=entry_stored_ns(entry)) is None:
            log.warning("keyring entry %s rev %s is not signed by the tenant admin", entry.key, entry.revision)

    async def refresh_key(self, key_id: str) -> None:
        """Read one key's history now (for a key registered after the keyring was loaded)."""
        try:
            entries = await self._kv.history(key_id)
        except nats.js.errors.NoKeysError:
            return
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot read keyring entry {key_id}: {exc}") from exc
        for entry in entries:
            self._apply(entry)

    async def put(self, signed: SignedGrant) -> int:
        """Write a signed grant under its key id; returns the KV revision.

        It stands in this store's keyring from now (this clock); a follower
        reading it back takes the server's store time.
        """
        grant = self.keyring.add(_key_of(signed), signed, stored_ns=time.time_ns())
        if grant is None:
            raise KeyringError("refusing to store a grant the tenant admin did not sign")
        try:
            return await self._kv.put(grant.key_id, encode_signed_grant(signed))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot write keyring entry: {exc}") from exc

    async def grant(self, admin: Identity, *, key_id: str, owner: str, role: Role, valid_from: int) -> KeyGrant:
        """Register ``key_id`` as ``owner``'s, signed by ``admin``."""
        grant = KeyGrant(tenant=self.keyring.tenant, key_id=key_id, owner=owner, role=role, valid_from=valid_from)
        await self.put(sign_grant(grant, admin))
        return self.keyring.resolve(key_id)

    async def revoke(self, admin: Identity, key_id: str, *, at: int) -> KeyGrant:
        """Mark ``key_id`` revoked from ``at`` (unix ns); envelopes signed before stay valid."""
        current = self.keyring.resolve(key_id)
        if current.revoked_at is not None and current.revoked_at <= at:
            return current
        revoked = KeyGrant(
            tenant=current.tenant,
            key_id=current.key_id,
            owner=current.owner,
            role=current.role,
            valid_from=current.valid_from,
            revoked_at=at,
        )
        await self.put(sign_grant(revoked, admin))
        return self.keyring.resolve(key_id)

    async def aclose(self) -> None:
        """Stop following the bucket."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            except (nats.errors.Error, nats.js.errors.Error):
                pass
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    async def __aenter__(self) -> KeyringStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _key_of(signed: SignedGrant) -> str:
    return decode_grant(signed).key_id
