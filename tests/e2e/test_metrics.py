"""``--metrics-port``: a coordinator's and an agent's /metrics, /healthz and /readyz, scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import nats

from tests.e2e.fleet import Fleet
from tests.processes import TRUSTBUS, one_shot_async
from tests.scrape import get, scrape, value
from trustbus._supervisor import Process
from trustbus.bus import EmbeddedServer, KeyDirectory, MetricsServer, init_tenant, new_envelope, subjects

RULE = {"from": "sender", "to": ["sink"], "kinds": ["event"]}


async def until(check: Callable[[], object], *, limit_s: float = 30) -> None:
    """Poll ``check()`` (an HTTP scrape: nothing announces a change) until it holds."""
    deadline = time.monotonic() + limit_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)  # pacing between scrapes


def metrics_port(process: Process) -> int:
    assert process.ready_line is not None
    port = process.ready_line["metrics_port"]
    assert isinstance(port, int) and port > 0, process.ready_line
    return port


async def test_counters_move_by_exactly_the_traffic_sent(fleet: Fleet) -> None:
    coordinator = metrics_port(await fleet.coordinator({"rules": [RULE]}, extra=("--metrics-port", "0")))
    await fleet.key("idle")
    agent = metrics_port(
        await fleet.spawn("agent", "run", "examples.pingpong:Player", "--id", "idle", "-t", fleet.tenant,
                          "--metrics-port", "0")
    )  # fmt: skip
    sender, stranger = await fleet.bus("sender"), await fleet.bus("stranger")
    for i in range(2):
        await fleet.send(stranger, ["sink"], i)  # no rule lets stranger speak: not_allowed
    for i in range(5):
        await fleet.send(sender, ["sink"], i)
    # sender's envelope re-published from stranger's outbox: quarantined, never decided
    replayed = sender.seal(new_envelope(tenant=fleet.tenant, kind="event", sender="sender", to=["sink"], payload=b"1"))
    await stranger.publish(subjects.outbox(fleet.tenant, "stranger", 0), replayed)
    # and bytes no one signed: refused by the intake, recorded in a summary, counted all the same
    await fleet.nc.jetstream().publish(subjects.outbox(fleet.tenant, "stranger", 0), b"not an envelope")
    await fleet.decisions(lambda ds: len(ds) == 7)
    await fleet.quarantined(lambda r: r.reason == "wrong_outbox")

    await fleet.quarantined(lambda r: r.reason == "malformed")

    def counted() -> bool:  # each count follows the store of what it counts, by a moment
        samples = scrape(coordinator)
        refused = [value(samples, "trustbus_quarantines_total", reason=r) for r in ("malformed", "wrong_outbox")]
        return value(samples, "trustbus_mediation_latency_seconds_count") == 5 and refused == [1, 1]

    await until(counted)
    samples = await asyncio.to_thread(scrape, coordinator)
    assert value(samples, "trustbus_decisions_total", verdict="accept", reason="none") == 5
    assert value(samples, "trustbus_decisions_total", verdict="reject", reason="not_allowed") == 2
    assert sum(v for (name, _), v in samples.items() if name == "trustbus_decisions_total") == 7
    assert value(samples, "trustbus_quarantines_total", reason="wrong_outbox") == 1
    assert value(samples, "trustbus_quarantines_total", reason="malformed") == 1
    assert value(samples, "trustbus_partition_leases_held") == len(range(sender.partitions))
    assert value(samples, "trustbus_holds_waiting") == 0
    assert value(samples, "trustbus_hold_oldest_age_seconds") == 0
    assert 0 < value(samples, "trustbus_mediation_latency_seconds_sum") < 30
    pending = ("trustbus_consumer_pending_messages", frozenset({("consumer", "coordinator")}))
    await until(lambda: pending in scrape(coordinator))  # read every 5 s: the first round may precede the partitions

    for port in (coordinator, agent):
        assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
        assert (await asyncio.to_thread(get, port, "/nothing"))[0] == 404
    pending = ("trustbus_consumer_pending_messages", frozenset({("consumer", "inbox")}))
    await until(lambda: pending in scrape(agent))
    agent_samples = await asyncio.to_thread(scrape, agent)  # valid exposition, and no decision counted there
    assert not [name for name, _ in agent_samples if name.startswith("trustbus_decisions")]


async def test_readyz_and_the_logs_follow_the_connection_to_the_server(tmp_path: Path) -> None:
    with EmbeddedServer(port=0, data_dir=tmp_path / "js") as server:
        tenant, keys = f"r{os.getpid()}", KeyDirectory(tmp_path / "keys")
        await init_tenant([server.url], tenant, keys=keys)
        url = server.url.replace("nats://", f"nats://trustbus:{PASSWORD}@")  # a server without auth takes any
        fleet = Fleet(url=url, tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(server.url))
        try:
            coordinator = await fleet.coordinator({"rules": [RULE]}, extra=("--metrics-port", "0"))
            port = metrics_port(coordinator)
            assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
            await fleet.nc.close()
            server.stop()
            await until(lambda: get(port, "/readyz") == (503, "not connected to NATS\n"))
            assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
            down = time.monotonic()  # an outage of a few reconnect attempts (two a second) before the server returns
            await until(lambda: time.monotonic() - down > 2 and get(port, "/readyz")[0] == 503)
            server.start()  # the same port and store
            await until(lambda: get(port, "/readyz") == (200, "ready\n"))
            fleet.nc = await nats.connect(server.url)
            await until(lambda: "reconnected to NATS" in coordinator.log.read_text())
        finally:
            await fleet.close()
    text = coordinator.log.read_text()
    assert PASSWORD not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    about_nats = [line for line in lines if "NATS" in str(line["msg"]) or str(line["msg"]).startswith("nats error")]
    assert [line["msg"] for line in about_nats] == [
        "disconnected from NATS; reconnecting to any of the given servers",
        "reconnected to NATS",
    ]  # not a line per failed attempt: their count is on the last line
    assert about_nats[1]["failed_attempts"] >= 2


PASSWORD = "pw-never-logged"


async def test_a_taken_metrics_port_is_a_clear_error(fleet: Fleet) -> None:
    await fleet.key("coordinator", role="coordinator")
    policy = tmp_policy(fleet)
    with MetricsServer(0) as taken:
        argv = [*TRUSTBUS, "coordinator", "run", "-t", fleet.tenant, "--policy", str(policy)]
        result = await one_shot_async([*argv, "--metrics-port", str(taken.port)], env=fleet.env)
    assert result.returncode == 1
    assert f"metrics port {taken.port} is in use" in result.stderr


def tmp_policy(fleet: Fleet) -> Path:
    file = fleet.tmp / "policy.yaml"
    file.write_text("rules: []\n")
    return file


async def test_ledger_reports_its_lag_and_checkpoints(fleet: Fleet, tmp_path: Path) -> None:
    await fleet.key("ledger", role="ledger")
    argv = ("ledger", "run", "-t", fleet.tenant, "--data", str(tmp_path / "projection"), "--checkpoint-seconds", "0.1")
    port = metrics_port(await fleet.spawn(*argv, "--metrics-port", "0"))
    sender = await fleet.bus("sender")
    for i in range(3):
        await fleet.send(sender, ["sink"], i)
    stream_last = await sender.last_seq()
    assert stream_last >= 3

    def checkpointed() -> bool:
        samples = scrape(port)
        return (
            value(samples, "trustbus_ledger_projected_seq") >= stream_last
            and value(samples, "trustbus_ledger_checkpoints_total", outcome="published") >= 1
        )

    await until(checkpointed)
    samples = await asyncio.to_thread(scrape, port)
    assert value(samples, "trustbus_ledger_checkpoints_total", outcome="failed") == 0
    assert value(samples, "trustbus_ledger_checkpoint_age_seconds") < 30
    ack_pending = ("trustbus_consumer_ack_pending_messages", frozenset({("consumer", "ledger")}))
    await until(lambda: ack_pending in scrape(port))
    assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")


async def test_deferred_envelopes_count_as_redeliveries(fleet: Fleet) -> None:
    rate = {"per_second": 5, "burst": 1, "over_limit": "delay"}
    port = metrics_port(
        await fleet.coordinator({"limits": {"rate": rate}, "rules": [RULE]}, extra=("--metrics-port", "0"))
    )
    sender = await fleet.bus("sender")
    for i in range(3):
        await fleet.send(sender, ["sink"], i)
    await fleet.decisions(lambda ds: len(ds) == 3)
    await until(lambda: value(scrape(port), "trustbus_decisions_total", verdict="accept", reason="none") == 3)
    assert value(await asyncio.to_thread(scrape, port), "trustbus_redeliveries_total") >= 2  # each over the burst


async def test_a_coordinator_whose_lease_rounds_fail_is_unready_until_one_succeeds(fleet: Fleet) -> None:
    """Connected, but its lease bucket gone (deleted under it): no lease round ends well, and once the lease time
    has passed /readyz says since when; provisioning the tenant again puts the bucket back, and it is ready."""
    port = metrics_port(await fleet.coordinator({"rules": [RULE]}, extra=("--metrics-port", "0")))
    assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
    await fleet.nc.jetstream().delete_key_value(subjects.coordinator_bucket(fleet.tenant))
    await until(lambda: get(port, "/readyz")[1].startswith("leases not renewed for "))
    status, reason = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503 and reason.endswith(" s\n"), reason
    await init_tenant([fleet.url], fleet.tenant, keys=fleet.keys)
    await until(lambda: get(port, "/readyz") == (200, "ready\n"))


BACKLOG = 3000  # about a second of catching up on 2 cores: many answers before it is ready


async def test_a_ledger_started_on_a_backlog_is_unready_until_it_has_caught_up(fleet: Fleet, tmp_path: Path) -> None:
    """Every answer /readyz gives, from the ready line on, in order: catching up, counting, then ready."""
    await fleet.key("ledger", role="ledger")
    sender = await fleet.bus("sender")
    for i in range(BACKLOG):  # pipelined, acks awaited together: the backlog takes a moment, not minutes
        envelope = new_envelope(tenant=fleet.tenant, kind="event", sender="sender", to=["sink"], payload=b"%d" % i)
        await sender.publish_pipelined(sender.outbox(envelope), sender.seal(envelope))
    await sender.flush()
    last = await sender.last_seq()  # every envelope stored: the stream's end the ledger sees at its start
    argv = ("ledger", "run", "-t", fleet.tenant, "--data", str(tmp_path / "projection"))
    port = metrics_port(await fleet.spawn(*argv, "--metrics-port", "0"))

    def answers() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        while not seen or seen[-1] != (200, "ready\n"):
            seen.append(get(port, "/readyz"))
            time.sleep(0.02)  # pacing between asks (the answers go to the process's own threads)
        return seen

    seen = await asyncio.to_thread(answers)
    catching_up = [body for status, body in seen if status == 503]
    assert catching_up and all(body.startswith("catching up: projected ") for body in catching_up), set(seen)
    assert catching_up[0].endswith(f" of {last}\n")
    projected = [int(body.split()[3]) for body in catching_up]
    assert projected == sorted(projected) and projected[-1] < last
    assert seen[-1] == (200, "ready\n") and set(seen[len(catching_up) :]) == {(200, "ready\n")}
