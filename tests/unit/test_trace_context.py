"""Trace context inside the envelope: version 2, a strict W3C format, version 1 unchanged (docs/WIRE.md)."""

from __future__ import annotations

import msgspec
import pytest

from trustbus.bus import (
    HEADER_TRACEPARENT,
    ConfigError,
    Identity,
    Malformed,
    decode_envelope,
    encode_envelope,
    new_envelope,
    seal,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_ENC = msgspec.msgpack.Encoder()


def _fields(**changes: object) -> dict[str, object]:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"])
    return {**msgspec.msgpack.decode(encode_envelope(env)), **changes}


def _v2(trace: list[str]) -> bytes:
    return _ENC.encode(_fields(v=2, trace=trace))


def test_no_trace_context_is_a_version_1_envelope_of_14_keys_and_no_header() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"])
    assert env.v == 1 and env.trace is None and env.traceparent is None
    assert list(msgspec.msgpack.decode(encode_envelope(env)))[-1] == "payload"
    assert HEADER_TRACEPARENT not in seal(env, Identity.generate()).headers


def test_trace_context_makes_version_2_signed_with_the_body_and_repeated_in_a_header() -> None:
    env = new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], trace=(PARENT, "congo=t61rcWkgMzE"))
    assert env.v == 2 and env.traceparent == PARENT
    fields = msgspec.msgpack.decode(encode_envelope(env))
    assert len(fields) == 15 and fields["trace"] == [PARENT, "congo=t61rcWkgMzE"]
    assert decode_envelope(encode_envelope(env)) == env
    assert seal(env, Identity.generate()).headers[HEADER_TRACEPARENT] == PARENT


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # uppercase
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # another version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n",  # final newline
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",  # short trace id
        "",
    ],
)
def test_a_malformed_traceparent_is_malformed(traceparent: str) -> None:
    with pytest.raises(Malformed):
        decode_envelope(_v2([traceparent, ""]))
    with pytest.raises(ConfigError):
        new_envelope(tenant="acme", kind="event", sender="alice", to=["bob"], trace=(traceparent, ""))


@pytest.mark.parametrize(
    "tracestate",
    [
        "Congo=t61",  # uppercase key
        "congo=",  # empty value
        "congo=a=b,",  # empty member
        "congo=1,congo=2",  # a key twice
        ",".join(f"k{i}=v" for i in range(33)),  # too many members
        "k=" + "v" * 600,  # too long
        "congo=t61\n",
    ],
)
def test_a_malformed_tracestate_is_malformed(tracestate: str) -> None:
    with pytest.raises(Malformed):
        decode_envelope(_v2([PARENT, tracestate]))


@pytest.mark.parametrize("tracestate", ["", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7, tenant@vendor=x y"])
def test_a_well_formed_tracestate_decodes(tracestate: str) -> None:
    assert decode_envelope(_v2([PARENT, tracestate])).trace == (PARENT, tracestate)


@pytest.mark.parametrize(
    "fields",
    [
        {"trace": [PARENT, ""]},  # version 1 with a trace key
        {"v": 2},  # version 2 without one
        {"v": 2, "trace": None},  # nor a nil one
        {"v": 2, "trace": [PARENT]},  # a trace without its tracestate
        {"v": 2, "trace": [PARENT, "", ""]},
        {"v": 2, "trace": {"traceparent": PARENT, "tracestate": ""}},
    ],
)
def test_the_trace_key_belongs_to_version_2_and_only_in_its_form(fields: dict[str, object]) -> None:
    with pytest.raises(Malformed):
        decode_envelope(_ENC.encode(_fields(**fields)))
