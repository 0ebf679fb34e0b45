"""A coordinator catching up on a long decision log reads it in batches: far fewer requests than records."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from nats.aio.msg import Msg

from tests.conftest import Tenant
from trustbus.agents import parse_policy
from trustbus.agents._decision_log import DecisionLog, decision_record
from trustbus.bus import Bus, Decision, Envelope, SubjectLog, new_envelope, new_id, subjects

RECORDS = 3000
POLICY = parse_policy({"rules": [{"from": "alice", "to": ["bob"], "kinds": ["event"]}]})


def accepted(cause: Envelope) -> Decision:
    """An accepted delivery of ``cause`` to bob."""
    return Decision(
        envelope_id=cause.id,
        source_seq=1,
        sender=cause.sender,
        kind=cause.kind,
        correlation_id=cause.correlation_id,
        causation_id=None,
        verdict="accept",
        reasons=(),
        deliver_to=("bob",),
        dropped=(),
        hop=0,
        declared_taint=(),
        effective_taint=(),
        decided_ns=time.time_ns(),
    )


async def write_accepted(coordinator: Bus, log: SubjectLog, count: int) -> list[str]:
    """``count`` decision records signed by ``coordinator``, appended in atomic batches after the log's last; the
    envelopes decided (each the first of its own correlation, named by its id)."""
    tip = await log.last()
    decided, last = [], 0 if tip is None else tip.seq
    for start in range(0, count, 1000):
        records = []
        for _ in range(start, min(start + 1000, count)):
            cause = new_envelope(tenant=coordinator.tenant, kind="event", sender="alice", to=["bob"])
            sealed = decision_record(coordinator, cause, accepted(cause)).sealed
            records.append((sealed.body, dict(sealed.headers)))
            decided.append(cause.id)
        last = await log.append_batch(records, after=last, batch_id=new_id())
    return decided


async def _requests_of(tenant: Tenant, log: SubjectLog) -> tuple[DecisionLog, Counter[str]]:
    """A fresh :class:`DecisionLog` caught up on ``log``, and the JetStream API requests on its stream made
    meanwhile, by kind."""
    requests: Counter[str] = Counter()

    async def count(msg: Msg) -> None:
        parts = msg.subject.split(".")
        if log.stream in parts:  # not the keyring's
            requests[".".join(parts[2:4])] += 1  # STREAM.MSG, CONSUMER.CREATE, CONSUMER.MSG, ...

    sub = await tenant.nc.subscribe("$JS.API.>", cb=count)
    await tenant.nc.flush()
    decisions = DecisionLog(log, tenant.keyring.keyring, POLICY)
    await decisions.catch_up()
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    return decisions, requests


async def test_catch_up_reads_a_long_log_in_order_with_a_request_per_batch(tenant: Tenant) -> None:
    await tenant.add("c1", role="coordinator")
    coordinator = await tenant.bus("c1")
    subject = subjects.decision(tenant.name, 0)
    decided = await write_accepted(coordinator, coordinator.log(subject), RECORDS)
    last = await coordinator.log(subject).last()
    assert last is not None

    one_by_one, requests = await _requests_of(tenant, coordinator.log(subject))
    assert requests["STREAM.MSG"] == RECORDS + 1  # a get per record, and one that finds none after the last

    batched, requests = await _requests_of(tenant, coordinator.log(subject, in_batches=True))
    assert list(batched.state.decided) == decided  # every decision, in the order appended
    assert batched.state.last_seq == last.seq
    assert batched.decision_ids == one_by_one.decision_ids
    assert sum(requests.values()) < RECORDS / 100, requests
    assert requests["CONSUMER.MSG"] >= RECORDS / 1000
