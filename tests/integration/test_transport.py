"""The Bus over a real nats-server: round trips, dedup, and every attack quarantined while valid traffic flows."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.attacks import ATTACKS, Cast, valid
from tests.conftest import Tenant
from trustbus.bus import (
    Bus,
    ConsumerSettings,
    Delivery,
    Identity,
    KeyGrant,
    TransientError,
    decode_quarantine_record,
    new_envelope,
    open_envelope,
    sign_grant,
    subjects,
)
from trustbus.bus._keyring import encode_signed_grant

FAST = ConsumerSettings(fetch_timeout_s=0.5, backoff_s=(0.05,), max_deliver=3)


async def _cast(tenant: Tenant) -> Cast:
    cast = Cast(
        tenant=tenant.name,
        alice=await tenant.add("alice"),
        bob=await tenant.add("bob"),
        stranger=Identity.generate(),
        revoked=await tenant.add("carol"),
        untrusted=Identity.generate(),
    )
    await tenant.keyring.revoke(tenant.admin, cast.revoked.key_id, at=time.time_ns() - 1_000_000_000)
    forged = KeyGrant(tenant=tenant.name, key_id=cast.untrusted.key_id, owner="mallory", role="agent", valid_from=0)
    kv = await tenant.js.key_value(subjects.keyring_bucket(tenant.name))
    await kv.put(cast.untrusted.key_id, encode_signed_grant(sign_grant(forged, Identity.generate())))
    return cast


async def _reader(tenant: Tenant, subject: str) -> Bus:
    reader = await tenant.bus("reader")
    await reader.ensure_consumer("reader", subject, settings=FAST)
    return reader


async def _collect(reader: Bus, until_id: str, *, handle: object = None, limit_s: float = 15.0) -> list[Delivery]:
    """Consume until the envelope ``until_id`` is handled without error; return every delivery seen."""
    seen: list[Delivery] = []

    async def run() -> None:
        async for delivery in reader.consume("reader", settings=FAST):
            seen.append(delivery)
            handled = False
            async with delivery.process():
                if callable(handle):
                    handle(delivery)
                handled = True
            if handled and delivery.envelope.id == until_id:
                return

    await asyncio.wait_for(run(), limit_s)
    return seen


async def _last_quarantine(tenant: Tenant) -> tuple[dict[str, object], str]:
    raw = await tenant.js.get_last_msg(f"TB_{tenant.name}", subjects.quarantine(tenant.name))
    opened = open_envelope(
        raw.data, raw.headers, keyring=tenant.keyring.keyring, received_ns=time.time_ns()
    )  # the quarantine record is itself a signed envelope
    record = decode_quarantine_record(opened.envelope.payload)
    return {
        "reason": record.reason,
        "stream_seq": record.stream_seq,
        "sender": record.claimed_sender,
    }, opened.envelope.sender


async def test_round_trip_delivers_the_exact_envelope(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    reader = await _reader(tenant, subjects.outbox(tenant.name, "alice", 0))
    sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"{}"))
    ack = await alice.publish(subjects.outbox(tenant.name, "alice", 0), sealed)
    [delivery] = await _collect(reader, sealed.envelope.id)
    assert delivery.envelope == sealed.envelope
    assert delivery.body == sealed.body
    assert delivery.stream_seq == ack.seq


async def test_resend_of_the_same_id_is_dropped_as_duplicate(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
    first = await alice.publish(subjects.outbox(tenant.name, "alice", 0), sealed)
    again = await alice.publish(subjects.outbox(tenant.name, "alice", 0), sealed)
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    info = await tenant.js.stream_info(f"TB_{tenant.name}")
    assert info.state.messages == first.seq


async def test_pipelined_publishes_all_land_in_order(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    tasks = []
    for i in range(500):
        env = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
        tasks.append(await alice.publish_pipelined(subject, alice.seal(env)))
    await alice.flush()
    seqs = [task.result().seq for task in tasks]
    assert seqs == sorted(seqs) and len(set(seqs)) == 500


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_quarantined_with_its_reason_and_valid_twin_flows(tenant: Tenant, attack: str) -> None:
    cast = await _cast(tenant)
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    forge, reason = ATTACKS[attack]
    body, headers = forge(cast)
    bad = await tenant.js.publish(subject, body, headers=headers)
    twin = valid(cast)
    await tenant.js.publish(subject, twin.body, headers=twin.headers)

    delivered = await _collect(reader, twin.envelope.id)

    assert [d.envelope.id for d in delivered] == [twin.envelope.id]
    record, quarantined_by = await _last_quarantine(tenant)
    assert record["reason"] == reason
    assert record["stream_seq"] == bad.seq
    assert quarantined_by == "reader"


async def test_replayed_envelope_is_quarantined_as_replayed(tenant: Tenant) -> None:
    cast = await _cast(tenant)
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    original = valid(cast)
    await tenant.js.publish(subject, original.body, headers=original.headers)
    # The same Nats-Msg-Id is dropped by the server's duplicate window ...
    assert (await tenant.js.publish(subject, original.body, headers=original.headers)).duplicate
    # ... so the attacker sends the same bytes under a fresh Nats-Msg-Id.
    replay = await tenant.js.publish(subject, original.body, headers={**original.headers, "Nats-Msg-Id": "other"})
    twin = valid(cast)
    await tenant.js.publish(subject, twin.body, headers=twin.headers)

    delivered = await _collect(reader, twin.envelope.id)

    assert [d.envelope.id for d in delivered] == [original.envelope.id, twin.envelope.id]
    record, _ = await _last_quarantine(tenant)
    assert record == {"reason": "replayed", "stream_seq": replay.seq, "sender": "alice"}


async def test_handler_crash_quarantines_the_message_and_the_next_one_flows(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    poison = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b'"boom"'))
    after = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b'"ok"'))
    poison_ack = await alice.publish(subject, poison)
    await alice.publish(subject, after)

    def handle(delivery: Delivery) -> None:
        if delivery.envelope.payload == b'"boom"':
            raise ValueError("handler bug")

    delivered = await _collect(reader, after.envelope.id, handle=handle)

    assert [d.envelope.id for d in delivered] == [poison.envelope.id, after.envelope.id]
    record, _ = await _last_quarantine(tenant)
    assert record["reason"] == "handler_error" and record["stream_seq"] == poison_ack.seq


async def test_transient_failure_is_retried_then_succeeds(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
    await alice.publish(subject, sealed)

    def flaky(delivery: Delivery) -> None:
        if delivery.attempt == 1:
            raise TransientError("downstream busy")

    delivered = await _collect(reader, sealed.envelope.id, handle=flaky)
    assert [d.attempt for d in delivered] == [1, 2]


async def test_message_failing_every_delivery_is_quarantined_after_max_deliver(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    stuck = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b'"x"'))
    after = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"], payload=b'"y"'))
    stuck_ack = await alice.publish(subject, stuck)
    await alice.publish(subject, after)

    attempts: list[int] = []

    async def until_last_attempt() -> None:
        async for delivery in reader.consume("reader", settings=FAST):
            async with delivery.process():
                if delivery.envelope.id == stuck.envelope.id:
                    attempts.append(delivery.attempt)
                    raise TransientError("never recovers")
            if attempts and attempts[-1] == FAST.max_deliver:
                return

    await asyncio.wait_for(until_last_attempt(), 15)
    assert attempts == [1, 2, 3]
    record, _ = await _last_quarantine(tenant)
    assert record["reason"] == "max_deliver" and record["stream_seq"] == stuck_ack.seq


async def test_key_registered_after_the_consumer_started_verifies(tenant: Tenant) -> None:
    subject = subjects.outbox(tenant.name, "dave", 0)
    reader = await _reader(tenant, subject)
    dave = await tenant.add("dave")
    sealed = new_envelope(tenant=tenant.name, kind="event", sender="dave", to=["bob"])
    from trustbus.bus import seal

    sent = seal(sealed, dave)
    await tenant.js.publish(subject, sent.body, headers=sent.headers)
    [delivery] = await _collect(reader, sealed.id)
    assert delivery.opened.grant.owner == "dave"


async def test_replay_of_a_message_acked_out_of_order_is_quarantined_after_a_restart(tenant: Tenant) -> None:
    """An envelope acked above the ack floor (an earlier one still pending) is remembered after a restart too."""
    cast = await _cast(tenant)
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    pending, acked = valid(cast), valid(cast)
    for sealed in (pending, acked):
        await tenant.js.publish(subject, sealed.body, headers=sealed.headers)

    async def first_pass() -> None:
        async for delivery in reader.consume("reader", settings=FAST):
            if delivery.envelope.id == pending.envelope.id:
                await delivery.defer(2.0)  # back later: the ack floor stays below it
            else:
                await delivery.ack()
                return

    await asyncio.wait_for(first_pass(), 15)
    info = await tenant.js.consumer_info(f"TB_{tenant.name}", "reader")
    assert info.ack_floor.stream_seq < info.delivered.stream_seq  # acked out of order

    restarted = await tenant.bus("reader-restarted", identity_of="reader")
    replay = await tenant.js.publish(subject, acked.body, headers={**acked.headers, "Nats-Msg-Id": "again"})
    delivered = await _collect(restarted, pending.envelope.id)  # the pending one comes back and passes

    assert [d.envelope.id for d in delivered] == [pending.envelope.id]
    record, _ = await _last_quarantine(tenant)
    assert record == {"reason": "replayed", "stream_seq": replay.seq, "sender": "alice"}


async def test_replay_after_the_consumer_restarts_is_still_quarantined(tenant: Tenant) -> None:
    cast = await _cast(tenant)
    subject = subjects.outbox(tenant.name, "alice", 0)
    reader = await _reader(tenant, subject)
    original = valid(cast)
    await tenant.js.publish(subject, original.body, headers=original.headers)
    await _collect(reader, original.envelope.id)  # consumed and acked; that consume() is closed

    # A new consume() starts with no memory: it must read back what its consumer already accepted.
    restarted = await tenant.bus("reader-restarted", identity_of="reader")
    replay = await tenant.js.publish(subject, original.body, headers={**original.headers, "Nats-Msg-Id": "again"})
    twin = valid(cast)
    await tenant.js.publish(subject, twin.body, headers=twin.headers)

    delivered = await _collect(restarted, twin.envelope.id)

    assert [d.envelope.id for d in delivered] == [twin.envelope.id]
    record, _ = await _last_quarantine(tenant)
    assert record == {"reason": "replayed", "stream_seq": replay.seq, "sender": "alice"}
