"""The async bodies of ``trustbus send``, ``trustbus tail`` and ``trustbus quarantine list``: calls into :mod:`bus`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from trustbus.bus import (
    ConfigError,
    ContentType,
    Envelope,
    KeyDirectory,
    Kind,
    QuarantineRecord,
    RejectionSummary,
    TailItem,
    TenantStream,
    VerificationError,
    current_trace,
    decode_json,
    decode_quarantine_payload,
    new_envelope,
    open_envelope,
    recorded_decisions,
    seal,
    subjects,
    traced,
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
    with traced(f"send {kind}", {"messaging.system": "nats", "messaging.operation.type": "send"}) as span:
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
            trace=current_trace(),
        )
        sealed = seal(envelope, identity)
        async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
            target = subject or await stream.outbox(sender, envelope.correlation_id)
            stored = await stream.publish(target, sealed)
        if span is not None:
            span.set_attributes(
                {
                    "messaging.destination.name": target,
                    "messaging.message.id": envelope.id,
                    "gen_ai.conversation.id": envelope.correlation_id,
                    "trustbus.sender": sender,
                }
            )
    return {"id": envelope.id, "subject": target, "seq": stored.seq, "duplicate": stored.duplicate}


@dataclass(frozen=True)
class TailFilter:
    """Which verified envelopes ``tail`` shows: of a kind, sent by or to an agent, in a correlation.

    With any of them set, a message that did not verify is not shown (its fields are not to be believed).
    """

    kind: str | None = None
    agent: str | None = None
    correlation: str | None = None

    def shows(self, item: TailItem) -> bool:
        """Whether ``item`` passes every filter given."""
        if self.kind is None and self.agent is None and self.correlation is None:
            return True
        if item.opened is None:
            return False
        envelope = item.opened.envelope
        return (
            (self.kind is None or envelope.kind == self.kind)
            and (self.agent is None or self.agent == envelope.sender or self.agent in envelope.to)
            and (self.correlation is None or self.correlation in _correlations(envelope))
        )


def _correlations(envelope: Envelope) -> set[str]:
    """The correlations ``envelope`` is part of: its own, and for a decision record those it decides about (a
    batch's record has a correlation of its own, docs/WIRE.md "Decision records")."""  # noqa: D205, D209
    if envelope.kind != "decision":
        return {envelope.correlation_id}
    try:
        return {envelope.correlation_id, *(d.correlation_id for _, d in recorded_decisions(envelope))}
    except ValueError:  # msgspec.DecodeError is one
        return {envelope.correlation_id}


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
    only: TailFilter = TailFilter(),
    nkey_seed: str | None = None,
) -> int:
    """Feed verified stream messages that pass ``only`` to ``on_item``; returns how many were shown.

    ``nkey_seed`` authenticates the connection.
    """
    shown = 0
    subject = subjects.absolute(tenant, subject) if subject else None
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
        items = stream.tail(subject=subject, from_seq=from_seq, new_only=new_only, idle_timeout_s=idle_timeout_s)
        async with aclosing(items):
            async for item in items:
                if not only.shows(item):
                    continue
                on_item(item)
                shown += 1
                if limit is not None and shown >= limit:
                    break
    return shown


@dataclass(frozen=True)
class Refusal:
    """One message the bus refused, as its quarantine record (or a summary of many) says.

    Attributes:
        record_seq: where the record is in the stream.
        recorded_by: who recorded it (the coordinator, an agent's runtime, the ledger service).
        seq: the refused message's stream sequence (None: it was never stored, e.g. a given-up delivery).
        subject: where the refused message was stored.
        reason: the reason code.
        detail: why, in words.
        claimed_sender: who the message said it was from (None in a summary: its subjects' owner is known).
    """

    record_seq: int
    recorded_by: str
    seq: int | None
    subject: str
    reason: str
    detail: str
    claimed_sender: str | None


async def refusals(
    servers: Sequence[str], *, tenant: str, reason: str | None = None, nkey_seed: str | None = None
) -> list[Refusal]:
    """Every refusal the tenant's quarantine records state, oldest first, one per refused message.

    A record that does not verify (someone else's message on the quarantine subject) is itself listed,
    as ``foreign``.
    """
    found: list[Refusal] = []
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as stream:
        keyring = await stream.keyring()
        async for message in stream.log(subjects.quarantine(tenant)).read():
            try:
                opened = open_envelope(
                    message.body, message.headers, keyring=keyring, received_ns=message.stored_ns, at_store=True
                )
                record = decode_quarantine_payload(opened.envelope.payload)
            except (VerificationError, ValueError) as exc:  # ValueError: msgspec.DecodeError, MalformedPayload
                found.append(Refusal(message.seq, "?", message.seq, message.subject, "foreign", str(exc), None))
                continue
            found.extend(_refusals_in(message.seq, opened.envelope.sender, record))
    return [r for r in found if reason is None or r.reason == reason]


def _refusals_in(record_seq: int, by: str, record: QuarantineRecord | RejectionSummary) -> list[Refusal]:
    if isinstance(record, QuarantineRecord):
        return [
            Refusal(
                record_seq, by, record.stream_seq, record.subject, record.reason, record.detail, record.claimed_sender
            )
        ]
    return [
        Refusal(record_seq, by, seq, subject, reason, record.detail_of(item), None)
        for (seq, subject, reason, _, _), item in zip(record.rejected(), record.items, strict=True)
    ]
