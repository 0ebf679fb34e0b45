"""A restarted coordinator reads back only what was delivered and not yet settled, and refuses a copy of an envelope
it settled before by its decision: the replay is quarantined as ``replayed`` and the ledger still verifies."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.conftest import Tenant
from tests.integration.test_bounded_coordinator import correlation_in_partition_0, decided, event_of, running
from tests.integration.test_transport import _last_quarantine
from trustbus.agents._intake import sender_consumer
from trustbus.ledger import verify_stream

WAIT_S = 15.0


async def _settled(tenant: Tenant, consumer: str, seq: int) -> None:
    """Wait until ``consumer``'s ack floor reaches ``seq``."""
    deadline = time.monotonic() + WAIT_S
    while (await tenant.js.consumer_info(f"TB_{tenant.name}", consumer)).ack_floor.stream_seq < seq:
        assert time.monotonic() < deadline, f"{consumer} did not settle {seq}"
        await asyncio.sleep(0.05)


async def _quarantined(tenant: Tenant, seq: int) -> dict[str, object]:
    """The last quarantine record, once it names ``seq``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            record, _ = await _last_quarantine(tenant)
            if record["stream_seq"] == seq:
                return record
        except Exception:  # nats.js.errors.NotFoundError: no record yet
            pass
        assert time.monotonic() < deadline, f"no quarantine record of {seq}"
        await asyncio.sleep(0.05)


async def test_a_restarted_coordinator_refuses_a_copy_of_an_envelope_it_settled_by_its_decision(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    await tenant.add("c1", role="coordinator")
    await tenant.add("bob")
    alice, coordinator_bus = await tenant.bus("alice"), await tenant.bus("c1")
    correlation = correlation_in_partition_0(alice)
    original = alice.seal(event_of(alice, "bob", correlation))
    outbox = alice.outbox(original.envelope)
    async with running(coordinator_bus):
        await alice.publish(outbox, original)
        first = await decided(tenant, alice, original.envelope.id)
        await _settled(tenant, sender_consumer(0, "alice"), first.source_seq)

    caplog.set_level(logging.INFO, logger="trustbus.bus")
    async with running(coordinator_bus):
        replay = await tenant.js.publish(outbox, original.body, headers={**original.headers, "Nats-Msg-Id": "again"})
        twin = alice.seal(event_of(alice, "bob", correlation))
        await alice.publish(outbox, twin)
        assert (await decided(tenant, alice, twin.envelope.id)).verdict == "accept"
        record = await _quarantined(tenant, replay.seq)

    assert record == {"reason": "replayed", "stream_seq": replay.seq, "sender": "alice"}
    read_back = [r for r in caplog.records if r.getMessage() == "read back recently accepted ids"]
    assert [getattr(r, "messages", None) for r in read_back if getattr(r, "consumer", "") == "coordinator-0-alice"] == [
        0
    ]  # everything of alice's outbox was settled: nothing to read again
    report = await verify_stream([tenant.url], tenant.name)
    assert report.ok, report.breaks
