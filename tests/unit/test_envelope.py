"""The envelope codec and ids."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import ConfigError, Malformed, UnsupportedVersion, decode_envelope, encode_envelope, new_envelope, new_id

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [new_id(now_ns=1_700_000_000_000_000_000 + i * 1_000) for i in range(200)]
    assert all(UUID7.match(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_envelope_starts_a_correlation_and_sorts_taint() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], taint=["web", "email", "web"])
    assert env.correlation_id == env.id
    assert env.taint == ("email", "web")
    assert env.v == 1


def test_field_names_are_the_wire_contract() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"])
    assert list(msgspec.msgpack.decode(encode_envelope(env))) == [
        "v", "id", "tenant", "kind", "sender", "to", "ts", "correlation_id", "causation_id",
        "hop", "taint", "idempotency_key", "content_type", "payload",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "with space", "", "x" * 65])
def test_names_that_would_widen_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        new_envelope(tenant="acme", kind="event", sender=bad, to=["bob"])
    with pytest.raises(ConfigError):
        new_envelope(tenant="acme", kind="event", sender="alice", to=[bad])


def test_topic_recipients_are_allowed() -> None:
    assert new_envelope(tenant="acme", kind="event", sender="a", to=["topic:news"]).to == ("topic:news",)


def test_unknown_version_and_garbage_have_distinct_errors() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"])
    fields = msgspec.msgpack.decode(encode_envelope(env))
    with pytest.raises(UnsupportedVersion):
        decode_envelope(msgspec.msgpack.encode({**fields, "v": 2}))
    with pytest.raises(Malformed):
        decode_envelope(msgspec.msgpack.encode({**fields, "extra": 1}))
    with pytest.raises(Malformed):
        decode_envelope(b"\x00\x01garbage")


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_anything_but_a_verification_error(data: bytes) -> None:
    try:
        decode_envelope(data)
    except (Malformed, UnsupportedVersion):
        pass
