"""Forwarding a backlog older than the duplicate window: no inbox read for a first forward, never a forward twice;
a forward's ``traceparent`` header is the signed one, whatever header its sender set.

A forward is checked against the recipient's inbox only when an earlier
forward of the same decision may be older than the stream's duplicate window
(agents/_forwarding.py). A backlog decided for the first time after a long
outage is no such case, however old its envelopes: reading the inbox for each
made draining it quadratic. The inbox checks (a search of the recipient's
subject by message id) are counted on the coordinator's own subject log (a
real server underneath).
"""

from __future__ import annotations

import time

from tests.conftest import Tenant
from trustbus.agents._forwarding import Forwarder
from trustbus.bus import (
    HEADER_TRACEPARENT,
    Bus,
    Decision,
    Envelope,
    StoredMessage,
    SubjectLog,
    decode_envelope,
    new_envelope,
    subjects,
)
from trustbus.bus._provision import DUPLICATE_WINDOW_S

BACKLOG = 60
OLD_NS = time.time_ns() - int(2 * DUPLICATE_WINDOW_S * 1e9)  # stored (and decided) twice the window ago


class _Counted:
    """A subject log whose searches by message id are counted."""

    def __init__(self, log: SubjectLog, reads: list[str]) -> None:
        self._log, self._reads = log, reads

    async def find(self, msg_id: str, *, after: int = 0) -> StoredMessage | None:
        self._reads.append(self._log.subject)
        return await self._log.find(msg_id, after=after)


async def _coordinator(tenant: Tenant) -> tuple[Bus, list[str]]:
    await tenant.add("coordinator", role="coordinator")
    bus = await tenant.bus("coordinator")
    reads: list[str] = []
    log = bus.log
    bus.log = lambda subject: _Counted(log(subject), reads)  # type: ignore[method-assign,assignment,return-value]
    return bus, reads


def _accepted(envelope: Envelope) -> Decision:
    """The decision accepting ``envelope`` (alice to bob), made long after it came."""
    return Decision(
        envelope_id=envelope.id, source_seq=1, sender="alice", kind="event",
        correlation_id=envelope.correlation_id, causation_id=None, verdict="accept", reasons=("allowed",),
        deliver_to=("bob",), dropped=(), hop=0, declared_taint=(), effective_taint=(), decided_ns=OLD_NS,
    )  # fmt: skip


async def _backlog(tenant: Tenant) -> list[tuple[bytes, dict[str, str], Decision]]:
    """``BACKLOG`` envelopes from alice to bob, each accepted by a decision made about them long after they came."""
    alice = await tenant.bus("alice")
    items = []
    for n in range(BACKLOG):
        envelope = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=("bob",), payload=b"%d" % n)
        sealed = alice.seal(envelope)
        items.append((sealed.body, dict(sealed.headers), _accepted(envelope)))
    return items


async def _forward(forwarder: Forwarder, items: list[tuple[bytes, dict[str, str], Decision]], **how: bool) -> None:
    for body, headers, decision in items:
        envelope = decode_envelope(body)
        for ack in await forwarder.start(envelope, body, headers, 1, decision, f"record-{decision.envelope_id}", **how):
            await ack


async def _inbox(tenant: Tenant) -> int:
    info = await tenant.js.stream_info(
        subjects.stream_name(tenant.name), subjects_filter=subjects.inbox(tenant.name, "bob")
    )
    return sum((info.state.subjects or {}).values())


async def test_a_backlog_older_than_the_duplicate_window_is_forwarded_without_reading_the_inbox(
    tenant: Tenant,
) -> None:
    bus, reads = await _coordinator(tenant)
    items = await _backlog(tenant)
    forwarder = Forwarder(bus)
    await _forward(forwarder, items, recorded_now=True)  # each decided now, for the first time
    assert reads == []  # no inbox walk per envelope: O(1) each, not O(backlog)
    assert await _inbox(tenant) == BACKLOG

    # The same process forwarding them again (its batch was nakked and came back) relies on the window.
    await _forward(forwarder, items)
    assert reads == [] and await _inbox(tenant) == BACKLOG


async def test_a_decision_recorded_before_a_restart_is_forwarded_again_only_where_it_is_missing(
    tenant: Tenant,
) -> None:
    """The guarantee the inbox read keeps: past the window, a process that did not record the decision reads the
    inbox first, so an envelope forwarded before a crash is not forwarded twice and one that was not, is."""
    bus, reads = await _coordinator(tenant)
    items = await _backlog(tenant)
    await _forward(Forwarder(bus), items[:2], recorded_now=True)  # the process that decided them, then died
    restarted = Forwarder(bus)
    await _forward(restarted, items[:3])  # redelivered to the next one, which finds the decisions in the log
    assert reads == [subjects.inbox(tenant.name, "bob")] * 3
    assert await _inbox(tenant) == 3  # the two forwarded before, once each; the third, now


SIGNED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
LIE = "00-11111111111111111111111111111111-2222222222222222-01"


async def test_a_forwards_traceparent_header_is_the_signed_one_whatever_its_sender_set(tenant: Tenant) -> None:
    bus, _ = await _coordinator(tenant)
    alice = await tenant.bus("alice")
    traced = new_envelope(
        tenant=tenant.name, kind="event", sender="alice", to=("bob",), payload=b"t", trace=(SIGNED, "")
    )
    untraced = new_envelope(tenant=tenant.name, kind="event", sender="alice", to=("bob",), payload=b"u")
    items = []
    for envelope in (traced, untraced):
        sealed = alice.seal(envelope)
        lying = {**sealed.headers, HEADER_TRACEPARENT: LIE}  # unsigned: anyone on the way may set it
        items.append((sealed.body, lying, _accepted(envelope)))
    await _forward(Forwarder(bus), items, recorded_now=True)
    forwarded = [m async for m in alice.log(subjects.inbox(tenant.name, "bob")).read()]
    assert [decode_envelope(m.body).id for m in forwarded] == [traced.id, untraced.id]
    assert forwarded[0].headers[HEADER_TRACEPARENT] == SIGNED
    assert HEADER_TRACEPARENT not in forwarded[1].headers  # the signed bytes carry none: neither does the forward
