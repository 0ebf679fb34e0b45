"""Foreign content: an empty message or a value no one signed is refused as ``foreign``, never a crash."""

from __future__ import annotations

import json

import msgspec
import pytest

from trustbus.agents._partitions import _holder_of
from trustbus.agents._signed_value import open_checkpoint
from trustbus.bus import Identity, KeyGrant, Keyring, VerificationError, new_envelope, open_envelope, seal, sign_grant

T = "acme"
NOW = 1_800_000_000 * 10**9


def _world() -> tuple[Keyring, dict[str, Identity]]:
    admin = Identity.generate()
    keyring = Keyring(tenant=T, admin_key_id=admin.key_id)
    people = {"counter": Identity.generate(), "mallory": Identity.generate()}
    for owner, identity in people.items():
        grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role="agent", valid_from=NOW - 10**12)
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


def test_a_lease_value_is_a_holder_only_if_a_coordinator_could_have_written_it() -> None:
    assert _holder_of(b'{"name": "c1", "instance": "ab"}') == ("c1", "ab")
    for foreign in (b"", b"not json", b"[]", b'{"name": 1, "instance": "ab"}', b'{"name": "c1"}'):
        assert _holder_of(foreign) is None
