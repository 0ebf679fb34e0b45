"""Turning bus objects into JSON-ready dicts and human lines for the CLI."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from rich.markup import escape

from trustbus.bus import (
    Envelope,
    KeyGrant,
    MalformedPayload,
    TailItem,
    decode_json,
    decode_msgpack,
    decode_quarantine_payload,
    subjects,
)


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
    """Every envelope field, payload decoded."""
    data: dict[str, Any] = msgspec.to_builtins(envelope)
    data["payload"] = payload_value(envelope)
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


def tail_line(item: TailItem) -> str:
    """One human line (rich markup) of ``trustbus tail``."""
    if item.error is not None:
        return f"[red]#{item.stream_seq} {item.subject} REJECTED {item.error.reason}[/red]: {escape(item.error.detail)}"
    assert item.opened is not None
    env = item.opened.envelope
    if env.content_type == "application/msgpack":
        preview = "<msgpack>"
    else:
        preview = env.payload[:80].decode(errors="replace")
    taint = f" taint={','.join(env.taint)}" if env.taint else ""
    return (
        f"#{item.stream_seq} [bold]{env.kind}[/bold] {env.sender} -> {','.join(env.to)} "
        f"hop={env.hop}{taint} id={env.id} [dim]{escape(preview)}[/dim]"
    )


def grant_dict(grant: KeyGrant) -> dict[str, Any]:
    """A keyring entry as JSON-ready data."""
    data: dict[str, Any] = msgspec.to_builtins(grant)
    return data
