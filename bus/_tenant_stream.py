"""One tenant's stream, for a client with no identity of its own: read, follow, publish what someone sealed.

It is read whole or a batch at a time, followed verified, and its keyring read;
one subject of it is read as a :class:`~bus.SubjectLog` (an operator's view of
the decision log). Its connection gives up reconnecting after a bounded number
of attempts, as a command's should (:func:`bus._admin.connect_nats`).

The stream is read through ephemeral pull consumers (:func:`bus._in_order.read_in_order`).
While a cluster elects a leader, asking for the stream's state is retried for up to
:data:`~bus._publisher.UNAVAILABLE_S` seconds, as reading it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence

from nats.aio.client import Client
from nats.js import JetStreamContext

from trustbus.bus._admin import connect_nats
from trustbus.bus._api import tenant_jetstream
from trustbus.bus._bucket import NatsBucket
from trustbus.bus._errors import ConfigError, NotFound
from trustbus.bus._in_order import PAUSES_S, Start, electing, read_in_order
from trustbus.bus._keyring import Keyring
from trustbus.bus._keyring_store import KeyringRevision, KeyringStore, read_revisions
from trustbus.bus._log import NatsSubjectLog
from trustbus.bus._metrics import ConsumerLag
from trustbus.bus._provision import pinned_admin_key, tenant_partitions
from trustbus.bus._publisher import UNAVAILABLE_S
from trustbus.bus._seal import Sealed
from trustbus.bus._stored import StoredMessage, stored_message
from trustbus.bus._stores import Appended, Bucket, SubjectLog
from trustbus.bus._subjects import all_subjects, outbox, partition_of, stream_name
from trustbus.bus._tail import TailItem, tail
from trustbus.bus._translate import NATS_ERRORS, translated

PUBLISH_TIMEOUT_S = 5.0


class TenantStream:
    """One tenant's stream: its history and keyring to read, and envelopes sealed by any key to publish.

    Publishing is the operator's ``send``: to whatever subjects the server allows the connection.

    Make one over an open JetStream context, or with :meth:`connect` (then use it
    as an async context manager, or call :meth:`aclose`).
    """

    def __init__(self, js: JetStreamContext, tenant: str, *, owns: Client | None = None) -> None:
        """Read ``tenant`` through ``js``; ``owns``: a connection to close with the reader."""
        self._js = js
        self.tenant = tenant
        self.stream = stream_name(tenant)
        self._nc = owns

    @classmethod
    async def connect(
        cls, servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None, inbox_prefix: str | None = None
    ) -> TenantStream:
        """A reader over a connection of its own, reaching the tenant's stream from its user's account.

        Args:
            servers: the server URLs (an item may hold several, separated by commas).
            tenant: the tenant.
            nkey_seed: authenticate as this nkey user; anonymous without it.
            inbox_prefix: reply-subject prefix (under a rendered config, every user but the
                admin receives replies only under its own: :func:`bus.subjects.reply_prefix`).
        """
        nc = await connect_nats(servers, nkey_seed=nkey_seed, inbox_prefix=inbox_prefix)
        try:
            js = await tenant_jetstream(nc, tenant)
        except BaseException:
            await nc.close()
            raise
        return cls(js, tenant, owns=nc)

    async def aclose(self) -> None:
        """Close the connection the reader made, if it made one."""
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()

    async def __aenter__(self) -> TenantStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def last_seq(self) -> int:
        """The stream's last sequence now, asked again while the stream elects a leader (as :meth:`batches`).

        Raises:
            ConfigError: the tenant is not provisioned.
            TransportError: the stream cannot be read.
        """
        return (await self.span())[1]

    async def span(self) -> tuple[int, int]:
        """The stream's first and last sequence now (the first is above 1 once older history was purged); as
        :meth:`last_seq`."""  # noqa: D205, D209
        deadline: float | None = None
        pauses = iter(PAUSES_S)
        while True:
            try:
                state = (await self._js.stream_info(self.stream)).state
                return state.first_seq, state.last_seq
            except NATS_ERRORS as exc:
                error = translated(exc, f"read the state of {self.stream}")
                if isinstance(error, NotFound):
                    raise ConfigError(f"tenant {self.tenant!r} is not provisioned") from exc
                deadline = deadline or time.monotonic() + UNAVAILABLE_S
                if not electing(exc) or time.monotonic() > deadline:
                    raise error from exc
                await asyncio.sleep(next(pauses, PAUSES_S[-1]))

    async def batches(
        self, *, last: int, from_seq: int = 1, only: Sequence[str] = ()
    ) -> AsyncGenerator[list[StoredMessage], None]:
        """The messages from ``from_seq`` through ``last``, in order, a fetched batch at a time, none skipped.

        Args:
            last: the last sequence to read (the stream's last sequence when the read began, say).
            from_seq: the first sequence.
            only: read only messages on these subjects (default: all).

        Raises:
            TransportError: the stream cannot be read, or reading stalled for longer than a leader election.
        """
        subjects = list(only) or [all_subjects(self.tenant)]
        reading = read_in_order(self._js, self.stream, subjects, start=Start(seq=from_seq), last=last)
        async with contextlib.aclosing(reading):
            async for msgs in reading:
                yield [stored_message(msg) for msg in msgs]

    async def first_stored_at(self, stored_ns: int) -> int:
        """The sequence of the first message stored at or after ``stored_ns`` (unix ns); the next one if none is."""
        last = await self.last_seq()
        reading = read_in_order(self._js, self.stream, [all_subjects(self.tenant)], start=Start(stored_ns=stored_ns),
                                last=last, batch=1)  # fmt: skip
        async with contextlib.aclosing(reading):
            async for msgs in reading:
                return int(msgs[0].metadata.sequence.stream) if msgs else last + 1
        return last + 1

    def log(self, subject: str) -> SubjectLog:
        """The records of the stream on ``subject``, read record by record (a wildcard reads several logs)."""
        return NatsSubjectLog(self._js, self._js._nc, self.stream, subject)

    def bucket(self, name: str) -> Bucket:
        """The tenant's KV bucket ``name``, to read (what the server lets this connection read)."""
        return NatsBucket(self._js, name)

    async def consumer_lag(self, prefix: str = "") -> dict[str, ConsumerLag]:
        """How far behind each consumer of the stream whose name starts with ``prefix`` is, by name."""
        try:
            infos = await self._js.consumers_info(self.stream)
        except NATS_ERRORS as exc:
            raise translated(exc, f"list the consumers of {self.stream}") from exc
        return {
            info.name: ConsumerLag(info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)
            for info in sorted(infos, key=lambda info: info.name)
            if info.name.startswith(prefix)
        }

    async def still_needed(self) -> dict[str, int]:
        """Each durable consumer with messages it has not settled, by name: the first sequence it may still need.

        That is the sequence after its ack floor while it has messages delivered and not acked, else after the
        last it was delivered while messages wait for it; a consumer with neither needs nothing.
        """
        try:
            infos = await self._js.consumers_info(self.stream)
        except NATS_ERRORS as exc:
            raise translated(exc, f"list the consumers of {self.stream}") from exc
        needed = {}
        for info in infos:
            if info.num_ack_pending:
                needed[info.name] = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
            elif info.num_pending:
                needed[info.name] = (info.delivered.stream_seq if info.delivered else 0) + 1
        return needed

    async def purge_before(self, seq: int) -> None:
        """Remove every message of the stream below ``seq`` (the admin's right alone).

        Raises:
            Refused: the server said no; a tenant stream provisioned without ``purgeable`` denies every purge,
                and nats-server cannot lift that later.
        """
        try:
            await self._js.purge_stream(self.stream, seq=seq)
        except NATS_ERRORS as exc:
            raise translated(exc, f"purge {self.stream} below sequence {seq}") from exc

    async def partitions(self) -> int:
        """How many partitions the tenant has."""
        return await tenant_partitions(self._js, self.tenant)

    async def partition(self, correlation_id: str) -> int:
        """The partition of ``correlation_id`` in this tenant."""
        return partition_of(correlation_id, await self.partitions())

    async def outbox(self, sender: str, correlation_id: str) -> str:
        """``sender``'s outbox for ``correlation_id``: the partition of that correlation in this tenant."""
        return outbox(self.tenant, sender, await self.partition(correlation_id))

    async def publish(self, subject: str, sealed: Sealed) -> Appended:
        """Publish ``sealed`` to ``subject`` and wait for the stream's ack (``duplicate`` if it had that id)."""
        try:
            ack = await self._js.publish(subject, sealed.body, headers=dict(sealed.headers), timeout=PUBLISH_TIMEOUT_S)
        except NATS_ERRORS as exc:
            raise translated(exc, f"publish to {subject}") from exc
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def tail(
        self,
        *,
        subject: str | None = None,
        from_seq: int | None = None,
        new_only: bool = False,
        idle_timeout_s: float | None = None,
    ) -> AsyncGenerator[TailItem, None]:
        """Every message of the stream, verified against the tenant's keyring, in order (see :func:`bus.tail`)."""
        async with await KeyringStore.open(self._js, self.tenant) as keyring:
            async for item in tail(
                self._js,
                keyring,
                self.tenant,
                subject=subject,
                from_seq=from_seq,
                new_only=new_only,
                idle_timeout_s=idle_timeout_s,
            ):
                yield item

    async def admin_key(self) -> str:
        """The admin key id pinned in the tenant's stream (see :func:`bus.pinned_admin_key`)."""
        return await pinned_admin_key(self._js, self.tenant)

    async def keyring_revisions(self) -> list[KeyringRevision]:
        """Every message of the keyring bucket, oldest first, with its store time (deletes have no value)."""
        return await read_revisions(self._js, self.tenant)

    async def keyring(self) -> Keyring:
        """The tenant's keyring as it stands now (read once, not followed)."""
        async with await KeyringStore.open(self._js, self.tenant, follow=False) as store:
            return store.keyring

    async def follow_keyring(self) -> KeyringStore:
        """The tenant's keyring, kept current as keys are written until the store is closed."""
        return await KeyringStore.open(self._js, self.tenant)
