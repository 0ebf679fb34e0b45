"""The async bodies of CLI commands that talk to NATS directly: one call each into :mod:`bus`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import nats.errors

from trustbus.bus import (
    ConfigError,
    KeyDirectory,
    KeyringStore,
    TailItem,
    TransportError,
    connect_nats,
    new_envelope,
    seal,
    subjects,
    tail,
    tenant_partitions,
)
from trustbus.bus._envelope import ContentType, Kind

KINDS = ("event", "instruction", "reply", "memory_write", "effect", "approval", "decision", "checkpoint")
CONTENT_TYPES = ("application/json", "application/msgpack", "text/plain")


async def send_one(
    servers: Sequence[str],
    *,
    tenant: str,
    sender: str,
    keys: KeyDirectory,
    to: list[str],
    kind: str,
    payload: bytes,
    content_type: str,
    taint: list[str],
    correlation_id: str | None,
    causation_id: str | None,
    hop: int,
    idempotency_key: str | None,
    subject: str | None,
    nkey_seed: str | None = None,
) -> dict[str, Any]:
    """Sign one envelope as ``sender`` and publish it; returns id, subject, stream seq, duplicate.

    ``nkey_seed`` authenticates the connection (the publisher, e.g. the admin, need not be ``sender``).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if content_type not in CONTENT_TYPES:
        raise ConfigError(f"unknown content type {content_type!r}: one of {', '.join(CONTENT_TYPES)}")
    identity = keys.load(tenant, sender)
    kind_value: Kind = kind  # type: ignore[assignment]
    content_type_value: ContentType = content_type  # type: ignore[assignment]
    envelope = new_envelope(
        tenant=tenant,
        kind=kind_value,
        sender=sender,
        to=to,
        payload=payload,
        content_type=content_type_value,
        taint=taint,
        correlation_id=correlation_id,
        causation_id=causation_id,
        hop=hop,
        idempotency_key=idempotency_key,
    )
    sealed = seal(envelope, identity)
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        partitions = 1 if subject else await tenant_partitions(js, tenant)
        target = subject or subjects.outbox(tenant, sender, subjects.partition_of(envelope.correlation_id, partitions))
        ack = await js.publish(target, sealed.body, headers=sealed.headers, timeout=5)
    except nats.errors.Error as exc:
        raise TransportError(f"publish to {target} failed: {exc}") from exc
    finally:
        await nc.close()
    return {"id": envelope.id, "subject": target, "seq": ack.seq, "duplicate": bool(ack.duplicate)}


async def tail_stream(
    servers: Sequence[str],
    *,
    tenant: str,
    subject: str | None,
    from_seq: int | None,
    new_only: bool,
    limit: int | None,
    idle_timeout_s: float | None,
    on_item: Callable[[TailItem], None],
    nkey_seed: str | None = None,
) -> int:
    """Feed verified stream messages to ``on_item``; returns how many were shown.

    ``nkey_seed`` authenticates the connection.
    """
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        shown = 0
        async with await KeyringStore.open(js, tenant) as keyring:
            async for item in tail(
                js,
                keyring,
                tenant,
                subject=subject,
                from_seq=from_seq,
                new_only=new_only,
                idle_timeout_s=idle_timeout_s,
            ):
                on_item(item)
                shown += 1
                if limit is not None and shown >= limit:
                    break
        return shown
    finally:
        await nc.close()
