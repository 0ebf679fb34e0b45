"""An agent's checkpoint as the coordinator stores it in KV, opened and judged. Pure.

The value at ``$KV.tb_mem_<T>.<agent>.checkpoint`` is msgpack
``{body: bin, headers: {Tb-Sig, Tb-Key}}``: the agent's own signed
``checkpoint`` envelope, which the coordinator accepted. Anything else found
there (an empty message the server stored for a request's reply subject,
another agent's envelope, bytes that do not parse) is foreign: the agent starts
without it, and says why.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trustbus.bus import (
    Keyring,
    Limits,
    MalformedPayload,
    VerificationError,
    decode_json,
    decode_msgpack,
    open_envelope,
)


class SignedValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A KV value the coordinator stores for an agent (its checkpoint, an answer to a held call): signed bytes."""

    body: bytes
    headers: dict[str, str]


def open_checkpoint(value: bytes, *, keyring: Keyring, agent_id: str, stored_ns: int) -> dict[str, Any]:
    """The state in a stored checkpoint of ``agent_id``; ValueError saying why it is foreign otherwise."""
    if not value:
        raise ValueError("an empty value: no checkpoint anyone signed")
    try:
        stored = decode_msgpack(value, type=SignedValue)
        opened = open_envelope(stored.body, stored.headers, keyring=keyring, received_ns=stored_ns, limits=Limits())
    except (msgspec.DecodeError, MalformedPayload, VerificationError) as exc:
        raise ValueError(f"not a signed checkpoint: {exc}") from exc
    if opened.envelope.sender != agent_id or opened.envelope.kind != "checkpoint":
        raise ValueError(f"{opened.envelope.sender}'s {opened.envelope.kind}, not {agent_id}'s checkpoint")
    try:
        state = decode_json(opened.envelope.payload)
    except (msgspec.DecodeError, MalformedPayload) as exc:
        raise ValueError(f"checkpoint payload is not JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError("checkpoint payload is not a JSON object")
    return state
