"""The async bodies of ``trustbus send`` and ``trustbus tail``: one call each into :mod:`bus`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any

from trustbus.bus import (
    ConfigError,
    ContentType,
    KeyDirectory,
    Kind,
    TailItem,
    TenantStream,
    decode_json,
    new_envelope,
    seal,
    subjects,
)

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
    if content_type == "application/json":
        try:
            decode_json(payload)
        except ValueError as exc:  # MalformedPayload, msgspec.DecodeError
            example = """'{"order": 1}'"""
            raise ConfigError(f"--payload is not valid JSON ({exc}): quote it for the shell, e.g. {example}") from exc
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
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
        target = subject or await stream.outbox(sender, envelope.correlation_id)
        stored = await stream.publish(target, sealed)
    return {"id": envelope.id, "subject": target, "seq": stored.seq, "duplicate": stored.duplicate}


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
    shown = 0
    subject = subjects.absolute(tenant, subject) if subject else None
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
        items = stream.tail(subject=subject, from_seq=from_seq, new_only=new_only, idle_timeout_s=idle_timeout_s)
        async with aclosing(items):
            async for item in items:
                on_item(item)
                shown += 1
                if limit is not None and shown >= limit:
                    break
    return shown
