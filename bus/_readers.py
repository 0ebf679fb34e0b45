"""Reading a tenant's whole stream a batch at a time, and its keyring, with no durable consumer.

The stream is read through an ephemeral pull consumer: a pull never outruns
the reader, whereas a push subscription drops messages client-side once its
pending limit is reached (silently, in nats-py), which would make gaps look
like tampering. While a cluster elects a leader (a 503, no responders, a
timeout) reading resumes with a new consumer from where it stopped, for up to
:data:`~bus._publisher.UNAVAILABLE_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from trustbus.bus._admin import connect_nats
from trustbus.bus._errors import ConfigError, NotFound, TransportError
from trustbus.bus._keyring import Keyring
from trustbus.bus._keyring_store import KeyringRevision, KeyringStore, read_revisions
from trustbus.bus._provision import pinned_admin_key
from trustbus.bus._publisher import UNAVAILABLE_S
from trustbus.bus._stored import StoredMessage, stored_message
from trustbus.bus._subjects import all_subjects, stream_name
from trustbus.bus._translate import NATS_ERRORS, translated, unavailable

log = logging.getLogger("trustbus.bus")

FETCH = 1000
_PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # between attempts while a stream or consumer elects a leader


class TenantReader:
    """Read-only access to one tenant's stored history: its stream, whole or a batch at a time, and its keyring.

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
    async def connect(cls, servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None) -> TenantReader:
        """A reader over a connection of its own (see :func:`bus.connect_nats`)."""
        nc = await connect_nats(servers, nkey_seed=nkey_seed)
        return cls(nc.jetstream(), tenant, owns=nc)

    async def aclose(self) -> None:
        """Close the connection the reader made, if it made one."""
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()

    async def __aenter__(self) -> TenantReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def last_seq(self) -> int:
        """The stream's last sequence now, asked again while the stream elects a leader (as :meth:`batches`).

        Raises:
            ConfigError: the tenant is not provisioned.
            TransportError: the stream cannot be read.
        """
        deadline: float | None = None
        pauses = iter(_PAUSES_S)
        while True:
            try:
                return (await self._js.stream_info(self.stream)).state.last_seq
            except NATS_ERRORS as exc:
                error = translated(exc, f"read the state of {self.stream}")
                if isinstance(error, NotFound):
                    raise ConfigError(f"tenant {self.tenant!r} is not provisioned") from exc
                deadline = deadline or time.monotonic() + UNAVAILABLE_S
                if not _electing(exc) or time.monotonic() > deadline:
                    raise error from exc
                await asyncio.sleep(next(pauses, _PAUSES_S[-1]))

    async def batches(
        self, *, last: int, from_seq: int = 1, only: Sequence[str] = ()
    ) -> AsyncGenerator[list[StoredMessage], None]:
        """The messages from ``from_seq`` through ``last``, in order, a fetched batch at a time.

        Args:
            last: the last sequence to read (the stream's last sequence when the read began, say).
            from_seq: the first sequence.
            only: read only messages on these subjects (default: all).

        Raises:
            TransportError: the stream cannot be read, or reading stalled for longer than a leader election.
        """
        start = from_seq
        deadline: float | None = None
        pauses = iter(_PAUSES_S)
        while start <= last:
            try:
                async for batch in self._read(start=start, last=last, only=only):
                    start = batch[-1].seq + 1
                    deadline, pauses = None, iter(_PAUSES_S)
                    yield batch
                return
            except NATS_ERRORS as exc:
                if not _electing(exc):
                    raise TransportError(f"cannot read {self.stream}: {exc}") from exc
                deadline = deadline or time.monotonic() + UNAVAILABLE_S
                if time.monotonic() > deadline:
                    raise TransportError(f"reading {self.stream} stalled after sequence {start - 1}: {exc}") from exc
                log.warning(
                    "stream unavailable while reading it (leader election?); reading on", extra={"stream": self.stream}
                )
                await asyncio.sleep(next(pauses, _PAUSES_S[-1]))

    async def _read(self, *, start: int, last: int, only: Sequence[str]) -> AsyncGenerator[list[StoredMessage], None]:
        """Batches from ``start`` through ``last`` through one ephemeral consumer; raises on any error."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            filter_subjects=list(only) or None,
        )
        sub = await self._js.pull_subscribe(all_subjects(self.tenant), stream=self.stream, config=config)
        try:
            if only and not (await sub.consumer_info()).num_pending:
                return  # nothing on these subjects
            while True:
                batch: list[StoredMessage] = []
                done = False
                for msg in await sub.fetch(FETCH, timeout=10):
                    m = stored_message(msg)
                    if m.seq > last:
                        done = True
                        break
                    batch.append(m)
                    done = m.seq == last or (bool(only) and msg.metadata.num_pending == 0)
                if batch:
                    yield batch
                if done:
                    return
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

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


def _electing(exc: BaseException) -> bool:
    """Whether a failed read may succeed if tried again shortly: no leader answered, or none in time."""
    return unavailable(exc) or isinstance(exc, TimeoutError | nats.errors.TimeoutError)
