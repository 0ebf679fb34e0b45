"""Effects: tool calls as recorded events, and the blast-radius inventory of tools.

An effect is recorded as ``effect`` envelopes on ``tb.<T>.effect.<agent>.<key>``
(one subject per idempotency key, so the latest record of a call is one direct
get away): ``requested`` before the tool runs, then ``completed`` (with the
result and the taint the result carries) or ``failed``. The coordinator folds
completed effects' taint into the agent's effective taint for that correlation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import msgspec

EffectClass = Literal["read", "reversible", "irreversible"]
Phase = Literal["requested", "completed", "failed"]


class EffectRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One phase of one tool call. The msgpack payload of an ``effect`` envelope.

    Attributes:
        phase: requested, completed or failed.
        tool: the tool's name in the registry.
        idempotency_key: derived from the causing envelope and the call (see :func:`idempotency_key`).
        args: the call's arguments, JSON.
        result: the tool's result, JSON (completed only).
        error: what went wrong (failed only).
        effect_class: from the registry: read, reversible or irreversible.
        compensating_tool: for a reversible effect, the tool that undoes it.
        taint: labels the result carries (e.g. ``web`` for a page fetch).
    """

    v: int = 1
    phase: Phase
    tool: str
    idempotency_key: str
    args: bytes
    result: bytes | None = None
    error: str | None = None
    effect_class: EffectClass
    compensating_tool: str | None = None
    taint: tuple[str, ...] = ()


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EffectRecord)


def encode_effect(record: EffectRecord) -> bytes:
    """The msgpack payload of an effect envelope."""
    return _encoder.encode(record)


def decode_effect(payload: bytes) -> EffectRecord:
    """Parse an effect envelope's payload."""
    return _decoder.decode(payload)


def idempotency_key(causing_envelope_id: str, tool: str, args: dict[str, Any], call_index: int) -> str:
    """A key that is the same every time the same delivery makes the same call: 32 hex chars.

    ``call_index`` counts the handler's effect calls, so a handler that calls the
    same tool twice with the same arguments makes two effects, and a redelivery
    of the same envelope makes the same two keys again.
    """
    canonical = json.dumps([causing_envelope_id, tool, args, call_index], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
