"""The keyring kept in the tenant's KV bucket, read by sequence and followed live, with no consumer.

The bucket is read message by message (``$JS.API.STREAM.MSG.GET`` with
``next_by_subj``), never through a consumer: a push consumer's deliver subject
is not checked against its creator's permissions and lives in the stream's
account, so a user allowed to create one could make the server store keyring
entries on any tenant subject; and an agent, in an account of its own
(:mod:`bus._nats_config`), could not receive push deliveries anyway. Writes to
the bucket (``$KV.<bucket>.<key>``) are followed by a plain subscription, which
only says "read again": what is applied is always read back from the stream.
A missed notice (a reconnect) is caught up by a read every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from trustbus.bus._errors import KeyringError, TransportError
from trustbus.bus._identity import Identity
from trustbus.bus._keyring import (
    KeyGrant,
    Keyring,
    Role,
    SignedGrant,
    decode_grant,
    decode_signed_grant,
    encode_signed_grant,
    sign_grant,
)
from trustbus.bus._provision import pinned_admin_key
from trustbus.bus._signals import cancel_and_wait
from trustbus.bus._stored import unix_ns
from trustbus.bus._subjects import keyring_bucket

log = logging.getLogger("trustbus.keyring")

FOLLOW_INTERVAL_S = 5.0  # a read this often even without a notice (one missed while reconnecting)
_MAX_WINDOW = 64  # message gets in flight at once while loading
_OPERATION = "KV-Operation"  # set on a delete or purge marker


@dataclass(frozen=True, slots=True)
class KeyringRevision:
    """One message of the keyring bucket: a revision of one key (``value`` None for a delete or purge).

    ``stored_ns`` is when the server stored it (unix ns; 0 if unknown): from then on the revision stands.
    """

    seq: int
    key: str
    value: bytes | None
    stored_ns: int = 0


async def read_revisions(js: JetStreamContext, tenant: str, *, after: int = 0) -> list[KeyringRevision]:
    """Every message of the tenant's keyring bucket stored after sequence ``after``, oldest first.

    ``$JS.API.STREAM.MSG.GET.KV_<bucket>`` requests (the first message at or
    after a sequence), until the server has no more: no consumer, so nothing
    the server sends can be pointed at another subject. Requests go out in
    windows of consecutive sequences at once, one first (a catch-up usually
    finds nothing), then twice as many each round up to ``_MAX_WINDOW``.
    """
    bucket = keyring_bucket(tenant)
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."

    async def first_from(seq: int) -> RawStreamMsg | None:
        try:
            return await js.get_msg(stream, seq=seq, subject=f"{prefix}>", next=True)
        except nats.js.errors.NotFoundError:
            return None

    revisions: list[KeyringRevision] = []
    seq, window = after + 1, 1
    try:
        while True:
            # Each answer is the first message at or after its sequence, so together they hold every
            # message from ``seq`` to the highest found; a miss means none is stored from there on.
            found = await asyncio.gather(*(first_from(s) for s in range(seq, seq + window)))
            by_seq = {revision.seq: revision for revision in (_revision(m, prefix) for m in found if m is not None)}
            revisions += [by_seq[s] for s in sorted(by_seq)]
            if not by_seq or None in found:
                return revisions
            seq, window = max(by_seq) + 1, min(2 * window, _MAX_WINDOW)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"cannot read keyring (after sequence {seq - 1}): {exc}") from exc


def _revision(msg: RawStreamMsg, prefix: str) -> KeyringRevision:
    deleted = (msg.headers or {}).get(_OPERATION) is not None
    subject = msg.subject or ""
    stored_ns = unix_ns(msg.time)
    return KeyringRevision(
        seq=msg.seq or 0, key=subject[len(prefix) :], value=None if deleted else msg.data or b"", stored_ns=stored_ns
    )


class KeyringStore:
    """A :class:`Keyring` loaded from KV (with history, so revocations stay sticky) and kept current.

    Use ``async with await KeyringStore.open(js, tenant)`` or call :meth:`aclose`.
    """

    def __init__(self, js: JetStreamContext, keyring: Keyring) -> None:
        """Wrap a loaded keyring; use :meth:`open`."""
        self._js = js
        self.keyring = keyring
        self._applied = 0  # the last bucket sequence read
        self._lock = asyncio.Lock()
        self._notice = asyncio.Event()
        self._subscription: Subscription | None = None
        self._follower: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, js: JetStreamContext, tenant: str, *, follow: bool = True) -> KeyringStore:
        """Load every revision of every key; with ``follow``, apply later writes as they land."""
        admin_key_id = await pinned_admin_key(js, tenant)
        store = cls(js, Keyring(tenant=tenant, admin_key_id=admin_key_id))
        if follow:  # listen before the first read, so no write falls between the two
            store._subscription = await store._listen(tenant)
        try:
            await store.catch_up()
        except BaseException:
            await store.aclose()
            raise
        if follow:
            store._follower = asyncio.create_task(store._follow(), name="keyring-follow")
        return store

    async def _listen(self, tenant: str) -> Subscription:
        async def notice(_: object) -> None:
            self._notice.set()

        try:
            return await self._js._nc.subscribe(f"$KV.{keyring_bucket(tenant)}.>", cb=notice)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise TransportError(f"cannot follow the keyring: {exc}") from exc

    async def catch_up(self) -> None:
        """Read and apply every keyring message stored since the last one read."""
        async with self._lock:
            for revision in await read_revisions(self._js, self.keyring.tenant, after=self._applied):
                self._apply(revision)
                self._applied = revision.seq

    async def _follow(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that
            # arrives as the notice is set, and this loop would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FOLLOW_INTERVAL_S):
                    await self._notice.wait()
            self._notice.clear()
            try:
                await self.catch_up()
            except TransportError as exc:
                log.warning("keyring not read; trying again: %s", exc)

    def _apply(self, revision: KeyringRevision) -> None:
        if revision.value is None:
            return  # deletes and purges do not remove a key from the keyring
        try:
            signed = decode_signed_grant(revision.value)
        except KeyringError as exc:
            log.warning("keyring entry %s seq %s ignored: %s", revision.key, revision.seq, exc)
            return
        if self.keyring.add(revision.key, signed, stored_ns=revision.stored_ns) is None:
            log.warning("keyring entry %s seq %s is not signed by the tenant admin", revision.key, revision.seq)

    async def knowing(self, key_id: str) -> Keyring:
        """The keyring, read again first if ``key_id`` (the signer of something just read) is not in it yet."""
        if key_id and not self.keyring.knows(key_id):
            await self.catch_up()
        return self.keyring

    async def put(self, signed: SignedGrant) -> int:
        """Write a signed grant under its key id; returns the KV revision."""
        grant = self.keyring.add(_key_of(signed), signed, stored_ns=time.time_ns())
        if grant is None:
            raise KeyringError("refusing to store a grant the tenant admin did not sign")
        subject = f"$KV.{keyring_bucket(self.keyring.tenant)}.{grant.key_id}"
        try:
            return (await self._js.publish(subject, encode_signed_grant(signed))).seq
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
        self._closing = True
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await self._subscription.unsubscribe()
        if self._follower is not None:
            await cancel_and_wait(self._follower)

    async def __aenter__(self) -> KeyringStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _key_of(signed: SignedGrant) -> str:
    return decode_grant(signed).key_id
