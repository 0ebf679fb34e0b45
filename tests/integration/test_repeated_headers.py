"""A signed header sent twice in one message is malformed for every reader.

nats-py folds a repeated header name into one value (the last line wins), so a
message with two ``Tb-Sig`` or two ``Tb-Decision`` lines would read differently
to different clients. The messages here are published over the raw NATS
protocol, which lets a client repeat a header line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import urlsplit

from tests.conftest import Tenant
from trustbus.bus import (
    Bus,
    ConsumerSettings,
    Identity,
    countersign,
    decode_quarantine_record,
    new_envelope,
    open_envelope,
    subjects,
)
from trustbus.bus._headers import parse_header_lines
from trustbus.bus._seal import SIGNATURE_DOMAIN

FAST = ConsumerSettings(fetch_timeout_s=0.5, backoff_s=(0.05,), max_deliver=3)


async def publish_raw(url: str, subject: str, headers: list[tuple[str, str]], body: bytes) -> None:
    """Publish with these header lines, in this order, repeats and all, over the raw protocol."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    await reader.readline()  # INFO
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
    connect = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
    writer.write(f"CONNECT {json.dumps(connect)}\r\n".encode())
    writer.write(f"HPUB {subject} {len(block)} {len(block) + len(body)}\r\n".encode() + block + body + b"\r\n")
    writer.write(b"PING\r\n")
    await writer.drain()
    while (line := await reader.readline()) != b"PONG\r\n":
        assert not line.startswith(b"-ERR"), line
    writer.close()
    await writer.wait_closed()


async def consume_until(bus: Bus, durable: str, until_id: str, *, recipient: str | None = None) -> list[str]:
    """Ids of the envelopes the consumer hands out, up to ``until_id``."""
    seen: list[str] = []

    async def run() -> None:
        async for delivery in bus.consume(durable, settings=FAST, recipient=recipient):
            async with delivery.process():
                seen.append(delivery.envelope.id)
            if delivery.envelope.id == until_id:
                return

    await asyncio.wait_for(run(), 15)
    return seen


async def quarantined(tenant: Tenant, n: int) -> list[tuple[str, str]]:
    """(reason, detail) of the first ``n`` quarantine records."""
    out: list[tuple[str, str]] = []
    for seq in range(1, (await tenant.js.stream_info(f"TB_{tenant.name}")).state.last_seq + 1):
        raw = await tenant.js.get_msg(f"TB_{tenant.name}", seq)
        if raw.subject != subjects.quarantine(tenant.name):
            continue
        opened = open_envelope(raw.data or b"", raw.headers, keyring=tenant.keyring.keyring, received_ns=time.time_ns())
        record = decode_quarantine_record(opened.envelope.payload)
        out.append((record.reason, record.detail))
    assert len(out) == n, out
    return out


def test_the_header_parser_keeps_a_repeated_name_visible() -> None:
    parsed = parse_header_lines(b"Tb-Sig: a\r\nTb-Key: k\r\nTb-Sig: b\r\nbad name: x\r\n\r\n")
    assert parsed == {"Tb-Sig": "a\r\nb", "Tb-Key": "k"}


async def test_an_envelope_with_its_signature_header_sent_twice_is_quarantined_as_malformed(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    reader = await tenant.bus("reader")
    outbox = subjects.outbox(tenant.name, "alice", 0)
    await reader.ensure_consumer("reader", outbox, settings=FAST)
    attacks = []
    for valid_first in (True, False):
        sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
        signature = sealed.headers["Tb-Sig"]
        forged = base64.b64encode(Identity.generate().sign(SIGNATURE_DOMAIN + sealed.body)).decode()
        sigs = [signature, forged] if valid_first else [forged, signature]
        lines = [("Nats-Msg-Id", sealed.envelope.id), ("Tb-Key", sealed.headers["Tb-Key"])]
        await publish_raw(tenant.url, outbox, lines + [("Tb-Sig", s) for s in sigs], sealed.body)
        attacks.append(sealed.envelope.id)
    twin = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
    await publish_raw(tenant.url, outbox, list(twin.headers.items()), twin.body)  # each header once: flows

    assert await consume_until(reader, "reader", twin.envelope.id) == [twin.envelope.id]
    stored = await reader.log(outbox).get(1)  # a message get (email.parser in nats-py) keeps it too
    assert (stored.headers or {})["Tb-Sig"].count("\r\n") == 1
    assert (
        await quarantined(tenant, 2) == [("malformed", "repeated Tb-Sig header: a signed header must appear once")] * 2
    )


async def test_a_delivery_with_a_repeated_countersignature_or_decision_is_refused_by_its_recipient(
    tenant: Tenant,
) -> None:
    alice, bob = await tenant.bus("alice"), await tenant.bus("bob")
    coordinator = await tenant.add("coordinator", role="coordinator")
    inbox = subjects.inbox(tenant.name, "bob")
    await bob.ensure_consumer("in-bob", inbox, settings=FAST)

    def delivery(decision_id: str) -> tuple[str, bytes, dict[str, str]]:
        sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
        csig = countersign(
            sealed.body, recipient="bob", decision_id=decision_id, effective_taint=(), coordinator=coordinator
        )
        return sealed.envelope.id, sealed.body, {**sealed.headers, **csig}

    for repeated in ("Tb-Csig", "Tb-Decision"):
        _, body, headers = delivery("d-mine")
        other = countersign(body, recipient="bob", decision_id="d-other", effective_taint=(), coordinator=coordinator)
        lines = [(k, v) for k, v in headers.items() if k != repeated]
        await publish_raw(tenant.url, inbox, [*lines, (repeated, headers[repeated]), (repeated, other[repeated])], body)
    twin_id, body, headers = delivery("d-twin")
    await publish_raw(tenant.url, inbox, list(headers.items()), body)

    assert await consume_until(bob, "in-bob", twin_id, recipient="bob") == [twin_id]
    assert [detail.split(":")[0] for _, detail in await quarantined(tenant, 2)] == [
        "repeated Tb-Csig header",
        "repeated Tb-Decision header",
    ]

    # tail (and so the CLI's tail) reads the stream the same way: refused, malformed.
    items = []
    async for item in bob.reader().tail(subject=inbox, idle_timeout_s=2):
        items.append(item)
    assert [item.error.reason if item.error else "ok" for item in items] == ["malformed", "malformed", "ok"]
