"""The hash chain formula, pinned, and sensitive to every covered field."""

from __future__ import annotations

import hashlib

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from trustbus.ledger import CHAIN_DOMAIN, GENESIS, chain_hash, chained_headers

HEADERS = {"Tb-Sig": "c2ln", "Tb-Key": "UABC", "Nats-Msg-Id": "id-1", "Nats-Expected-Stream": "TB_x"}


def test_formula_is_the_documented_one() -> None:
    entry = msgspec.msgpack.encode(
        [7, "tb.x.out.a", [["Nats-Msg-Id", "id-1"], ["Tb-Key", "UABC"], ["Tb-Sig", "c2ln"]], b"body"]
    )
    assert (
        chain_hash(GENESIS, 7, "tb.x.out.a", HEADERS, b"body")
        == hashlib.sha256(CHAIN_DOMAIN + GENESIS + entry).digest()
    )


def test_only_signature_headers_and_the_message_id_are_chained() -> None:
    assert chained_headers(HEADERS) == [["Nats-Msg-Id", "id-1"], ["Tb-Key", "UABC"], ["Tb-Sig", "c2ln"]]
    with_extra = {**HEADERS, "Nats-Expected-Last-Subject-Sequence": "4"}
    assert chain_hash(GENESIS, 1, "s", with_extra, b"") == chain_hash(GENESIS, 1, "s", HEADERS, b"")


@given(
    seq=st.integers(min_value=1, max_value=2**40),
    subject=st.text(min_size=1, max_size=40),
    body=st.binary(max_size=200),
    sig=st.text(max_size=20),
    field=st.sampled_from(["prev", "seq", "subject", "body", "sig"]),
)
def test_changing_any_covered_field_changes_the_hash(seq: int, subject: str, body: bytes, sig: str, field: str) -> None:
    base = chain_hash(GENESIS, seq, subject, {"Tb-Sig": sig}, body)
    changed = {
        "prev": lambda: chain_hash(b"\x01" * 32, seq, subject, {"Tb-Sig": sig}, body),
        "seq": lambda: chain_hash(GENESIS, seq + 1, subject, {"Tb-Sig": sig}, body),
        "subject": lambda: chain_hash(GENESIS, seq, subject + "x", {"Tb-Sig": sig}, body),
        "body": lambda: chain_hash(GENESIS, seq, subject, {"Tb-Sig": sig}, body + b"x"),
        "sig": lambda: chain_hash(GENESIS, seq, subject, {"Tb-Sig": sig + "x"}, body),
    }[field]()
    assert changed != base
