"""The records the coordinator and agent runtimes write and the ledger reads.

Wire types, like the envelope: msgspec Structs whose field names are a
contract. They live in ``bus`` so that ``agents`` (which writes them) and
``ledger`` (which projects them) share one definition without importing each
other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from trustbus.bus._envelope import Envelope, decode_envelope
from trustbus.bus._errors import VerificationError
from trustbus.bus._keyring import Keyring
from trustbus.bus._payload import MalformedPayload, check_msgpack, decode_json, decode_msgpack
from trustbus.bus._seal import HEADER_KEY, HEADER_SIG, Limits, Opened, open_envelope

Verdict = Literal["accept", "reject", "hold"]


class Dropped(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A recipient the envelope will not reach, and why."""

    recipient: str
    reason: str


class Decision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """What the coordinator decided about one envelope. The payload of a ``decision`` envelope."""

    v: int = 1
    envelope_id: str
    source_seq: int
    sender: str
    kind: str
    correlation_id: str
    causation_id: str | None
    verdict: Verdict
    reasons: tuple[str, ...]
    deliver_to: tuple[str, ...]
    dropped: tuple[Dropped, ...]
    hop: int
    declared_taint: tuple[str, ...]
    effective_taint: tuple[str, ...]
    decided_ns: int
    approval_id: str | None = None
    approver: str | None = None


class DecisionGroup(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """Decisions about several envelopes, in the order they were made: the payload of a group's decision envelope.

    A msgpack array ``[v, [decision, ...]]``, where a single decision's payload
    is a map: the first byte tells them apart (docs/WIRE.md, "Decision records").
    """

    v: int
    decisions: tuple[Decision, ...]


GROUP_VERSION = 1

_encoder = msgspec.msgpack.Encoder()
_decision_decoder = msgspec.msgpack.Decoder(Decision)
_group_decoder = msgspec.msgpack.Decoder(DecisionGroup)
_MSGPACK_ARRAY = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))  # fixarray, array 16, array 32


def encode_decision(decision: Decision) -> bytes:
    """The msgpack payload of a decision envelope that records one decision (also a group's item)."""
    return _encoder.encode(decision)


def decode_decision(payload: bytes) -> Decision:
    """Parse the payload of an envelope that carries one decision (a coordinator's answer, a single record)."""
    check_msgpack(payload)
    return _decision_decoder.decode(payload)


def encode_decision_group(encoded: Sequence[bytes]) -> bytes:
    """The payload of a decision envelope that records several decisions, each already :func:`encode_decision`-ed."""
    return _encoder.encode((GROUP_VERSION, [msgspec.Raw(item) for item in encoded]))


def decode_decisions(payload: bytes) -> tuple[tuple[Decision, ...], bool]:
    """The decisions a decision envelope's payload records, and whether it records them as a group."""
    check_msgpack(payload)
    if payload[:1] and payload[0] in _MSGPACK_ARRAY:
        group = _group_decoder.decode(payload)
        if group.v != GROUP_VERSION or not group.decisions:
            raise ValueError(f"decision group of version {group.v} with {len(group.decisions)} decisions")
        return group.decisions, True
    return (_decision_decoder.decode(payload),), False


def decision_id(record_id: str, position: int, *, grouped: bool) -> str:
    """The id of the decision at ``position`` in the record ``record_id``: the record's own id if it records one."""
    return f"{record_id}.{position:d}" if grouped else record_id


def recorded_decisions(record: Envelope) -> list[tuple[str, Decision]]:
    """Each decision the decision envelope ``record`` records, with its id, in order.

    Raises:
        msgspec.DecodeError, ValueError: the payload is no decision record.
    """
    decisions, grouped = decode_decisions(record.payload)
    return [(decision_id(record.id, i, grouped=grouped), d) for i, d in enumerate(decisions)]


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
        high_risk: from the registry. A ``requested`` record of a high-risk tool whose envelope
            carries taint asks the coordinator first: the runtime waits for its answer.
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
    high_risk: bool = False


_effect_decoder = msgspec.msgpack.Decoder(EffectRecord)


def encode_effect(record: EffectRecord) -> bytes:
    """The msgpack payload of an effect envelope."""
    return _encoder.encode(record)


def decode_effect(payload: bytes) -> EffectRecord:
    """Parse an effect envelope's payload."""
    check_msgpack(payload)
    return _effect_decoder.decode(payload)


class SignedValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A KV value that is a signed envelope: msgpack ``{body: bin, headers: {Tb-Sig, Tb-Key}}``.

    An agent's checkpoint (the envelope it sent), the coordinator's answer to a
    held call, a memory value, a partition lease: each is opened as of the time
    the server stored it, and its reader checks signer and key (agents._signed_value).
    """

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
        return _encoder.encode(self)

    def open(self, *, keyring: Keyring, stored_ns: int, at_store: bool = False, limits: Limits = Limits()) -> Opened:
        """The envelope, verified as of ``stored_ns`` (``at_store``: a component's record, judged at its store time
        alone, see :func:`bus.open_envelope`); raises VerificationError."""  # noqa: D205, D209
        return open_envelope(
            self.body, self.headers, keyring=keyring, received_ns=stored_ns, limits=limits, at_store=at_store
        )


def decode_signed(value: bytes) -> SignedValue:
    """A stored signed value; msgspec.DecodeError or MalformedPayload if it is not one."""
    return decode_msgpack(value, type=SignedValue)


class MemoryValue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the bucket stores under ``<agent>.<key>``: the msgpack payload of a ``memory_write`` envelope the
    coordinator signed, kept as a :class:`SignedValue` (docs/WIRE.md, "Values in KV").

    ``key`` is the bucket key it was written to, under the signature: a value copied to another key says so.
    """  # noqa: D205

    v: int = 2
    key: str
    value: bytes
    envelope_id: str
    writer: str
    effective_taint: tuple[str, ...]
    decision_id: str


_memory_decoder = msgspec.msgpack.Decoder(MemoryValue)


def encode_memory_value(value: MemoryValue) -> bytes:
    """The payload of the coordinator's envelope that stores ``value``."""
    return _encoder.encode(value)


def decode_memory_payload(payload: bytes) -> MemoryValue:
    """Parse the payload of the coordinator's envelope that stores a memory value."""
    check_msgpack(payload)
    return _memory_decoder.decode(payload)


def decode_memory_value(data: bytes) -> MemoryValue:
    """What a stored memory value says, **unverified** (signer and key are checked by
    ``bus.open_memory_value``); msgspec.DecodeError or MalformedPayload if it is not one."""  # noqa: D205, D209
    try:
        envelope = decode_envelope(decode_signed(data).body)
    except VerificationError as exc:  # Malformed, UnsupportedVersion: not a ValueError, unlike the rest
        raise MalformedPayload(f"not a signed memory value: {exc}") from exc
    return decode_memory_payload(envelope.payload)


class MemoryWrite(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A proposed write. ``expected_revision`` 0 means "the key must not exist yet".

    ``reverts`` lists the envelopes whose writes a rollback undoes (operators only).
    """

    key: str
    value: msgspec.Raw
    expected_revision: int
    reverts: list[str] = []


def decode_memory_write(payload: bytes) -> MemoryWrite:
    """Parse the JSON payload of a ``memory_write`` envelope (raises on anything else)."""
    return decode_json(payload, type=MemoryWrite)


class Approval(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An operator's answer about a held envelope: the JSON payload of an ``approval`` envelope."""

    envelope_id: str
    verdict: Literal["approve", "deny"]
    note: str = ""

    @classmethod
    def decode(cls, payload: bytes) -> Approval:
        """Parse and validate; raises ValueError naming the problem."""
        return decode_json(payload, type=cls)

    def encode(self) -> bytes:
        """The JSON payload."""
        return msgspec.json.encode(self)


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ledger service's signed statement of the chain: the payload of a ``checkpoint`` envelope.

    Attributes:
        stream: the stream it covers.
        through_seq: the last sequence covered.
        head: the chain hash of ``through_seq`` (32 bytes).
        count: messages covered (1..through_seq).
        tree_size: leaves of the Merkle tree it states (``through_seq``), or None in a
            checkpoint written before tree heads were (it holds by its chain head alone).
        tree_root: the Merkle tree head of sequences 1..``tree_size`` (32 bytes), or None.
    """

    v: int = 1
    stream: str
    through_seq: int
    head: bytes
    count: int
    tree_size: int | None = None
    tree_root: bytes | None = None


_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The msgpack payload of a checkpoint envelope."""
    return _encoder.encode(checkpoint)


def decode_checkpoint(payload: bytes) -> Checkpoint:
    """Parse a checkpoint envelope's payload."""
    check_msgpack(payload)
    return _checkpoint_decoder.decode(payload)
