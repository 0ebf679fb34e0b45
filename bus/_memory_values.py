"""Coordinator-signed KV values, and the agent memory values among them. Pure.

A KV value a coordinator writes (an agent's memory value, a lease, a member
record) is a :class:`bus.SignedValue`: a signed envelope, opened as of the
time the server stored the value, by the role its key had then. A memory
value at ``$KV.tb_mem_<T>.<agent>.<key>`` is a ``memory_write`` envelope
whose payload is a :class:`bus.MemoryValue` naming that key. Every reader of
memory (the agent runtime, the coordinator, the ledger's rollback) opens it
here; anything else found at such a key (an empty message the server stored
for a request's reply subject, a value nobody signed, one signed by another
role's key, one copied from another key) is foreign: a ValueError saying why.
"""

from __future__ import annotations

from trustbus.bus._envelope import MAX_MSG_SIZE, new_envelope
from trustbus.bus._errors import VerificationError
from trustbus.bus._identity import Identity
from trustbus.bus._keyring import Keyring
from trustbus.bus._records import MemoryValue, SignedValue, decode_memory_payload, decode_signed, encode_memory_value
from trustbus.bus._seal import Limits, Opened, seal

# A memory value wraps a value that came in an envelope of at most the receive limit: allow it its wrapping.
_VALUE_LIMITS = Limits(max_bytes=MAX_MSG_SIZE)


def open_coordinator_value(
    value: bytes, *, keyring: Keyring, stored_ns: int, kind: str, limits: Limits = Limits()
) -> Opened:
    """A ``kind`` envelope signed by a key whose role was ``coordinator`` when ``value`` was stored; ValueError."""
    if not value:
        raise ValueError("an empty value: nothing anyone signed")
    try:
        opened = decode_signed(value).open(keyring=keyring, stored_ns=stored_ns, at_store=True, limits=limits)
    except (ValueError, VerificationError) as exc:  # msgspec.DecodeError, MalformedPayload
        raise ValueError(f"not a signed value: {exc}") from exc
    if opened.grant.role != "coordinator":
        raise ValueError(f"signed by {opened.envelope.sender}'s {opened.grant.role} key, not a coordinator's")
    if opened.envelope.kind != kind:
        raise ValueError(f"a coordinator's {opened.envelope.kind}, not its {kind}")
    return opened


def open_memory_value(value: bytes, *, keyring: Keyring, key: str, stored_ns: int) -> MemoryValue:
    """The value a coordinator stored at memory key ``key`` (``<agent>.<name>``); ValueError saying why it is
    foreign otherwise."""  # noqa: D205, D209
    opened = open_coordinator_value(
        value, keyring=keyring, stored_ns=stored_ns, kind="memory_write", limits=_VALUE_LIMITS
    )
    try:
        stored = decode_memory_payload(opened.envelope.payload)
    except ValueError as exc:  # msgspec.DecodeError, MalformedPayload
        raise ValueError(f"a coordinator's memory_write that holds no memory value: {exc}") from exc
    if stored.key != key:
        raise ValueError(f"the value of {stored.key}, not of {key}")
    return stored


def memory_value(coordinator: Identity, name: str, value: MemoryValue, *, tenant: str, now_ns: int) -> bytes:
    """The bytes to store at ``value.key``: ``value`` in a ``memory_write`` envelope signed by the coordinator
    ``name`` (key ``coordinator``), to the agent whose namespace it is, caused by the write it applies."""  # noqa: D205, D209
    envelope = new_envelope(
        tenant=tenant,
        kind="memory_write",
        sender=name,
        to=(value.key.split(".", 1)[0],),
        causation_id=value.envelope_id,
        taint=value.effective_taint,
        content_type="application/msgpack",
        payload=encode_memory_value(value),
        now_ns=now_ns,
    )
    sealed = seal(envelope, coordinator)
    return SignedValue.of(sealed.body, sealed.headers).encode()
