"""Turning bus objects into JSON-ready dicts and human lines for the CLI."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from rich.markup import escape

from trustbus.bus import (
    Decision,
    Envelope,
    KeyGrant,
    MalformedPayload,
    QuarantineRecord,
    TailItem,
    decode_checkpoint,
    decode_decisions,
    decode_effect,
    decode_json,
    decode_msgpack,
    decode_quarantine_payload,
    recorded_decisions,
    subjects,
)

GROUP_SHOWN = 3  # decisions of a group's record said in a line


def payload_value(envelope: Envelope) -> Any:
    """The payload as JSON-ready data: parsed JSON, text, decoded msgpack, or ``{"base64": ...}``.

    JSON and msgpack are parsed within the decoding bounds; a payload over them
    (or not parsing) is shown as base64 with ``"malformed"`` saying why.
    """
    try:
        if envelope.content_type == "application/json":
            return decode_json(envelope.payload or b"null")
        if envelope.content_type == "text/plain":
            return envelope.payload.decode()
        return msgspec.to_builtins(decode_msgpack(envelope.payload))
    except MalformedPayload as exc:
        return {"base64": base64.b64encode(envelope.payload).decode(), "malformed": exc.detail}
    except ValueError:  # not UTF-8 text
        return {"base64": base64.b64encode(envelope.payload).decode()}


def envelope_dict(envelope: Envelope) -> dict[str, Any]:
    """Every envelope field, payload decoded; a decision record's decisions also under ``decisions``, each with
    its ``id``, whether it records one or a group (docs/WIRE.md, "Decision records")."""  # noqa: D205, D209
    data: dict[str, Any] = msgspec.to_builtins(envelope)
    data["payload"] = payload_value(envelope)
    if envelope.kind == "decision":
        try:
            recorded = recorded_decisions(envelope)
        except ValueError:  # msgspec.DecodeError is one: not a record, shown as its payload alone
            return data
        data["decisions"] = [{"id": decision_id, **msgspec.to_builtins(d)} for decision_id, d in recorded]
    return data


def tail_dict(item: TailItem, tenant: str) -> dict[str, Any]:
    """One line of ``trustbus tail --json``."""
    out: dict[str, Any] = {"seq": item.stream_seq, "subject": item.subject, "stored_ns": item.stored_ns}
    if item.error is not None:
        out.update(verified=False, reason=item.error.reason, detail=item.error.detail)
        return out
    assert item.opened is not None
    envelope = envelope_dict(item.opened.envelope)
    if item.subject == subjects.quarantine(tenant):
        try:
            envelope["payload"] = msgspec.to_builtins(decode_quarantine_payload(item.opened.envelope.payload))
        except (msgspec.DecodeError, ValueError):
            pass  # shown as decoded above
    out.update(verified=True, key_id=item.opened.grant.key_id, envelope=envelope)
    return out


PREVIEW_CHARS = 120


def tail_line(item: TailItem, tenant: str) -> str:
    """One human line (rich markup) of ``trustbus tail``: where it was stored, who sent what, and what it says."""
    where = subjects.relative(tenant, item.subject)
    if item.error is not None:
        return f"[red]#{item.stream_seq} {where} REJECTED {item.error.reason}[/red]: {escape(item.error.detail)}"
    assert item.opened is not None
    env = item.opened.envelope
    to = f" -> {','.join(env.to)}" if env.to else ""
    taint = f" taint={','.join(env.taint)}" if env.taint else ""
    said = said_by(env, item.subject, tenant)
    if len(said) > PREVIEW_CHARS:
        said = said[: PREVIEW_CHARS - 1] + "…"
    return (
        f"#{item.stream_seq} {where} [bold]{env.kind}[/bold] {env.sender}{to} "
        f"hop={env.hop}{taint} id={env.id} [dim]{escape(said)}[/dim]"
    )


def _decision_said(decision: Decision) -> str:
    to = f" -> {','.join(decision.deliver_to)}" if decision.deliver_to else ""
    why = f" ({', '.join(decision.reasons)})" if decision.reasons else ""
    return f"{decision.verdict}{why}: {decision.kind} {decision.envelope_id} of {decision.sender}{to}"


def said_by(envelope: Envelope, subject: str, tenant: str) -> str:
    """What an envelope says, in a few words: a record decoded (decision, effect, checkpoint, quarantine), else
    its payload as text or compact JSON."""  # noqa: D205, D209
    try:
        if envelope.kind == "decision":
            decisions, grouped = decode_decisions(envelope.payload)
            said = "; ".join(_decision_said(d) for d in decisions[:GROUP_SHOWN])
            more = f"; and {len(decisions) - GROUP_SHOWN} more" if len(decisions) > GROUP_SHOWN else ""
            return f"{len(decisions)} decisions: {said}{more}" if grouped else said
        if envelope.kind == "effect":
            effect = decode_effect(envelope.payload)
            error = f": {effect.error}" if effect.error else ""
            return f"{effect.tool} {effect.phase} (key {effect.idempotency_key}){error}"
        if envelope.kind == "checkpoint":
            checkpoint = decode_checkpoint(envelope.payload)
            return f"through #{checkpoint.through_seq}, head {checkpoint.head.hex()[:16]}…"
        if subject == subjects.quarantine(tenant):
            record = decode_quarantine_payload(envelope.payload)
            if isinstance(record, QuarantineRecord):
                where = subjects.relative(tenant, record.subject)
                return f"refused {record.reason}: #{record.stream_seq} {where}: {record.detail}"
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(record.counts.items()))
            return f"refused from {record.owner}: {counts}"
    except ValueError:  # msgspec.DecodeError, MalformedPayload: shown as its payload below
        pass
    value = payload_value(envelope)
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def grant_dict(grant: KeyGrant) -> dict[str, Any]:
    """A keyring entry as JSON-ready data."""
    data: dict[str, Any] = msgspec.to_builtins(grant)
    return data
