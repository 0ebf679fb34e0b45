"""Reading the server's MAX_DELIVERIES advisories (pure): what the ledger records, and what it refuses to."""

from __future__ import annotations

import json

import pytest

from trustbus.ledger._given_up import GivenUp

ADVISORY = {
    "type": "io.nats.jetstream.advisory.v1.max_deliver",
    "id": "x",
    "timestamp": "2026-11-22T05:14:40.9Z",
    "stream": "TB_acme",
    "consumer": "in-billing",
    "stream_seq": 42,
    "deliveries": 5,
}


def test_an_advisory_names_the_message_the_consumer_and_the_deliveries() -> None:
    assert GivenUp.parse(json.dumps(ADVISORY).encode()) == GivenUp("TB_acme", "in-billing", 42, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({**ADVISORY, "type": "io.nats.jetstream.advisory.v1.terminated"}).encode(),
        json.dumps({k: v for k, v in ADVISORY.items() if k != "stream_seq"}).encode(),
        json.dumps({**ADVISORY, "stream_seq": "many"}).encode(),
        json.dumps({**ADVISORY, "stream_seq": 0}).encode(),
    ],
    ids=["not-json", "not-an-object", "another-advisory", "no-sequence", "sequence-not-a-number", "sequence-zero"],
)
def test_anything_else_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a max_deliver advisory"):
        GivenUp.parse(body)
