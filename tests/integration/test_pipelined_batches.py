"""A batch's forwards are stored while the next batch is decided: in order, and a batch whose forwards fail to be
stored is mediated again, whole, losing and doubling nothing (a real server, the coordinator in process)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import pytest

from tests.conftest import Tenant
from tests.integration.test_bounded_coordinator import correlation_in_partition_0, event_of, running
from trustbus.agents import _forwarding, parse_policy
from trustbus.agents._intake import sender_consumer
from trustbus.bus import Timeout, decode_envelope, subjects

WAIT_S = 15.0
SENT = 40
POLICY = parse_policy({"rules": [{"from": "*", "to": ["*"], "kinds": ["event"]}]})


async def _inbox(tenant: Tenant, agent: str, count: int) -> list[str]:
    """The envelope ids in ``agent``'s inbox, in stream order, once it holds ``count`` messages."""
    js = tenant.js
    deadline = time.monotonic() + WAIT_S
    while True:
        info = await js.stream_info(f"TB_{tenant.name}", subjects_filter=subjects.inbox(tenant.name, agent))
        if sum((info.state.subjects or {}).values()) >= count:
            break
        assert time.monotonic() < deadline, f"{agent}'s inbox did not reach {count}"
        await asyncio.sleep(0.05)
    sub = await js.subscribe(subjects.inbox(tenant.name, agent), ordered_consumer=True)
    ids = [decode_envelope((await sub.next_msg(timeout=5)).data).id for _ in range(count)]
    await sub.unsubscribe()
    return ids


async def _settled(tenant: Tenant, consumer: str, seq: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (await tenant.js.consumer_info(f"TB_{tenant.name}", consumer)).ack_floor.stream_seq < seq:
        assert time.monotonic() < deadline, f"{consumer} did not settle {seq}"
        await asyncio.sleep(0.05)


async def _failing() -> None:
    raise Timeout("forward: no ack")


async def test_a_batch_whose_forwards_fail_is_mediated_again_and_nothing_is_lost_or_doubled(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await tenant.add("c1", role="coordinator")
    await tenant.add("bob")
    alice, coordinator_bus = await tenant.bus("alice"), await tenant.bus("c1")
    start = _forwarding.Forwarder.start
    failed: list[str] = []

    async def first_ack_fails(self: _forwarding.Forwarder, envelope, *args, **kwargs) -> list[Awaitable[object]]:  # type: ignore[no-untyped-def]
        acks = await start(self, envelope, *args, **kwargs)
        if not failed:  # one forward's ack is lost: the server stored it (or not), the coordinator does not know
            failed.append(envelope.id)
            return [*acks, _failing()]
        return acks

    monkeypatch.setattr(_forwarding.Forwarder, "start", first_ack_fails)
    sealed = [alice.seal(event_of(alice, "bob", correlation_in_partition_0(alice))) for _ in range(SENT)]
    caplog.set_level(logging.WARNING, logger="trustbus.coordinator")
    async with running(coordinator_bus, POLICY):
        last = 0
        for s in sealed:  # published ahead, then read in batches
            last = (await alice.publish(alice.outbox(s.envelope), s)).seq
        delivered = await _inbox(tenant, "bob", SENT)
        await _settled(tenant, sender_consumer(0, "alice"), last)

    assert failed and delivered == [s.envelope.id for s in sealed]  # each once, in the order sent
    assert any(r.getMessage() == "forwards not stored; mediating the batch again" for r in caplog.records)
