"""Values the coordinator stores for an agent in KV, signed: its checkpoint, the answer to a held call. Pure.

Such a value is msgpack ``{body: bin, headers: {Tb-Sig, Tb-Key}}``: a signed
envelope (the agent's own ``checkpoint`` the coordinator accepted, or the
coordinator's answer), opened as of the time the server stored the value.

The checkpoint lives at ``$KV.tb_mem_<T>.<agent>.checkpoint``. Anything else
found there (an empty message the server stored for a request's reply subject,
another agent's envelope, bytes that do not parse) is foreign: the agent starts
without it, and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from trustbus.bus import (
    Keyring,
    Limits,
    MalformedPayload,
    Opened,
    VerificationError,
    decode_json,
    decode_msgpack,
    open_envelope,
)
from trustbus.bus._seal import HEADER_KEY, HEADER_SIG

_ENCODER = msgspec.msgpack.Encoder()


class SignedValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A KV value the coordinator stores for an agent (its checkpoint, an answer to a held call): signed bytes."""

    body: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, body: bytes, headers: Mapping[str, str]) -> SignedValue:
        """The value that keeps ``body`` with its signature headers (and no others)."""
        return cls(body=body, headers={k: headers.get(k, "") for k in (HEADER_SIG, HEADER_KEY)})

    @property
    def key_id(self) -> str:
        """The id of the key that signed it (empty if none is named)."""
        return self.headers.get(HEADER_KEY, "")

    def encode(self) -> bytes:
        """The bytes stored in KV."""
        return _ENCODER.encode(self)

    def open(self, *, keyring: Keyring, stored_ns: int, at_store: bool = False) -> Opened:
        """The envelope, verified as of ``stored_ns`` (``at_store``: a component's record, judged at its store time
        alone, see :func:`bus.open_envelope`); raises VerificationError."""  # noqa: D205, D209
        return open_envelope(
            self.body, self.headers, keyring=keyring, received_ns=stored_ns, limits=Limits(), at_store=at_store
        )


def decode_signed(value: bytes) -> SignedValue:
    """A stored signed value; msgspec.DecodeError or MalformedPayload if it is not one."""
    return decode_msgpack(value, type=SignedValue)


def open_checkpoint(value: bytes, *, keyring: Keyring, agent_id: str, stored_ns: int) -> dict[str, Any]:
    """The state in a stored checkpoint of ``agent_id``; ValueError saying why it is foreign otherwise."""
    if not value:
        raise ValueError("an empty value: no checkpoint anyone signed")
    try:
        opened = decode_signed(value).open(keyring=keyring, stored_ns=stored_ns)
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
