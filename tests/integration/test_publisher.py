"""Pipelined publishing: a lost ack is re-sent under the same id, and a failure is never silent."""

from __future__ import annotations

import asyncio
import json

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from trustbus.bus import EmbeddedServer, TransportError
from trustbus.bus._publisher import Publisher
from trustbus.bus._translate import unavailable


async def test_failed_pipelined_publish_is_reported_by_flush(nats_server: EmbeddedServer) -> None:
    nc = await nats.connect(nats_server.url)
    # no stream answers: "no responders", re-sent like a leaderless stream until unavailable_s runs out
    publisher = Publisher(nc.jetstream(), max_in_flight=8, timeout_s=1.0, unavailable_s=0.3)
    try:
        ack = await publisher.start("no.stream.here", b"x", {"Nats-Msg-Id": "m1"})
        with pytest.raises(TransportError, match="1 publish"):
            await publisher.flush(timeout_s=5)
        assert isinstance(ack.exception(), TransportError)
        await publisher.flush(timeout_s=5)  # reported once, then cleared
    finally:
        await publisher.aclose()
        await nc.close()


async def test_lost_ack_is_resent_with_the_same_msg_id(nats_server: EmbeddedServer) -> None:
    """A responder standing in for a stream that stores the first attempt but whose ack is lost."""
    nc = await nats.connect(nats_server.url)
    attempts: list[str] = []

    async def flaky_stream(msg: Msg) -> None:
        attempts.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        if len(attempts) > 1:  # the first ack is "lost"; the re-send is answered as a duplicate
            await msg.respond(json.dumps({"stream": "S", "seq": 1, "duplicate": True}).encode())

    await nc.subscribe("flaky.subject", cb=flaky_stream)
    publisher = Publisher(nc.jetstream(), max_in_flight=8, timeout_s=0.3)
    try:
        ack = await publisher.start("flaky.subject", b"x", {"Nats-Msg-Id": "same-id"})
        result = await asyncio.wait_for(ack, 10)
        await publisher.flush(timeout_s=5)
        assert attempts == ["same-id", "same-id"]
        assert result.seq == 1 and result.duplicate
    finally:
        await publisher.aclose()
        await nc.close()


def test_what_counts_as_a_stream_without_a_leader() -> None:
    assert unavailable(nats.js.errors.ServiceUnavailableError())  # a 503 status on a fetch carries no code
    assert unavailable(nats.js.errors.APIError(code=503, err_code=10008))
    assert unavailable(nats.js.errors.NoStreamResponseError()) and unavailable(nats.errors.NoRespondersError())
    assert not unavailable(nats.js.errors.APIError(code=400, err_code=10071))  # wrong last sequence: final
    assert not unavailable(nats.errors.TimeoutError())  # retried, but counted, not paced


async def test_stream_without_a_leader_is_retried_with_the_same_msg_id(nats_server: EmbeddedServer) -> None:
    """A stream in a leader election answers 503 at once; the publish is re-sent until a leader answers."""
    nc = await nats.connect(nats_server.url)
    attempts: list[str] = []
    unavailable = {"error": {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"}}

    async def electing_stream(msg: Msg) -> None:
        attempts.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        answer = unavailable if len(attempts) < 3 else {"stream": "S", "seq": 7}
        await msg.respond(json.dumps(answer).encode())

    await nc.subscribe("electing.subject", cb=electing_stream)
    publisher = Publisher(nc.jetstream(), max_in_flight=8, timeout_s=1.0)
    try:
        ack = await publisher.start("electing.subject", b"x", {"Nats-Msg-Id": "same-id"})
        result = await asyncio.wait_for(ack, 10)
        await publisher.flush(timeout_s=5)
        assert attempts == ["same-id"] * 3
        assert result.seq == 7
    finally:
        await publisher.aclose()
        await nc.close()


async def test_unavailable_stream_fails_after_the_retry_window(nats_server: EmbeddedServer) -> None:
    nc = await nats.connect(nats_server.url)
    attempts: list[str] = []

    async def down(msg: Msg) -> None:
        attempts.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        await msg.respond(json.dumps({"error": {"code": 503, "description": "no leader"}}).encode())

    await nc.subscribe("down.subject", cb=down)
    publisher = Publisher(nc.jetstream(), max_in_flight=8, timeout_s=1.0, unavailable_s=0.5)
    try:
        ack = await publisher.start("down.subject", b"x", {"Nats-Msg-Id": "m"})
        with pytest.raises(TransportError, match="re-sends"):
            await asyncio.wait_for(ack, 10)
        assert 3 <= len(attempts) <= 12 and set(attempts) == {"m"}  # paced, not a busy loop
    finally:
        await publisher.aclose()
        await nc.close()


async def test_ack_that_never_comes_fails_after_bounded_resends(nats_server: EmbeddedServer) -> None:
    nc = await nats.connect(nats_server.url)
    seen: list[bytes] = []

    async def black_hole(msg: Msg) -> None:
        seen.append(msg.data)

    await nc.subscribe("black.hole", cb=black_hole)
    publisher = Publisher(nc.jetstream(), max_in_flight=1, timeout_s=0.2)
    try:
        ack = await publisher.start("black.hole", b"x", {"Nats-Msg-Id": "m"})
        with pytest.raises(TransportError, match="re-sends"):
            await asyncio.wait_for(ack, 10)
        # the slot was freed: another publish can start
        nxt = await asyncio.wait_for(publisher.start("black.hole", b"y", {"Nats-Msg-Id": "n"}), 2)
        nxt.cancel()
        assert len(seen) >= 4  # the first send and three re-sends
    finally:
        await publisher.aclose()
        await nc.close()
