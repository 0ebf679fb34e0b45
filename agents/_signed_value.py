"""Values stored in KV as signed envelopes, and what each key must hold to be believed. Pure.

Such a value is a :class:`bus.SignedValue`: msgpack ``{body: bin,
headers: {Tb-Sig, Tb-Key}}``, a signed envelope opened as of the time the
server stored the value. Memory values are opened by the bus
(:func:`bus.open_memory_value`, which the ledger's rollback uses too); here:

- ``$KV.tb_mem_<T>.<agent>.checkpoint``: the agent's own ``checkpoint`` envelope, which the coordinator accepted.
- ``$KV.tb_coord_<T>.partition-<p>`` and ``member-<name>``: an ``event`` envelope signed by a ``coordinator``
  key whose JSON payload is a :class:`Holder` naming that key and the signer as holder.
- ``$KV.tb_state_<T>.c<p>.<hash>`` and ``partition-<p>``: a ``state`` event signed by a ``coordinator`` key
  whose msgpack payload names that key, its partition and the log sequence it covers
  (:mod:`agents._correlation_store`).

A coordinator's value is judged at its store time alone (a coordinator whose
clock was stepped still writes values its peers and agents believe), by the
role its key had then. Anything else found at such a key (an empty message the
server stored for a request's reply subject, a well-formed value nobody
signed, one signed by another role's key, one copied from another key, bytes
that do not parse) is foreign: its reader records it and treats it as absent.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trustbus.bus import (
    MAX_MSG_SIZE,
    Identity,
    Keyring,
    Limits,
    MalformedPayload,
    SignedValue,
    VerificationError,
    decode_json,
    decode_signed,
    new_envelope,
    open_coordinator_value,
    seal,
)

# A state value holds a correlation's decisions: allow it what one stored message may hold.
_VALUE_LIMITS = Limits(max_bytes=MAX_MSG_SIZE)


class Holder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The JSON payload of a lease or member value: the key it was written to, and who holds it.

    ``instance`` None: handed back (a lease that is free, a member that has left).
    """

    key: str
    name: str
    instance: str | None


def signer(value: bytes) -> str:
    """The key id a stored signed value names ("" if it is not one): the key to look up before opening it."""
    try:
        return decode_signed(value).key_id
    except ValueError:  # msgspec.DecodeError, MalformedPayload
        return ""


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


def holder_value(
    coordinator: Identity, name: str, key: str, instance: str | None, *, tenant: str, now_ns: int
) -> bytes:
    """The bytes to store at lease or member key ``key``: ``name`` (instance ``instance``; None: handed back)
    holds it, signed by ``name``'s coordinator key."""  # noqa: D205, D209
    holder = Holder(key=key, name=name, instance=instance)
    envelope = new_envelope(
        tenant=tenant, kind="event", sender=name, to=(), payload=msgspec.json.encode(holder), now_ns=now_ns
    )
    sealed = seal(envelope, coordinator)
    return SignedValue.of(sealed.body, sealed.headers).encode()


def open_holder(value: bytes, *, keyring: Keyring, key: str, stored_ns: int) -> Holder:
    """Who a coordinator said holds lease or member key ``key``; ValueError saying why it is foreign otherwise."""
    opened = open_coordinator_value(value, keyring=keyring, stored_ns=stored_ns, kind="event")
    try:
        holder = decode_json(opened.envelope.payload, type=Holder)
    except ValueError as exc:  # MalformedPayload
        raise ValueError(f"a coordinator's event that names no holder: {exc}") from exc
    if holder.key != key:
        raise ValueError(f"the value of {holder.key}, not of {key}")
    if holder.name != opened.envelope.sender:
        raise ValueError(f"names {holder.name} as holder, signed by {opened.envelope.sender}")
    return holder


def state_value(coordinator: Identity, name: str, payload: bytes, *, tenant: str, now_ns: int) -> bytes:
    """The bytes to store at a state key: ``payload`` in an ``event`` envelope signed by the coordinator ``name``."""
    envelope = new_envelope(
        tenant=tenant,
        kind="event",
        sender=name,
        to=(),
        content_type="application/msgpack",
        payload=payload,
        now_ns=now_ns,
    )
    sealed = seal(envelope, coordinator)
    return SignedValue.of(sealed.body, sealed.headers).encode()


def open_state_value(value: bytes, *, keyring: Keyring, stored_ns: int) -> bytes:
    """The payload of a state value a coordinator signed; ValueError saying why it is foreign otherwise.

    The caller checks the payload names the key, partition and correlation it was read for.
    """
    opened = open_coordinator_value(value, keyring=keyring, stored_ns=stored_ns, kind="event", limits=_VALUE_LIMITS)
    if opened.envelope.content_type != "application/msgpack":
        raise ValueError(f"a coordinator's {opened.envelope.content_type} event, not a state value")
    return opened.envelope.payload
