"""One sender's flood cannot delay the others; its rejections are recorded in aggregate; over a threshold it is
suspended by a recorded decision an operator lifts. A real coordinator process on a real server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from tests.e2e.fleet import Fleet
from trustbus.agents._approvals import answer
from trustbus.bus import (
    Decision,
    KeyringStore,
    TenantStream,
    decode_decisions,
    decode_envelope,
    encode_envelope,
    new_envelope,
    subjects,
    tail,
)
from trustbus.bus._rejections import RejectionSummary, decode_quarantine_payload
from trustbus.bus._seal import HEADER_MSG_ID
from trustbus.ledger import verify_messages
from trustbus.ledger._bundle import read_stream

OPEN = {"from": "*", "to": ["*", "topic:*"], "kinds": ["event"]}


async def flood(fleet: Fleet, agent: str, count: int) -> int:
    """Store ``count`` envelopes on ``agent``'s outbox whose signatures do not hold; their number, once all are in."""
    sealed = (await fleet.bus(agent)).seal(new_envelope(tenant=fleet.tenant, kind="event", sender=agent, to=["x"]))
    headers = {k: v for k, v in sealed.headers.items() if k != HEADER_MSG_ID}  # each stored, none a duplicate
    outbox = subjects.outbox(fleet.tenant, agent, 0)
    js = fleet.nc.jetstream(publish_async_max_pending=1024)
    acks = []
    for i in range(count):
        forged = new_envelope(tenant=fleet.tenant, kind="event", sender=agent, to=["x"], payload=b"%d" % i)
        acks.append(await js.publish_async(outbox, encode_envelope(forged), headers=headers, wait_stall=30))
    stored = await asyncio.wait_for(asyncio.gather(*acks), 60)
    return len({ack.seq for ack in stored})


async def summaries(
    fleet: Fleet, until: Callable[[list[tuple[int, RejectionSummary]]], bool]
) -> list[tuple[int, RejectionSummary]]:
    """Rejection summaries on the quarantine subject, as (stream seq, summary), read until ``until`` holds."""
    js = fleet.nc.jetstream()
    found: list[tuple[int, RejectionSummary]] = []

    async def follow() -> None:
        async with await KeyringStore.open(js, fleet.tenant) as keyring:
            async for item in tail(js, keyring, fleet.tenant, subject=subjects.quarantine(fleet.tenant)):
                assert item.opened is not None, item.error
                record = decode_quarantine_payload(item.opened.envelope.payload)
                if isinstance(record, RejectionSummary):
                    found.append((item.stream_seq, record))
                    if until(found):
                        return

    await asyncio.wait_for(follow(), 60)
    return found


def listed(found: list[tuple[int, RejectionSummary]], *, before: int | None = None) -> dict[int, str]:
    """Refused stream sequence -> reason, over the summaries stored before sequence ``before``."""
    return {
        seq: reason
        for at, summary in found
        if before is None or at < before
        for seq, _, reason, _, _ in summary.rejected()
    }


async def decision_seq(fleet: Fleet, envelope_id: str) -> tuple[int, Decision]:
    """The stream sequence and content of the first decision about ``envelope_id``."""
    await fleet.decisions(lambda ds: any(d.envelope_id == envelope_id for d in ds), limit_s=60)
    for message in await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant)):
        if subjects.is_decision(fleet.tenant, message.subject):
            for decision in decode_decisions(decode_envelope(message.body).payload)[0]:
                if decision.envelope_id == envelope_id:
                    return message.seq, decision
    raise AssertionError(f"no decision about {envelope_id}")


async def test_a_flooding_sender_does_not_delay_another_senders_valid_message(fleet: Fleet) -> None:
    honest = await fleet.bus("honest")
    stored = await flood(fleet, "mallory", 5000)  # a backlog waiting for the coordinator
    await fleet.coordinator({"rules": [OPEN], "limits": {"suspension": None}})
    sent = await fleet.send(honest, ["carol"], "after the flood")
    seq, decision = await decision_seq(fleet, sent)
    assert decision.verdict == "accept"
    # In stream order the flood came first; one consumer in stream order would have recorded all of it first.
    found = await summaries(fleet, lambda found: len(listed(found)) >= stored)
    assert len(listed(found, before=seq)) < stored / 2
    # Every forged envelope is a recorded rejection, listed once, at under 100 bytes of record each.
    assert set(listed(found).values()) == {"bad_signature"}
    messages = await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant))
    async with await KeyringStore.open(fleet.nc.jetstream(), fleet.tenant, follow=False) as keyring:
        report = verify_messages(messages, keyring.keyring, fleet.tenant)
    assert report.ok, report.first_break
    assert report.recorded_rejections == stored
    recorded = [m for m in messages if m.subject == subjects.quarantine(fleet.tenant)]
    size = sum(len(m.subject) + sum(len(k) + len(v) + 4 for k, v in m.headers.items()) + len(m.body) for m in recorded)
    assert size / stored <= 100


async def test_an_honest_burst_is_delivered_whole_and_in_order(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN]})
    a, b = await fleet.bus("a"), await fleet.bus("b")
    sent = [await fleet.send(sender, ["carol"], i) for i in range(150) for sender in (a, b)]
    read = await fleet.inbox(lambda read: len(read) >= len(sent), limit_s=60)
    assert [e.id for _, e in read if e.sender == "a"] == sent[0::2]
    assert [e.id for _, e in read if e.sender == "b"] == sent[1::2]


async def test_a_sender_over_its_rejection_threshold_is_suspended_until_an_operator_lifts_it(fleet: Fleet) -> None:
    policy = {"rules": [OPEN], "limits": {"suspension": {"rejections": 100, "window_s": 60}}}
    first = await fleet.coordinator(policy)
    await fleet.key("ops", role="operator")
    mallory, honest = await fleet.bus("mallory"), await fleet.bus("honest")
    await flood(fleet, "mallory", 150)
    [suspension] = [
        d for d in await fleet.decisions(lambda ds: any(d.kind == "suspension" for d in ds)) if d.kind == "suspension"
    ]
    assert (suspension.sender, suspension.verdict, suspension.reasons) == ("mallory", "hold", ("rejection_threshold",))

    # Suspended: its valid envelopes are refused unverified, in aggregate; the others flow; a restart keeps it.
    first.send_signal(signal.SIGTERM)
    await first.exited()
    await fleet.coordinator(policy)
    refused = await mallory.send(new_envelope(tenant=fleet.tenant, kind="event", sender="mallory", to=["carol"]))
    fine = await fleet.send(honest, ["carol"], "fine")
    _, decision = await decision_seq(fleet, fine)
    assert decision.verdict == "accept"
    found = await summaries(fleet, lambda found: refused.seq in listed(found))
    assert listed(found)[refused.seq] == "suspended"

    # An operator lifts it with a signed approval; the sender is mediated again.
    lifted = await answer(
        [fleet.url], fleet.tenant, suspension.envelope_id, operator="ops", keys=fleet.keys, approve=True
    )
    assert lifted.verdict == "accept" and lifted.approver == "ops"
    again = await fleet.send(mallory, ["carol"], "sorry")
    _, decision = await decision_seq(fleet, again)
    assert decision.verdict == "accept"


async def test_a_sender_under_its_rejection_threshold_is_not_suspended(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN], "limits": {"suspension": {"rejections": 100, "window_s": 60}}})
    mallory = await fleet.bus("mallory")
    stored = await flood(fleet, "mallory", 40)
    await summaries(fleet, lambda found: len(listed(found)) >= stored)
    sent = await fleet.send(mallory, ["carol"], "a typo, not an attack")
    decisions = await fleet.decisions(lambda ds: any(d.envelope_id == sent for d in ds))
    assert [(d.kind, d.verdict) for d in decisions] == [("event", "accept")]


async def test_an_envelope_on_an_outbox_partition_the_tenant_does_not_have_is_a_recorded_rejection(
    fleet: Fleet, tmp_path: Path
) -> None:
    await fleet.coordinator({"rules": [OPEN]})
    await fleet.key("ledger", role="ledger")
    await fleet.spawn("ledger", "run", "-t", fleet.tenant, "--data", str(tmp_path / "projection"))
    alice = await fleet.bus("alice")
    stray = alice.seal(new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["carol"]))
    ack = await alice.publish(f"tb.{fleet.tenant}.out.alice.99", stray)  # the tenant has one partition
    mediated = await fleet.send(alice, ["carol"], "on partition 0")
    found = await summaries(fleet, lambda found: ack.seq in listed(found))
    assert listed(found)[ack.seq] == "unknown_partition"
    [(_, summary)] = [(at, s) for at, s in found if ack.seq in listed([(at, s)])]
    assert summary.owner == "alice" and summary.sample.claimed_id == stray.envelope.id
    # Its twin on a partition the tenant has is mediated as usual, and not recorded as a stray.
    _, decision = await decision_seq(fleet, mediated)
    assert decision.verdict == "accept"
    messages = await read_stream(TenantStream(fleet.nc.jetstream(), fleet.tenant))
    mediated_seq = next(m.seq for m in messages if m.subject.endswith(".out.alice.0"))
    assert mediated_seq not in listed(await summaries(fleet, lambda found: True))


async def test_a_sender_replaying_others_envelopes_from_its_outbox_is_suspended_too(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN], "limits": {"suspension": {"rejections": 20, "window_s": 60}}})
    alice, bob = await fleet.bus("alice"), await fleet.bus("bob")
    for i in range(25):  # alice's valid envelopes, re-published from bob's outbox: wrong_outbox each
        sealed = alice.seal(
            new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["carol"], payload=b"%d" % i)
        )
        await bob.publish(subjects.outbox(fleet.tenant, "bob", 0), sealed)
    decisions = await fleet.decisions(lambda ds: any(d.kind == "suspension" for d in ds))
    assert [(d.sender, d.verdict) for d in decisions if d.kind == "suspension"] == [("bob", "hold")]
