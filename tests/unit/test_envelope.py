"""The envelope codec and ids."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustbus.bus import (
    ConfigError,
    Malformed,
    UnsupportedVersion,
    decode_envelope,
    encode_envelope,
    new_envelope,
    new_id,
)

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
        decode_envelope(msgspec.msgpack.encode({**fields, "v": 3}))
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


# The schema is exactly docs/WIRE.md's: every key, names without a final newline, taint sorted and unique.

_ENC = msgspec.msgpack.Encoder()
KEYS = [
    "v", "id", "tenant", "kind", "sender", "to", "ts", "correlation_id", "causation_id",
    "hop", "taint", "idempotency_key", "content_type", "payload",
]  # fmt: skip


def _fields(**changes: object) -> dict[str, object]:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], taint=["email", "web"])
    return {**msgspec.msgpack.decode(encode_envelope(env)), **changes}


def test_the_canonical_envelope_decodes_and_so_does_a_map16_header() -> None:
    fields = _fields()
    assert decode_envelope(_ENC.encode(fields)).taint == ("email", "web")
    entries = b"".join(_ENC.encode(k) + _ENC.encode(v) for k, v in fields.items())
    assert decode_envelope(b"\xde\x00\x0e" + entries).sender == "alice"


@pytest.mark.parametrize("key", KEYS)
def test_an_envelope_missing_any_key_is_malformed(key: str) -> None:
    fields = _fields()
    del fields[key]
    with pytest.raises(Malformed):
        decode_envelope(_ENC.encode(fields))


def test_a_repeated_key_is_malformed() -> None:
    """A second `kind` would otherwise win silently: one decoder would read event, another decision."""
    items = [*_fields().items(), ("kind", "decision")]
    body = b"\x8f" + b"".join(_ENC.encode(k) + _ENC.encode(v) for k, v in items)
    with pytest.raises(Malformed, match="exactly 14"):
        decode_envelope(body)


@pytest.mark.parametrize(
    "change",
    [
        {"to": ["notes\n"]},
        {"to": ["topic:news\n"]},
        {"sender": "alice\n"},
        {"tenant": "acme\n"},
        {"taint": ["web\n"]},
    ],
)
def test_a_name_with_a_final_newline_is_malformed(change: dict[str, object]) -> None:
    """`$` matches before a final newline; the patterns end in `\\Z`."""
    with pytest.raises(Malformed):
        decode_envelope(_ENC.encode(_fields(**change)))


def test_new_envelope_refuses_a_recipient_with_a_final_newline() -> None:
    with pytest.raises(ConfigError):
        new_envelope(tenant="acme", kind="event", sender="alice", to=["notes\n"])


@pytest.mark.parametrize("taint", [["web", "email"], ["web", "web"], ["email", "email", "web"]])
def test_unsorted_or_repeated_taint_is_malformed(taint: list[str]) -> None:
    with pytest.raises(Malformed, match="taint"):
        decode_envelope(_ENC.encode(_fields(taint=taint)))


def test_a_repeated_recipient_is_malformed_and_new_envelope_drops_repeats() -> None:
    with pytest.raises(Malformed, match="recipient"):
        decode_envelope(_ENC.encode(_fields(to=["bob", "bob"])))
    assert new_envelope(tenant="acme", kind="event", sender="a", to=["bob", "carol", "bob"]).to == ("bob", "carol")


@pytest.mark.parametrize("change", [{"ts": -1}, {"ts": 2**63}, {"hop": -1}, {"hop": 2**63}])
def test_ts_and_hop_outside_int64_are_malformed(change: dict[str, object]) -> None:
    with pytest.raises(Malformed):
        decode_envelope(_ENC.encode(_fields(**change)))


@given(st.sets(st.sampled_from(KEYS)))
def test_only_the_complete_key_set_decodes(dropped: set[str]) -> None:
    fields = {k: v for k, v in _fields().items() if k not in dropped}
    try:
        decode_envelope(_ENC.encode(fields))
    except (Malformed, UnsupportedVersion):
        assert dropped
    else:
        assert not dropped


_LABELS = st.from_regex(r"[a-z][a-z0-9:]{0,6}", fullmatch=True)


@given(st.lists(_LABELS, max_size=6))
def test_taint_decodes_exactly_when_sorted_and_unique(taint: list[str]) -> None:
    body = _ENC.encode(_fields(taint=taint))
    if taint == sorted(set(taint)):
        assert list(decode_envelope(body).taint) == taint
    else:
        with pytest.raises(Malformed):
            decode_envelope(body)


@given(st.text(min_size=1, max_size=70))
def test_a_recipient_decodes_exactly_when_it_fully_matches_the_name_pattern(name: str) -> None:
    body = _ENC.encode(_fields(to=[name]))
    if re.fullmatch(r"(topic:)?[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        assert decode_envelope(body).to == (name,)
    else:
        with pytest.raises(Malformed):
            decode_envelope(body)
