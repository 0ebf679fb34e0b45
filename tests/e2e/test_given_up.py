"""A message whose reader dies on every delivery is given up by the server, and the ledger service says so.

No process is left to quarantine such a message: the reader never acks,
naks or terminates it, and the server just stops delivering it. The ledger
service records each MAX_DELIVERIES advisory as a signed quarantine record,
also for advisories published while no ledger service was running.

The dying reader is a consumer that fetches and never settles: that is all
the server sees of an agent process killed mid-handler (a real agent's inbox
consumer waits 10 s per redelivery; this one 0.5 s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.e2e.fleet import Fleet
from tests.e2e.test_ledger_service import POLICY, one, settled, start_ledger
from trustbus.bus import Envelope, KeyringStore, QuarantineRecord, decode_quarantine_record, subjects, tail

DELIVERIES = 3


async def deliver_to_victim(fleet: Fleet, payload: str) -> int:
    """Send an event to ``victim`` through the coordinator; the stream sequence of its inbox copy."""
    alice = await fleet.bus("alice")
    envelope_id = await fleet.send(alice, ["victim"], payload)
    js = fleet.nc.jetstream()
    sub = await js.subscribe(subjects.inbox(fleet.tenant, "victim"), ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            if envelope_id.encode() in msg.data:
                return int(msg.metadata.sequence.stream)
    finally:
        await sub.unsubscribe()


async def reader(fleet: Fleet, name: str, seq: int) -> JetStreamContext.PullSubscription:
    """A consumer of victim's inbox from ``seq`` on that redelivers after 0.5 s, at most ``DELIVERIES`` times."""
    js = fleet.nc.jetstream()
    await js.add_consumer(
        subjects.stream_name(fleet.tenant),
        ConsumerConfig(
            durable_name=name, filter_subject=subjects.inbox(fleet.tenant, "victim"), opt_start_seq=seq,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, ack_policy=AckPolicy.EXPLICIT, ack_wait=0.5,
            max_deliver=DELIVERIES,
        ),
    )  # fmt: skip
    return await js.pull_subscribe_bind(name, stream=subjects.stream_name(fleet.tenant))


async def die_on_every_delivery(fleet: Fleet, seq: int) -> None:
    """Fetch the message at ``seq`` ``DELIVERIES`` times and never settle it, until the server gives it up."""
    sub = await reader(fleet, f"dies-{seq}", seq)
    advice = await fleet.nc.subscribe(subjects.given_up_advisories(fleet.tenant))
    for attempt in range(1, DELIVERIES + 1):
        (msg,) = await sub.fetch(1, timeout=10)
        assert msg.metadata.sequence.stream == seq and msg.metadata.num_delivered == attempt
    # Restarted once more, the reader asks again: the server gives up instead, and advises.
    with pytest.raises(TimeoutError):
        await sub.fetch(1, timeout=2)
    await sub.unsubscribe()
    assert f'"stream_seq":{seq},'.encode() in (await advice.next_msg(timeout=10)).data
    await advice.unsubscribe()


async def handled(fleet: Fleet, seq: int) -> None:
    sub = await reader(fleet, f"acks-{seq}", seq)
    (msg,) = await sub.fetch(1, timeout=10)
    await msg.ack_sync()
    await sub.unsubscribe()


async def records(fleet: Fleet, count: int) -> list[tuple[Envelope, QuarantineRecord]]:
    """The first ``count`` quarantine records with reason ``max_deliver``, with the envelopes that carried them."""
    js = fleet.nc.jetstream()
    found: list[tuple[Envelope, QuarantineRecord]] = []

    async def follow() -> None:
        async with await KeyringStore.open(js, fleet.tenant) as keyring:
            async for item in tail(js, keyring, fleet.tenant, subject=subjects.quarantine(fleet.tenant)):
                assert item.opened is not None, item.error
                record = decode_quarantine_record(item.opened.envelope.payload)
                if record.reason == "max_deliver":
                    found.append((item.opened.envelope, record))
                    if len(found) == count:
                        return

    await asyncio.wait_for(follow(), 60)
    return found


async def test_a_message_given_up_is_recorded_even_if_the_ledger_was_down_and_a_settled_one_is_not(
    fleet: Fleet, tmp_path: Path
) -> None:
    await fleet.coordinator(POLICY)
    await fleet.key("victim")
    js = fleet.nc.jetstream()
    given_up_stream = subjects.given_up_stream(fleet.tenant)

    first = await deliver_to_victim(fleet, "crashes its reader")
    await die_on_every_delivery(fleet, first)  # no ledger service runs yet: the advisory waits in its stream

    data = tmp_path / "projection"
    await start_ledger(fleet, data)
    ((carrier, record),) = await records(fleet, 1)
    assert record.stream_seq == first and record.subject == subjects.inbox(fleet.tenant, "victim")
    assert record.claimed_sender == "alice" and b"crashes its reader" in record.body
    assert f"dies-{first} after {DELIVERIES} deliveries" in record.detail
    assert carrier.sender == "ledger"  # signed by the ledger service's key

    # A forged advisory is dropped; a message handled normally is not recorded; the next one given up is.
    await js.publish(
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.stream_name(fleet.tenant)}.forged", b"{not json"
    )
    fine = await deliver_to_victim(fleet, "handled")
    await handled(fleet, fine)
    second = await deliver_to_victim(fleet, "crashes it again")
    await die_on_every_delivery(fleet, second)
    recorded = await records(fleet, 2)
    assert [r.stream_seq for _, r in recorded] == [first, second]

    await settled(fleet, data)
    projected = one(
        "SELECT count(*), min(stream_seq), max(stream_seq) FROM quarantine WHERE reason = 'max_deliver'", data
    )
    assert projected == (2, first, second)
    assert one("SELECT count(*) FROM quarantine WHERE reason = 'max_deliver' AND rejected_by = 'ledger'", data) == (2,)
    assert (await js.stream_info(given_up_stream)).state.messages == 0  # each advisory acked once recorded
