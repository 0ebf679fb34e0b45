"""Coordinator scale-out: processes share a tenant's partitions, hand them over, and never decide or deliver twice.

The tenant is provisioned with four partitions; each correlation's envelopes,
effect records and decisions live in one of them, and each coordinator
process mediates the partitions it holds a lease on (agents/_partitions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest

from tests.e2e.fleet import Fleet
from trustbus.agents._signed_value import holder_value, open_holder
from trustbus.bus import (
    ConfigError,
    EmbeddedServer,
    KeyDirectory,
    KeyringStore,
    init_tenant,
    new_envelope,
    provision,
    subjects,
    tenant_partitions,
)
from trustbus.bus._stored import unix_ns

PARTITIONS = 4
OPEN = {"from": "*", "to": ["*"], "kinds": ["event", "reply"]}


@pytest.fixture
async def fleet(nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    tenant = f"p{os.getpid()}x{time.monotonic_ns() % 10**9}"
    keys = KeyDirectory(tmp_path / "keys")
    report, _ = await init_tenant([nats_server.url], tenant, keys=keys, partitions=PARTITIONS)
    assert report.partitions == PARTITIONS
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(nats_server.url))
    try:
        yield fleet
    finally:
        await fleet.close()


async def holders(fleet: Fleet) -> Counter[str]:
    """How many partitions each coordinator holds a live lease on, from the lease bucket (verified, as they read it)."""
    bucket = subjects.coordinator_bucket(fleet.tenant)
    js = fleet.nc.jetstream()
    held: Counter[str] = Counter()
    async with await KeyringStore.open(js, fleet.tenant, follow=False) as keys:
        for p in range(PARTITIONS):
            try:
                raw = await js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.partition-{p}")
            except nats.js.errors.NotFoundError:
                continue
            assert raw.time is not None
            if time.time() - raw.time.timestamp() >= 6:
                continue
            with contextlib.suppress(ValueError):  # a foreign value: held by no one we know
                holder = open_holder(raw.data or b"", keyring=keys.keyring, key=f"partition-{p}",
                                     stored_ns=unix_ns(raw.time))  # fmt: skip
                held.update([holder.name] if holder.instance is not None else [])
    return held


async def until_held(fleet: Fleet, wanted: Counter[str], limit_s: float = 20) -> None:
    """Wait (polling the lease bucket, which has no event to wait on) until the leases are spread as wanted."""
    deadline = time.monotonic() + limit_s
    while (held := await holders(fleet)) != wanted:
        assert time.monotonic() < deadline, f"leases {dict(held)}, wanted {dict(wanted)}"
        await asyncio.sleep(0.1)


async def send_spread(fleet: Fleet, correlations: int, each: int) -> list[str]:
    """``each`` envelopes in each of ``correlations`` fresh correlations, pipelined; the correlation ids."""
    load = await fleet.bus("load")
    origins = []
    for c in range(correlations):
        origin = new_envelope(tenant=fleet.tenant, kind="event", sender="load", to=["x"], payload=b"%d.0" % c)
        origins.append(origin.correlation_id)
        await load.publish_pipelined(load.outbox(origin), load.seal(origin))
        for i in range(1, each):
            env = new_envelope(
                tenant=fleet.tenant, kind="event", sender="load", to=["x"], payload=b"%d.%d" % (c, i),
                correlation_id=origin.correlation_id,
            )  # fmt: skip
            await load.publish_pipelined(load.outbox(env), load.seal(env))
    await load.flush()
    return origins


async def test_coordinators_share_the_partitions_and_every_budget_holds(fleet: Fleet) -> None:
    policy = {"limits": {"budget_per_correlation": 15}, "rules": [OPEN]}
    await fleet.coordinator(policy, name="coord-a")
    await until_held(fleet, Counter({"coord-a": 4}))
    await fleet.coordinator(policy, name="coord-b")
    await until_held(fleet, Counter({"coord-a": 2, "coord-b": 2}))

    origins = await send_spread(fleet, correlations=20, each=20)
    decisions = await fleet.decisions(lambda ds: len(ds) == 400, limit_s=60)
    assert set(fleet.deciders) == {"coord-a", "coord-b"}  # both did share the work
    assert len({d.envelope_id for d in decisions}) == 400  # one decision per envelope
    for origin in origins:  # each correlation's budget spent once, by whichever process holds its partition
        verdicts = Counter(d.verdict for d in decisions if d.correlation_id == origin)
        assert verdicts == Counter({"accept": 15, "reject": 5})
        assert len({f.sender for f in decisions if f.correlation_id == origin}) == 1
    delivered = await fleet.inbox(lambda read: len(read) >= 300)
    assert len({e.id for _, e in delivered}) == 300
    assert (await fleet.inbox_counts())["x"] == 300


async def test_a_killed_coordinators_partitions_are_taken_over_and_nothing_is_lost_or_repeated(fleet: Fleet) -> None:
    policy = {"rules": [OPEN]}
    await fleet.coordinator(policy, name="coord-a")
    await until_held(fleet, Counter({"coord-a": 4}))
    doomed = await fleet.coordinator(policy, name="coord-b")
    await until_held(fleet, Counter({"coord-a": 2, "coord-b": 2}))

    sending = asyncio.create_task(send_spread(fleet, correlations=200, each=6))
    await fleet.decisions(lambda ds: sum(d.verdict == "accept" for d in ds) >= 200, limit_s=60)
    doomed.send_signal(signal.SIGKILL)
    await doomed.exited()
    await sending
    await until_held(fleet, Counter({"coord-a": 4}))  # its leases expired and were taken over

    decisions = await fleet.decisions(lambda ds: len({d.envelope_id for d in ds}) == 1200, limit_s=90)
    assert Counter(d.verdict for d in decisions) == Counter({"accept": 1200})
    assert len(decisions) == 1200  # none decided twice, even around the kill
    delivered = await fleet.inbox(lambda read: len(read) >= 1200, limit_s=60)
    assert Counter(e.id for _, e in delivered).most_common(1)[0][1] == 1
    assert (await fleet.inbox_counts())["x"] == 1200


async def test_a_stopped_coordinator_hands_its_partitions_back_at_once(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN]}, name="coord-a")
    await until_held(fleet, Counter({"coord-a": 4}))
    leaving = await fleet.coordinator({"rules": [OPEN]}, name="coord-b")
    await until_held(fleet, Counter({"coord-a": 2, "coord-b": 2}))
    leaving.send_signal(signal.SIGTERM)
    assert await leaving.exited() == 0
    await until_held(fleet, Counter({"coord-a": 4}), limit_s=4)  # well before a lease would expire


async def test_forged_leases_and_members_move_no_partition_and_are_recorded(fleet: Fleet) -> None:
    """Well-formed lease and member values planted in the lease bucket by a connection that may write it (an
    admin's here): none makes the coordinator drop, hand back or share a partition; each is recorded as foreign
    and written over. The twin is every other test here: leases as coordinators write them move partitions."""
    await fleet.key("coord-b", role="coordinator")  # a coordinator that is not running
    coordinator = await fleet.coordinator({"rules": [OPEN]}, name="coord-a")
    await until_held(fleet, Counter({"coord-a": 4}))
    js, bucket = fleet.nc.jetstream(), subjects.coordinator_bucket(fleet.tenant)
    mallory = await fleet.bus("mallory")
    coord_as = (await js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.partition-1")).data
    unsigned = json.dumps({"name": "coord-b", "instance": "b1"}).encode()  # as leases were stored before signing
    planted = {
        "partition-0": (unsigned, "not a signed value"),
        "partition-2": (
            holder_value(mallory.identity, "mallory", "partition-2", "m1", tenant=fleet.tenant, now_ns=time.time_ns()),
            "agent key, not a coordinator's",
        ),
        "partition-3": (coord_as, "the value of partition-1, not of partition-3"),  # coord-a's own, copied
        "member-coord-b": (unsigned, "not a signed value"),  # would make coord-a share with a coordinator not running
    }
    for key, (data, _) in planted.items():
        await js.publish(f"$KV.{bucket}.{key}", data or b"")
    for key, (_, why) in planted.items():
        record = await fleet.quarantined(lambda r, k=key: r.reason == "foreign" and r.subject == f"$KV.{bucket}.{k}")  # type: ignore[misc]
        assert why in record.detail, (key, record.detail)
    await asyncio.sleep(3)  # three lease rounds: time for a partition to be dropped or handed back, were it to be
    await until_held(fleet, Counter({"coord-a": 4}), limit_s=2)  # each forged lease written over by its holder
    log = coordinator.log.read_text()
    assert "lease lost" not in log and "handing a partition back" not in log and "Traceback" not in log


async def test_an_envelope_on_another_partition_than_its_correlations_is_refused(fleet: Fleet) -> None:
    """Choosing the partition (to reach a coordinator without the correlation's budget or taint) is refused."""
    await fleet.coordinator({"limits": {"budget_per_correlation": 1}, "rules": [OPEN]})
    sneaky = await fleet.bus("sneaky")
    spent = await fleet.send(sneaky, ["x"], "the one the budget allows")
    again = new_envelope(
        tenant=fleet.tenant, kind="event", sender="sneaky", to=["x"], payload=b"over budget", correlation_id=spent
    )
    elsewhere = (sneaky.partition(spent) + 1) % PARTITIONS
    await sneaky.publish(subjects.outbox(fleet.tenant, "sneaky", elsewhere), sneaky.seal(again))
    record = await fleet.quarantined(lambda r: r.claimed_id == again.id)
    assert record.reason == "wrong_outbox"
    honest = await fleet.send(sneaky, ["x"], "a new conversation")
    # The two correlations may be on different partitions, mediated in either order: wait for both.
    delivered = await fleet.inbox(lambda read: {spent, honest} <= {e.id for _, e in read})
    assert again.id not in {e.id for _, e in delivered}
    assert (await fleet.inbox_counts())["x"] == 2


async def test_the_partition_count_is_fixed_when_the_tenant_is_made(fleet: Fleet) -> None:
    js = fleet.nc.jetstream()
    assert await tenant_partitions(js, fleet.tenant) == PARTITIONS
    admin = fleet.keys.admin(fleet.tenant)
    with pytest.raises(ConfigError, match="cannot change"):
        await provision(js, fleet.tenant, admin_key_id=admin.key_id, partitions=8)
    report = await provision(js, fleet.tenant, admin_key_id=admin.key_id)  # again, keeping it
    assert report.partitions == PARTITIONS and report.updated == []


async def test_processes_stopped_while_the_server_is_gone_exit_without_waiting_on_it(tmp_path: Path) -> None:
    """With the server down, stopping processes wait on no request to it.

    The coordinator leaves its leases to expire instead of retrying the hand-back; the ledger service stops
    retrying its consumer; every process closes its dead connection cleanly.
    """
    keys = KeyDirectory(tmp_path / "keys")
    with EmbeddedServer(port=0, data_dir=tmp_path / "js") as server:
        tenant = "gone"
        await init_tenant([server.url], tenant, keys=keys, partitions=PARTITIONS)
        fleet = Fleet(url=server.url, tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(server.url))
        coordinator = await fleet.coordinator({"rules": [OPEN]}, name="coord-a")
        await until_held(fleet, Counter({"coord-a": PARTITIONS}))
        agent = await fleet.agent("examples.pingpong:Player", "ping")
        await fleet.key("ledger", role="ledger")
        ledger = await fleet.spawn("ledger", "run", "-t", tenant, "--data", str(tmp_path / "projection"))
        await fleet.nc.close()
        server.stop()
    procs = (coordinator, agent, ledger)
    errs = [p.log for p in procs]
    retrying = ("cannot keep the leases this round", "disconnected from NATS", "disconnected from NATS")

    def all_noticed() -> bool:  # each is now retrying the lost server, the state a stop must cut short
        return all(line in err.read_text() for err, line in zip(errs, retrying, strict=True))

    deadline = time.monotonic() + 15
    while not await asyncio.to_thread(all_noticed):
        assert time.monotonic() < deadline, "the processes did not notice the server go"
        await asyncio.sleep(0.05)  # polling their logs: there is no event to wait on
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    codes = await asyncio.wait_for(asyncio.gather(*(p.exited() for p in procs)), 60)
    stopped_in = time.monotonic() - started
    assert codes == [0, 0, 0]
    assert stopped_in < 4, f"stopping took {stopped_in:.1f} s"  # waiting on requests to the lost server took 6-30 s
    errors = await asyncio.to_thread(lambda: "".join(err.read_text() for err in errs))
    assert "Traceback" not in errors and "server unreachable at stop" in errors
