"""The bounded decoder: depth and size are checked before msgspec parses, without recursion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustbus.bus import (
    Approval,
    Bounds,
    Malformed,
    MalformedPayload,
    decode_checkpoint,
    decode_decision,
    decode_decisions,
    decode_effect,
    decode_envelope,
    decode_json,
    decode_memory_value,
    decode_msgpack,
    decode_quarantine_record,
    encode_envelope,
    new_envelope,
)
from trustbus.bus._payload import check_json, check_msgpack, check_payload
from trustbus.bus._records import decode_memory_write
from trustbus.ledger import BundleError

DEPTHS = [1_000, 100_000]


def deep_json(depth: int) -> bytes:
    """Arrays nested ``depth`` deep (1,000 deep is about 2 KB)."""
    return b"[" * depth + b"]" * depth


def deep_json_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def deep_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\x90"  # fixarray of one, ..., an empty array


def deep_msgpack_maps(depth: int) -> bytes:
    return b"\xde\x00\x01\xa1k" * depth + b"\x80"  # map16 of one entry "k": ..., an empty map


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("body", [deep_json, deep_json_object])
def test_json_nested_deep_is_malformed_without_recursing(depth: int, body: Any) -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode_json(body(depth))
    assert caught.value.reason == "malformed"
    assert "nested deeper than 64 levels" in caught.value.detail


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("body", [deep_msgpack, deep_msgpack_maps])
def test_msgpack_nested_deep_is_malformed_without_recursing(depth: int, body: Any) -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode_msgpack(body(depth))
    assert caught.value.reason == "malformed"
    assert "nested deeper than 64 levels" in caught.value.detail


def test_the_depth_bound_is_exact_for_json_and_msgpack() -> None:
    bounds = Bounds(max_depth=5)
    assert decode_json(msgspec.json.encode(nested(5)), bounds=bounds) == nested(5)
    assert decode_msgpack(msgspec.msgpack.encode(nested(5)), bounds=bounds) == nested(5)
    with pytest.raises(MalformedPayload):
        decode_json(msgspec.json.encode(nested(6)), bounds=bounds)
    with pytest.raises(MalformedPayload):
        decode_msgpack(msgspec.msgpack.encode(nested(6)), bounds=bounds)


def test_brackets_inside_json_strings_do_not_count() -> None:
    text = b'{"a": "[[[[[[[[", "b": [1, {"c": "\\"[[[\\\\"}], "d": "}}}}"}'
    assert decode_json(text, bounds=Bounds(max_depth=3)) == msgspec.json.decode(text)


def test_containers_inside_msgpack_binaries_and_strings_do_not_count() -> None:
    value = {"bin": b"\x91" * 500, "str": "\x1f" * 300, "ext": msgspec.msgpack.Ext(1, b"\x91" * 100), "n": [1.5, -3]}
    body = msgspec.msgpack.encode(value)
    assert decode_msgpack(body, bounds=Bounds(max_depth=2)) == value


def test_size_bound_is_checked_before_parsing() -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode_json(b'"' + b"x" * 2_000 + b'"', bounds=Bounds(max_bytes=1_000))
    assert caught.value.detail == "2002 bytes, limit 1000"
    with pytest.raises(MalformedPayload):
        decode_msgpack(msgspec.msgpack.encode(b"x" * 2_000), bounds=Bounds(max_bytes=1_000))


def test_an_unterminated_string_of_escaped_quotes_is_scanned_in_linear_time() -> None:
    body = b'["' + b'\\"[' * 80_000  # no closing quote: a naive string pattern retries from every quote
    started = time.perf_counter()
    with pytest.raises(MalformedPayload):
        decode_json(body)
    assert time.perf_counter() - started < 5.0  # a quadratic scan takes minutes


def test_wide_payloads_at_the_envelope_size_limit_are_scanned_quickly() -> None:
    wide = msgspec.json.encode([{"a": [i, "x[y"]} for i in range(12_000)])  # about 250 KB, 24,000 containers
    started = time.perf_counter()
    decode_json(wide)
    decode_msgpack(msgspec.msgpack.encode(msgspec.json.decode(wide)))
    assert time.perf_counter() - started < 5.0  # about 0.05 s on an idle core


def test_bad_syntax_and_wrong_type_are_malformed_and_value_errors() -> None:
    for bad in (b"{", b"[1,]", b"nan", b"\xff"):
        with pytest.raises(MalformedPayload):
            decode_json(bad)
    with pytest.raises(ValueError):  # callers that handled msgspec.DecodeError still handle it
        decode_msgpack(b"\xc1")
    with pytest.raises(Malformed):
        decode_json(b'{"envelope_id": 1}', type=Approval)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary() | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    stack = [(value, 0)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            level += 1
            deepest = max(deepest, level)
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@settings(max_examples=300)
@given(json_values, st.integers(0, 6))
def test_json_within_the_bound_decodes_like_msgspec_and_beyond_it_is_refused(value: Any, bound: int) -> None:
    body = msgspec.json.encode(value)
    if _depth(value) <= bound:
        assert decode_json(body, bounds=Bounds(max_depth=bound)) == msgspec.json.decode(body)
    else:
        with pytest.raises(MalformedPayload):
            decode_json(body, bounds=Bounds(max_depth=bound))


@settings(max_examples=300)
@given(msgpack_values, st.integers(0, 6))
def test_msgpack_within_the_bound_decodes_like_msgspec_and_beyond_it_is_refused(value: Any, bound: int) -> None:
    body = msgspec.msgpack.encode(value)
    if _depth(value) <= bound:
        assert decode_msgpack(body, bounds=Bounds(max_depth=bound)) == msgspec.msgpack.decode(body)
    else:
        with pytest.raises(MalformedPayload):
            decode_msgpack(body, bounds=Bounds(max_depth=bound))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("field", ["to", "payload", "taint", "trace", "v", "unknown"])
def test_envelope_with_a_deeply_nested_field_is_malformed(depth: int, field: str) -> None:
    fields = msgspec.msgpack.decode(encode_envelope(new_envelope(tenant="acme", kind="event", sender="a", to=["b"])))
    with pytest.raises(Malformed):
        decode_envelope(_with_field(fields, field, deep_msgpack(depth)))


def _with_field(fields: dict[str, Any], name: str, raw_value: bytes) -> bytes:
    """A msgpack map of ``fields`` with ``name``'s value replaced by ``raw_value`` (already encoded)."""
    items = [(k, v) for k, v in fields.items() if k != name]
    body = bytes([0x80 | (len(items) + 1)])
    for k, v in items:
        body += msgspec.msgpack.encode(k) + msgspec.msgpack.encode(v)
    return body + msgspec.msgpack.encode(name) + raw_value


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_record_decoder_refuses_deep_nesting(depth: int) -> None:
    for decode in (
        decode_decision,
        decode_decisions,
        decode_effect,
        decode_memory_value,
        decode_checkpoint,
        decode_quarantine_record,
    ):
        with pytest.raises(MalformedPayload):
            decode(b"\x81\xa1x" + deep_msgpack(depth))
    with pytest.raises(MalformedPayload):  # a group's record: an array
        decode_decisions(b"\x92\x01" + deep_msgpack(depth))
    with pytest.raises(MalformedPayload):
        decode_memory_write(b'{"key": "k", "expected_revision": 0, "value": ' + deep_json(depth) + b"}")
    with pytest.raises(MalformedPayload):
        Approval.decode(b'{"envelope_id": ' + deep_json(depth) + b"}")


def test_valid_records_and_envelopes_still_decode() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="a", to=["b", "c"], taint=["web"], payload=b"\x91" * 300)
    assert decode_envelope(encode_envelope(env)) == env
    write = decode_memory_write(b'{"key": "k", "expected_revision": 0, "value": {"a": [[1]]}}')
    assert bytes(write.value) == b'{"a": [[1]]}'
    assert Approval.decode(Approval(envelope_id="x", verdict="deny").encode()).verdict == "deny"


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_bundle_file_nested_deep_is_damaged_not_a_crash(tmp_path: Path, depth: int) -> None:
    from trustbus.ledger._bundle import FORMAT, read_bundle

    (tmp_path / "keyring.msgpack").write_bytes(msgspec.msgpack.encode([]))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    (tmp_path / "messages.msgpack").write_bytes(deep_msgpack(depth))
    with pytest.raises(BundleError, match="is damaged"):
        read_bundle(tmp_path)
    (tmp_path / "manifest.json").write_bytes(deep_json(depth))
    with pytest.raises(BundleError, match="is damaged"):
        read_bundle(tmp_path)


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_keyring_value_nested_deep_is_a_keyring_error(depth: int) -> None:
    from trustbus.bus import KeyringError
    from trustbus.bus._keyring import decode_signed_grant

    with pytest.raises(KeyringError, match="nested deeper than 64"):
        decode_signed_grant(deep_msgpack(depth))


def test_a_handler_that_cannot_parse_its_payload_quarantines_it_as_malformed_not_handler_error() -> None:
    from trustbus.bus import rejection

    with pytest.raises(MalformedPayload) as caught:
        decode_json(b"{not json")
    assert rejection(caught.value) == ("malformed", caught.value.detail)
    assert rejection(RuntimeError("boom")) == ("handler_error", "RuntimeError: boom")


@pytest.mark.parametrize("depth", DEPTHS)
def test_the_cli_renders_a_deeply_nested_payload_as_base64_saying_why(depth: int) -> None:
    from trustbus._render import payload_value

    for content_type, payload in (("application/json", deep_json(depth)), ("application/msgpack", deep_msgpack(depth))):
        envelope = new_envelope(
            tenant="acme", kind="event", sender="a", to=["b"], payload=payload, content_type=content_type
        )
        shown = payload_value(envelope)
        assert "nested deeper than 64 levels" in shown["malformed"] and shown["base64"]
    shallow = new_envelope(tenant="acme", kind="event", sender="a", to=["b"], payload=b'{"a": [[1]]}')
    assert payload_value(shallow) == {"a": [[1]]}


def _check_payload_by_parts(content_type: str, payload: bytes, bounds: Bounds) -> None:
    """check_payload as check_json and check_msgpack, each failure's detail prefixed with the content type."""
    try:
        if content_type == "application/json":
            check_json(payload, bounds)
        elif content_type == "application/msgpack":
            check_msgpack(payload, bounds)
    except MalformedPayload as exc:
        raise MalformedPayload(f"{content_type} payload: {exc.detail}") from None


def _outcome(check: Any, *args: Any) -> str | None:
    try:
        check(*args)
    except MalformedPayload as exc:
        return exc.detail
    return None


_nested_json = st.integers(min_value=0, max_value=8).map(lambda depth: json.dumps(nested(depth)).encode())
_nested_msgpack = st.integers(min_value=0, max_value=8).map(lambda depth: msgspec.msgpack.encode(nested(depth)))


@settings(max_examples=400, deadline=None)
@given(
    content_type=st.sampled_from(["application/json", "application/msgpack", "text/plain"]),
    payload=st.binary(max_size=64) | _nested_json | _nested_msgpack | st.just(deep_msgpack(70) + b"\x90"),
    max_depth=st.integers(min_value=0, max_value=6),
    max_bytes=st.integers(min_value=0, max_value=80),
)
def test_check_payload_refuses_what_check_json_and_check_msgpack_refuse_in_their_words(
    content_type: str, payload: bytes, max_depth: int, max_bytes: int
) -> None:
    bounds = Bounds(max_depth=max_depth, max_bytes=max_bytes)
    assert _outcome(check_payload, content_type, payload, bounds) == _outcome(
        _check_payload_by_parts, content_type, payload, bounds
    )
