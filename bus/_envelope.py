"""The envelope: the one wire type every message on the bus is.

The bytes on the wire are the msgpack encoding of :class:`Envelope` (a map
keyed by the field names below, which are a contract). Signatures cover those
exact bytes, so decoding never re-encodes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec

from trustbus.bus._errors import ConfigError, Malformed, UnsupportedVersion
from trustbus.bus._payload import Bounds, check_msgpack
from trustbus.bus._subjects import NAME_PATTERN, RECIPIENT_PATTERN
from trustbus.bus._trace_context import TRACEPARENT_PATTERN, TRACESTATE_MAX, trace_problem

LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:./-]{0,127}\Z"
INT64_MAX = 2**63 - 1

SCHEMA_VERSION = 2  # the newest; an envelope without trace context is written as version 1
FIELDS = {1: 14, 2: 15}  # schema version -> its keys, every one required on the wire (docs/WIRE.md)
MAX_MSG_SIZE = 1024 * 1024  # one stored message at most (the tenant stream's max_msg_size, the server's max_payload)

Kind = Literal["event", "instruction", "reply", "memory_write", "effect", "approval", "decision", "checkpoint"]
ContentType = Literal["application/json", "application/msgpack", "text/plain"]

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Recipient = Annotated[str, msgspec.Meta(pattern=RECIPIENT_PATTERN)]
Label = Annotated[str, msgspec.Meta(pattern=LABEL_PATTERN)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Int64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Traceparent = Annotated[str, msgspec.Meta(pattern=TRACEPARENT_PATTERN)]
Tracestate = Annotated[str, msgspec.Meta(max_length=TRACESTATE_MAX)]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A signed, provenance-tagged message. Field names are part of the wire contract.

    Build one with :func:`new_envelope`, which fills ``id`` and ``ts`` and
    normalises ``taint``. Every field is required on the wire (docs/WIRE.md);
    ``trace`` (W3C ``[traceparent, tracestate]``) is in version 2 only, so a
    version 1 envelope (``trace`` None) encodes exactly as before it existed.
    """

    v: int
    id: Id
    tenant: Name
    kind: Kind
    sender: Name
    to: tuple[Recipient, ...]
    ts: Int64
    correlation_id: Id
    causation_id: Id | None
    hop: Int64
    taint: tuple[Label, ...]
    idempotency_key: Annotated[str, msgspec.Meta(max_length=256)] | None
    content_type: ContentType
    payload: bytes
    trace: tuple[Traceparent, Tracestate] | None = None

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the span that sent this envelope, if it carries one."""
        return None if self.trace is None else self.trace[0]


class _VersionProbe(msgspec.Struct):
    v: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_probe_decoder = msgspec.msgpack.Decoder(_VersionProbe)
# A valid envelope nests two deep (the map, its lists); its size is the receiver's limit (bus.Limits).
_BOUNDS = Bounds(max_depth=4, max_bytes=sys.maxsize)
_READ = " and ".join(map(str, FIELDS))


def new_id(now_ns: int | None = None) -> str:
    """A UUIDv7 string: 48 bits of unix milliseconds, then sub-millisecond time, then random.

    Ids sort by creation time to about 250 ns within one clock.
    """
    ns = time.time_ns() if now_ns is None else now_ns
    ms, sub_ns = divmod(ns, 1_000_000)
    sub = (sub_ns << 12) // 1_000_000  # 12 bits of sub-millisecond precision (RFC 9562 method 3)
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | sub << 64 | 0b10 << 62 | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_envelope(
    *,
    tenant: str,
    kind: Kind,
    sender: str,
    to: Iterable[str],
    payload: bytes = b"",
    content_type: ContentType = "application/json",
    correlation_id: str | None = None,
    causation_id: str | None = None,
    hop: int = 0,
    taint: Iterable[str] = (),
    idempotency_key: str | None = None,
    now_ns: int | None = None,
    trace: tuple[str, str] | None = None,
) -> Envelope:
    """Build an envelope with a fresh time-ordered id and ``ts``; taint is sorted and deduplicated, ``to`` deduplicated.

    A new origin (no ``correlation_id``) starts its own correlation, named by its id. ``trace``
    (``(traceparent, tracestate)``, tracestate ``""`` for none) makes it a version 2 envelope.
    """
    ts = time.time_ns() if now_ns is None else now_ns
    env_id = new_id(ts)
    envelope = Envelope(
        v=1 if trace is None else 2,
        id=env_id,
        tenant=tenant,
        kind=kind,
        sender=sender,
        to=tuple(dict.fromkeys(to)),
        ts=ts,
        correlation_id=correlation_id or env_id,
        causation_id=causation_id,
        hop=hop,
        taint=tuple(sorted(set(taint))),
        idempotency_key=idempotency_key,
        content_type=content_type,
        payload=payload,
        trace=trace,
    )
    # Round-trip through the validating decoder so a bad name fails here, not at the receiver.
    try:
        return decode_envelope(encode_envelope(envelope))
    except Malformed as exc:
        raise ConfigError(f"invalid envelope: {exc.detail}") from exc


def encode_envelope(envelope: Envelope) -> bytes:
    """The wire bytes of ``envelope``."""
    return _encoder.encode(envelope)


def decode_envelope(body: bytes) -> Envelope:
    """Decode wire bytes; raises ``Malformed`` or ``UnsupportedVersion``."""
    # msgspec raises DecodeError for bad structure and UnicodeDecodeError (a ValueError) for bad UTF-8.
    # The typed decode needs no depth walk first: every field has a scalar or a list-of-strings type and an
    # unknown key is refused before its value is read, so it stops at the first value nested deeper than the
    # schema (two levels) without descending into it. The probe below skips unknown fields, so it needs one.
    try:
        envelope = _decoder.decode(body)
    except (msgspec.DecodeError, ValueError) as exc:
        check_msgpack(body, _BOUNDS)  # before the probe, which would recurse into a deeply nested field
        # Tell a newer schema from garbage: only the version field is read here.
        try:
            version = _probe_decoder.decode(body).v
        except (msgspec.DecodeError, ValueError):
            raise Malformed(str(exc)) from exc
        if version not in FIELDS:
            raise UnsupportedVersion(f"schema version {version}, this code reads {_READ}") from exc
        raise Malformed(str(exc)) from exc
    if envelope.v not in FIELDS:
        raise UnsupportedVersion(f"schema version {envelope.v}, this code reads {_READ}")
    problem = _schema_problem(body, envelope)
    if problem is not None:
        raise Malformed(problem)
    return envelope


def _map_size(body: bytes) -> int | None:
    """The entry count of the msgpack map ``body`` starts with (None: not a map header)."""
    first = body[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(body[1:3], "big")
    if first == 0xDF:
        return int.from_bytes(body[1:5], "big")
    return None


def _schema_problem(body: bytes, envelope: Envelope) -> str | None:
    """What the typed decode cannot see: a repeated key, a version without its keys, unsorted or repeated taint,
    a repeated recipient, a trace context the patterns let through."""  # noqa: D205, D209
    version = envelope.v
    fields = FIELDS[version]
    if _map_size(body) != fields:
        return f"a version {version} envelope is a map of exactly {fields} entries (a key is missing or repeated)"
    trace = envelope.trace
    if (trace is None) != (version == 1):
        return "`trace` is required in a version 2 envelope, and unknown in version 1"
    # No label and one label are always in order, no recipient and one never repeated: skip building the sets.
    taint = envelope.taint
    if len(taint) > 1 and list(taint) != sorted(set(taint)):
        return "taint labels must be sorted (by code point) with no duplicates"
    to = envelope.to
    if len(to) > 1 and len(set(to)) != len(to):
        return "a recipient is named twice in `to`"
    return None if trace is None else trace_problem(*trace)
