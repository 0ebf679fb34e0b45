"""An operator's connection to one tenant's stream: publish envelopes someone sealed, follow the stream verified.

Unlike :class:`~bus.Bus` it has no identity of its own: it authenticates with
whatever seed the operator gives (``trustbus --nkey``) and publishes envelopes
sealed by any key at hand, to any subject the server lets it. The CLI's
``send`` and ``tail`` and the demo's running commentary use it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from nats.aio.client import Client as NATS

from trustbus.bus._admin import connect_nats
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._provision import tenant_partitions
from trustbus.bus._seal import Sealed
from trustbus.bus._stores import Appended
from trustbus.bus._subjects import outbox, partition_of, stream_name
from trustbus.bus._tail import TailItem, tail
from trustbus.bus._translate import NATS_ERRORS, translated

PUBLISH_TIMEOUT_S = 5.0


class TenantStream:
    """One plain connection to a tenant's stream; an async context manager.

    Open with :meth:`open`; close with :meth:`aclose`.
    """

    def __init__(self, nc: NATS, tenant: str) -> None:
        """Wrap an open connection; use :meth:`open`."""
        self._nc = nc
        self._js = nc.jetstream()
        self.tenant = tenant

    @classmethod
    async def open(cls, servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None) -> TenantStream:
        """Connect to ``servers`` (authenticated as ``nkey_seed``'s nkey user when given)."""
        return cls(await connect_nats(servers, nkey_seed=nkey_seed), tenant)

    async def outbox(self, sender: str, correlation_id: str) -> str:
        """``sender``'s outbox for ``correlation_id``: the partition of that correlation in this tenant."""
        partitions = await tenant_partitions(self._js, self.tenant)
        return outbox(self.tenant, sender, partition_of(correlation_id, partitions))

    async def publish(self, subject: str, sealed: Sealed) -> Appended:
        """Publish ``sealed`` to ``subject`` and wait for the stream's ack (``duplicate`` if it had that id)."""
        try:
            ack = await self._js.publish(subject, sealed.body, headers=dict(sealed.headers), timeout=PUBLISH_TIMEOUT_S)
        except NATS_ERRORS as exc:
            raise translated(exc, f"publish to {subject}") from exc
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def last_seq(self) -> int:
        """The sequence of the last message stored in the tenant's stream (0 if empty)."""
        name = stream_name(self.tenant)
        try:
            info = await self._js.stream_info(name)
        except NATS_ERRORS as exc:
            raise translated(exc, f"read stream {name}") from exc
        return int(info.state.last_seq)

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

    async def aclose(self) -> None:
        """Close the connection."""
        await self._nc.close()

    async def __aenter__(self) -> TenantStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
