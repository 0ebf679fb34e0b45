"""The bus on a 3-node JetStream cluster: `trustbus up --cluster`, R3 provisioning, and a leader killed under load.

One cluster serves the module. The failover test runs a coordinator and an
agent as processes, given all three URLs, sends envelopes through them, kills
the node that leads the tenant's stream while they flow, and checks that every
acked envelope reaches its inbox exactly once, that the ledger still verifies,
and that the node, started again, catches up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import PubAck, StreamInfo

from tests.e2e.fleet import Fleet
from tests.processes import TRUSTBUS, run, supervised
from trustbus._supervisor import Process, Supervisor
from trustbus.bus import Bus, EmbeddedCluster, KeyDirectory, init_tenant, new_envelope, subjects
from trustbus.ledger import ProjectionError, verify_stream
from trustbus.ledger._segments import read_catalogue

OPEN = {"from": "*", "to": ["*", "topic:*"], "kinds": ["event", "reply"]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    """Three nodes on free ports with temporary stores, for the module (started in the main thread)."""
    with EmbeddedCluster(3) as nodes:
        yield nodes


async def _until(condition: Callable[[], Awaitable[bool]], *, limit_s: float, every_s: float = 0.1) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took (AssertionError past ``limit_s``)."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"condition not met within {limit_s}s")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


async def _caught_up(js: nats.js.JetStreamContext, stream: str) -> bool:
    """Every replica of ``stream`` is online, current and has no lag."""
    info: StreamInfo = await js.stream_info(stream)
    if info.cluster is None or info.cluster.leader is None:
        return False
    peers = info.cluster.replicas or []
    return len(peers) == 2 and all(p.current and not p.offline and not p.lag for p in peers)


async def _up(processes: Supervisor) -> tuple[Process, dict[str, object]]:
    """`trustbus up --cluster 3 --port 0 --json` as a child process, and the object it printed."""
    up = processes.start("up", [*TRUSTBUS, "up", "--cluster", "3", "--port", "0", "--json"])
    return up, await up.ready(30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_cluster_forms_a_cluster_that_provisions_at_once_and_stops_on_sigterm(tmp_path: Path) -> None:
    with supervised(tmp_path / "logs") as processes:
        up, started = await _up(processes)
        urls, pids = started["urls"], started["pids"]
        assert isinstance(urls, list) and isinstance(pids, list)
        assert len(set(urls)) == 3 and len(set(pids)) == 3
        nc = await nats.connect(urls[0])
        try:
            assert len(set(nc._server_info["connect_urls"])) == 3  # every node routed to every other
        finally:
            await nc.close()
        # No wait: `up` printed its URLs only once the meta leader counted every node as a current peer.
        report, _ = await init_tenant(urls, "upcluster", keys=KeyDirectory(tmp_path / "keys"))
        assert report.replicas == 3
        assert report.created == [
            "TB_upcluster",
            "TBADV_upcluster",
            "tb_keys_upcluster",
            "tb_mem_upcluster",
            "tb_coord_upcluster",
            "tb_state_upcluster",
        ]
        up.send_signal(signal.SIGTERM)
        assert await up.exited(30) == 0
        assert not any(_alive(pid) for pid in pids)
        assert not await asyncio.to_thread(Path(str(started["data"])).exists)  # the temporary store is removed


async def test_up_cluster_reports_a_dead_node_and_serves_on_with_quorum(tmp_path: Path) -> None:
    with supervised(tmp_path / "logs") as processes:
        up, started = await _up(processes)
        pids = started["pids"]
        assert isinstance(pids, list)
        os.kill(pids[1], signal.SIGKILL)

        async def reported() -> bool:  # up reports on stderr, which goes to its log
            return any("still run" in line for line in up.tail()) or up.returncode is not None

        await _until(reported, limit_s=30, every_s=0.05)
        lines = up.log.read_text().splitlines()
        ends = [n for n, line in enumerate(lines, start=1) if "still run" in line]
        assert ends, "\n".join(lines)
        report = lines[: ends[0]]
        assert "node n2" in report[0] and "exited with code -9" in report[0]
        assert "2 of 3 nodes still run" in report[-1] and up.returncode is None
        up.send_signal(signal.SIGTERM)
        assert await up.exited(30) == 1  # stopped on request, but a node had died
        assert not any(_alive(pid) for pid in pids)


def _init(cluster: EmbeddedCluster, tmp_path: Path, tenant: str, *extra: str) -> dict[str, object]:
    env = {**os.environ, "NATS_URL": ",".join(cluster.urls), "TRUSTBUS_KEYS": str(tmp_path / "keys")}
    result = run("init", "--tenant", tenant, "--json", *extra, env=env)
    report: dict[str, object] = json.loads(result.stdout)
    return report


async def test_init_on_the_cluster_makes_r3_stream_and_buckets(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    report = _init(cluster, tmp_path, "rthree")
    assert report["replicas"] == 3
    explicit = _init(cluster, tmp_path, "rone", "--replicas", "1")
    assert explicit["replicas"] == 1
    nc = await nats.connect(cluster.urls)
    try:
        js = nc.jetstream()
        for name in ("TB_rthree", "KV_tb_keys_rthree", "KV_tb_mem_rthree", "KV_tb_coord_rthree", "KV_tb_state_rthree"):
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.leader in ("n1", "n2", "n3")
            peers = {info.cluster.leader, *(peer.name for peer in info.cluster.replicas or [])}
            assert peers == {"n1", "n2", "n3"}, name
        assert (await js.stream_info("TB_rone")).config.num_replicas == 1
    finally:
        await nc.close()


async def test_ledger_service_survives_losing_its_consumers_leader(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    tenant, urls = "ledgerfail", cluster.urls
    stream, keys = f"TB_{tenant}", KeyDirectory(tmp_path / "keys")
    await init_tenant(urls, tenant, keys=keys)
    fleet = Fleet(url=",".join(urls), tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(urls))
    try:
        await fleet.key("ledger", role="ledger")
        data = tmp_path / "projection"
        ledger = await fleet.spawn("ledger", "run", "-t", tenant, "--data", str(data))
        alice = await fleet.bus("alice")
        js = fleet.nc.jetstream()

        async def send(n: int) -> None:
            for i in range(n):
                env = new_envelope(tenant=tenant, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
                await alice.publish_pipelined(subjects.outbox(tenant, "alice", 0), alice.seal(env))
            await alice.flush(timeout_s=60)

        async def projected() -> bool:
            try:
                catalogue = await asyncio.to_thread(read_catalogue, data)
            except ProjectionError:
                return False
            return bool(catalogue.last_seq == (await js.stream_info(stream)).state.last_seq)

        await send(200)
        await _until(projected, limit_s=30)
        consumer = await js.consumer_info(stream, "ledger")
        assert consumer.cluster is not None and consumer.cluster.leader is not None
        lost = consumer.cluster.leader
        cluster.kill(lost)
        await send(200)  # re-sent through the election
        await _until(projected, limit_s=60)
        assert ledger.returncode is None  # it waited for a new leader instead of giving up
        cluster.restart(lost)
        await _until(lambda: _caught_up(js, stream), limit_s=60)
        ledger.send_signal(signal.SIGTERM)
        assert await ledger.exited(30) == 0
    finally:
        await fleet.close()


TOTAL = 5000  # envelopes alice sends bob in the failover test (bob answers each)
WINDOW = 100  # envelopes the sender has in flight at once, like an agent that awaits its sends in batches


async def test_stream_leader_killed_under_load_delivers_every_acked_envelope_exactly_once(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    tenant, urls = "failover", cluster.urls
    stream = f"TB_{tenant}"
    keys = KeyDirectory(tmp_path / "keys")
    report, _ = await init_tenant(urls, tenant, keys=keys)
    assert report.replicas == 3
    fleet = Fleet(url=",".join(urls), tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(urls))
    watcher = None
    try:
        await fleet.coordinator({"rules": [OPEN]})
        await fleet.agent("tests.e2e.cluster_agents:Echo", "bob")
        js = fleet.nc.jetstream()
        # The sender starts on the node that leads the stream, the one to be killed (it learns the
        # other nodes from the server), so its in-flight publishes lose their connection too.
        first = await js.stream_info(stream)
        assert first.cluster is not None and first.cluster.leader is not None
        await fleet.key("alice")
        alice = await Bus.connect(
            cluster.node(first.cluster.leader).url,
            tenant=tenant, name="alice", identity=keys.load(tenant, "alice"),
        )  # fmt: skip
        fleet.buses.append(alice)

        acked: list[str] = []
        failed: dict[str, BaseException] = {}
        quarter = asyncio.Event()

        async def send_all() -> None:
            outbox = subjects.outbox(tenant, "alice", 0)
            for start in range(0, TOTAL, WINDOW):
                window: dict[str, asyncio.Future[PubAck]] = {}
                for i in range(start, start + WINDOW):
                    env = new_envelope(tenant=tenant, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
                    window[env.id] = await alice.publish_pipelined(outbox, alice.seal(env))
                for envelope_id, ack in window.items():
                    try:
                        await ack
                    except Exception as exc:
                        failed[envelope_id] = exc
                    else:
                        acked.append(envelope_id)
                if len(acked) >= TOTAL // 4:
                    quarter.set()

        sending = asyncio.create_task(send_all())
        await asyncio.wait_for(quarter.wait(), 60)

        # Kill the stream's leader while the sender, the coordinator and the agent are all busy.
        before = await js.stream_info(stream)
        assert before.cluster is not None and before.cluster.leader is not None
        leader = before.cluster.leader
        survivor = next(node.url for node in cluster.nodes if node.server_name != leader)
        watcher = await nats.connect(survivor)  # hears the election even if fleet.nc was on the dead node
        elected = asyncio.Event()
        new_leader: list[str] = []

        async def on_elected(msg: Msg) -> None:
            new_leader.append(json.loads(msg.data)["leader"])
            elected.set()

        await watcher.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}", cb=on_elected)
        await watcher.flush()
        acked_at_kill = len(acked)
        killed = time.monotonic()
        cluster.kill(leader)
        await asyncio.wait_for(elected.wait(), 30)
        election_s = time.monotonic() - killed
        assert new_leader[0] != leader
        if leader == first.cluster.leader:
            assert alice.reconnects >= 1  # the sender moved to a surviving node

        await asyncio.wait_for(sending, 120)
        assert not failed, f"{len(failed)} publishes failed; first: {next(iter(failed.values()))!r}"
        assert len(acked) == TOTAL and acked_at_kill < TOTAL  # the kill came while envelopes were still being sent

        # Every acked envelope reaches bob's inbox once, and bob's answer to each reaches alice once.
        sent = set(acked)

        def complete(read: list[tuple[str, object]]) -> bool:
            return len(read) >= 2 * TOTAL

        delivered = await fleet.inbox(complete, limit_s=90)  # type: ignore[arg-type]
        to_bob = Counter(e.id for r, e in delivered if r == "bob")
        replies = [e for r, e in delivered if r == "alice"]
        assert set(to_bob) == sent, f"missing {len(sent - set(to_bob))}, unexpected {len(set(to_bob) - sent)}"
        assert max(to_bob.values()) == 1, f"{sum(n - 1 for n in to_bob.values())} delivered twice"
        assert Counter(e.id for e in replies).most_common(1)[0][1] == 1
        assert Counter(e.causation_id for e in replies) == Counter(dict.fromkeys(sent, 1))  # one answer each
        assert await fleet.inbox_counts() == Counter({"bob": TOTAL, "alice": TOTAL})  # nothing more stored

        verified = await verify_stream(urls, tenant)
        assert verified.ok, verified.breaks[:3]
        assert verified.count == verified.verified + verified.recorded_rejections

        # The killed node comes back on its ports and store and catches up with the stream.
        restarted = time.monotonic()
        cluster.restart(leader)
        catch_up_s = await _until(lambda: _caught_up(js, stream), limit_s=60)
        print(
            f"\nfailover: leader {leader} killed after {acked_at_kill}/{TOTAL} acks; "
            f"{new_leader[0]} elected in {election_s:.2f}s; {leader} restarted and current "
            f"{time.monotonic() - restarted:.2f}s later (caught up in {catch_up_s:.2f}s of polling); "
            f"{verified.count} ledger messages verified"
        )
    finally:
        if watcher is not None:
            await watcher.close()
        await fleet.close()
