"""A full store: publishers are told why, nothing acked is lost, every process carries on once space returns.

The server's JetStream store is limited (``max_file_store``). The coordinator
and the ledger service are paused (SIGSTOP) while envelopes reach the outbox,
then the store is filled to the last byte by another stream, and both are
resumed: every write they make (decisions, deliveries, leases, checkpoints)
is refused for lack of space. Then the other stream is purged.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.js.errors
import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.test_ledger_service import settled, start_ledger
from trustbus._supervisor import Process
from trustbus.bus import EmbeddedServer, KeyDirectory, StoreFull, init_tenant, new_envelope
from trustbus.ledger import verify_stream

POLICY = {"rules": [{"from": "*", "to": ["*"], "kinds": ["event", "reply"]}]}
STORE_BYTES = 24 * 1024 * 1024
INSUFFICIENT_RESOURCES = 10023  # JetStream's err_code when a store has no room


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    conf = tmp_path_factory.mktemp("small") / "small.conf"
    conf.write_text(f"jetstream {{ max_file_store: {STORE_BYTES} }}\n")
    with EmbeddedServer(port=0, config=conf) as server:
        yield server


@pytest.fixture
async def fleet(small_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    keys = KeyDirectory(tmp_path / "keys")
    await init_tenant([small_server.url], "full", keys=keys)
    fleet = Fleet(url=small_server.url, tenant="full", keys=keys, tmp=tmp_path, nc=await nats.connect(small_server.url))
    try:
        yield fleet
    finally:
        await fleet.close()


async def fill(fleet: Fleet) -> int:
    """Fill the store to the last few bytes with messages of another stream; how many bytes they hold."""
    js = fleet.nc.jetstream()
    await js.add_stream(name="FILLER", subjects=["filler"])
    stored, size = 0, 512 * 1024
    while size >= 64:
        try:
            await js.publish("filler", b"x" * size)
            stored += size
        except nats.js.errors.APIError as exc:
            assert exc.err_code == INSUFFICIENT_RESOURCES, exc
            size //= 4
    return stored


async def until(check: Callable[[], Awaitable[object]], *, limit_s: float = 60, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def logged(process: Process, words: str, *, times: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sum(words in line for line in process.tail(400)) >= times

    return check


async def test_a_full_store_refuses_writes_with_its_cause_and_everything_carries_on_once_space_returns(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = tmp_path / "projection"
    coordinator = await fleet.coordinator(POLICY)
    ledger = await start_ledger(fleet, data, "--checkpoint-every", "1", "--checkpoint-seconds", "0.2")
    bob = await fleet.agent("tests.e2e.fleet_agents:GatedRecorder", "bob")  # replies twice to each delivery
    alice = await fleet.bus("alice")
    sent = [await fleet.send(alice, ["bob"], {"i": i}) for i in range(5)]
    await until(lambda: _inboxes(fleet, bob=5, alice=10), what="the first deliveries and replies")

    sent += [await fleet.send(alice, ["bob"], {"i": i, "gate": True}) for i in range(5, 10)]  # bob waits at its gate
    await until(lambda: _inboxes(fleet, bob=10), what="deliveries bob is holding")
    for process in (coordinator, ledger):
        process.send_signal(signal.SIGSTOP)
    sent += [await fleet.send(alice, ["bob"], {"i": i}) for i in range(10, 20)]  # in the outbox, not decided
    await fill(fleet)
    late = new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["bob"], payload=b"20")
    with pytest.raises(StoreFull, match="no room"):
        await alice.send(late)
    for process in (coordinator, ledger):
        process.send_signal(signal.SIGCONT)
    bob.send_signal(signal.SIGUSR1)  # bob replies to what it holds: there is no room for the replies
    for process, name in ((coordinator, "coordinator"), (ledger, "ledger service")):
        await until(logged(process, "no room"), what=f"the {name} to meet the full store")
    await until(logged(bob, "no room", times=3), what="the agent to fail to reply three times")
    assert all(process.returncode is None for process in (coordinator, ledger, bob))

    await fleet.nc.jetstream().purge_stream("FILLER")
    sent += [await fleet.send(alice, ["bob"], {"i": i}) for i in range(21, 26)]

    await until(lambda: _inboxes(fleet, bob=25, alice=50), what="every acked envelope and reply to be delivered")
    assert await fleet.inbox_counts() == {"bob": 25, "alice": 50}  # each once
    assert len(set(sent)) == 25
    js = fleet.nc.jetstream()
    # Kept through the outage, not handed back per failure: the agent took each delivery once, the coordinator
    # each of alice's envelopes once (plus one hand-back, if its lease lapsed meanwhile).
    assert (await js.consumer_info(f"TB_{fleet.tenant}", "in-bob")).delivered.consumer_seq == 25
    assert (await js.consumer_info(f"TB_{fleet.tenant}", "coordinator-0-alice")).delivered.consumer_seq <= 25 + 10
    await settled(fleet, data, limit_s=60)
    assert all(process.returncode is None for process in (coordinator, ledger, bob))
    report = await verify_stream([fleet.url], fleet.tenant)
    assert report.ok, report


async def _inboxes(fleet: Fleet, **at_least: int) -> bool:
    counts = await fleet.inbox_counts()
    return all(counts[name] >= n for name, n in at_least.items())
