"""Foreign content: an empty message or a value no one signed is refused as ``foreign``, never a crash."""

from __future__ import annotations

import json

import msgspec
import pytest

from trustbus.agents._signed_value import open_checkpoint
from trustbus.bus import (
    Identity,
    KeyGrant,
    Keyring,
    MemoryValue,
    VerificationError,
    memory_value,
    new_envelope,
    open_envelope,
    open_memory_value,
    seal,
    sign_grant,
)

T = "acme"
NOW = 1_800_000_000 * 10**9


def _world() -> tuple[Keyring, dict[str, Identity]]:
    admin = Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    people = {"counter": Identity.generate(), "mallory": Identity.generate(), "coordinator": Identity.generate()}
    for owner, identity in people.items():
        role = "coordinator" if owner == "coordinator" else "agent"
        grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=NOW - 10**12)
        keyring.add(identity.key_id, sign_grant(grant, admin))
    return keyring, people


def _stored_checkpoint(identity: Identity, sender: str, state: object, kind: str = "checkpoint") -> bytes:
    envelope = new_envelope(tenant=T, kind=kind, sender=sender, to=(sender,), payload=json.dumps(state).encode(),  # type: ignore[arg-type]
                            now_ns=NOW)  # fmt: skip
    sealed = seal(envelope, identity)
    return msgspec.msgpack.encode({"body": sealed.body, "headers": sealed.headers})


def test_an_empty_message_is_foreign_before_anything_is_parsed() -> None:
    keyring, _ = _world()
    with pytest.raises(VerificationError) as refused:
        open_envelope(b"", None, keyring=keyring, received_ns=NOW)
    assert refused.value.reason == "foreign"


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00garbage", msgspec.msgpack.encode({"body": b"", "headers": {}}), "mallory's", "an event"],
)
def test_a_foreign_checkpoint_value_is_refused_with_why(value: object) -> None:
    keyring, people = _world()
    if value == "mallory's":
        value = _stored_checkpoint(people["mallory"], "mallory", {"count": 99})
    elif value == "an event":
        value = _stored_checkpoint(people["counter"], "counter", {"count": 99}, kind="event")
    with pytest.raises(ValueError):
        open_checkpoint(value, keyring=keyring, agent_id="counter", stored_ns=NOW)  # type: ignore[arg-type]


def test_the_agents_own_checkpoint_opens() -> None:
    """The twin: the agent's own signed checkpoint is its state."""
    keyring, people = _world()
    value = _stored_checkpoint(people["counter"], "counter", {"count": 3})
    assert open_checkpoint(value, keyring=keyring, agent_id="counter", stored_ns=NOW) == {"count": 3}


def _memory(key: str, **claims: object) -> MemoryValue:
    fields: dict[str, object] = {"value": b'"gold"', "envelope_id": "e1", "writer": "counter", "effective_taint": (),
                                 "decision_id": "d1", **claims}  # fmt: skip
    return MemoryValue(key=key, **fields)  # type: ignore[arg-type]


def test_the_coordinators_memory_value_opens_at_its_key() -> None:
    """The twin: a value the coordinator signed for this key is read."""
    keyring, people = _world()
    value = memory_value(people["coordinator"], "coordinator", _memory("counter.tier"), tenant=T, now_ns=NOW)
    opened = open_memory_value(value, keyring=keyring, key="counter.tier", stored_ns=NOW)
    assert opened == _memory("counter.tier")
    # Judged by its store time alone: a coordinator whose clock was stepped still writes what is believed.
    stepped = memory_value(people["coordinator"], "coordinator", _memory("counter.tier"), tenant=T, now_ns=NOW + 10**12)
    assert open_memory_value(stepped, keyring=keyring, key="counter.tier", stored_ns=NOW) == opened


@pytest.mark.parametrize(
    ("planted", "why"),
    [
        ("unsigned", "not a signed value"),
        ("unsigned, wrapped", "not a signed value"),
        ("agent-signed", "agent key, not a coordinator's"),
        ("copied from another key", "the value of counter.other, not of counter.tier"),
        ("copied from another agent", "the value of mallory.tier, not of counter.tier"),
        ("another kind", "a coordinator's event, not its memory_write"),
    ],
)
def test_a_memory_value_no_coordinator_signed_for_its_key_is_refused_with_why(planted: str, why: str) -> None:
    keyring, people = _world()
    coordinator = people["coordinator"]
    if planted == "unsigned":  # well-formed, as values were stored before they were signed
        value = msgspec.msgpack.encode({"v": 1, **msgspec.structs.asdict(_memory("counter.tier"))})
    elif planted == "unsigned, wrapped":
        sealed = seal(new_envelope(tenant=T, kind="memory_write", sender="coordinator", to=("counter",),
                                   payload=msgspec.msgpack.encode(_memory("counter.tier")),
                                   content_type="application/msgpack", now_ns=NOW), coordinator)  # fmt: skip
        value = msgspec.msgpack.encode({"body": sealed.body, "headers": {}})
    elif planted == "agent-signed":
        value = memory_value(people["counter"], "counter", _memory("counter.tier"), tenant=T, now_ns=NOW)
    elif planted == "copied from another key":
        value = memory_value(coordinator, "coordinator", _memory("counter.other"), tenant=T, now_ns=NOW)
    elif planted == "copied from another agent":
        value = memory_value(coordinator, "coordinator", _memory("mallory.tier"), tenant=T, now_ns=NOW)
    else:
        envelope = new_envelope(tenant=T, kind="event", sender="coordinator", to=("counter",),
                                payload=msgspec.msgpack.encode(_memory("counter.tier")),
                                content_type="application/msgpack", now_ns=NOW)  # fmt: skip
        sealed = seal(envelope, coordinator)
        value = msgspec.msgpack.encode({"body": sealed.body, "headers": sealed.headers})
    with pytest.raises(ValueError, match=why):
        open_memory_value(value, keyring=keyring, key="counter.tier", stored_ns=NOW)


def test_a_memory_value_signed_before_its_key_was_a_coordinators_is_refused() -> None:
    """Roles are judged when the value was stored: a key granted the role later does not vouch for it."""
    keyring, people = _world()
    value = memory_value(people["coordinator"], "coordinator", _memory("counter.tier"), tenant=T, now_ns=NOW)
    with pytest.raises(ValueError, match="valid from"):
        open_memory_value(value, keyring=keyring, key="counter.tier", stored_ns=NOW - 2 * 10**12)
