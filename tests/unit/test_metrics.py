"""The metrics' pure parts: health states, gauges read from state, labels, the HTTP endpoint itself."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from tests.scrape import get
from trustbus.agents._metrics import coordinator_gauges, decided
from trustbus.bus import (
    ConsumerLag,
    ConsumerLagPoller,
    Decision,
    Health,
    LoopCollector,
    MetricsServer,
    PortInUse,
    Unavailable,
)
from trustbus.bus._metrics import LAG_READS_PER_ROUND
from trustbus.ledger._metrics import LedgerGauges


def decision(verdict: str, reasons: tuple[str, ...], decided_ns: int = 0) -> Decision:
    return Decision(
        envelope_id="e", source_seq=1, sender="a", kind="event", correlation_id="c", causation_id=None,
        verdict=verdict, reasons=reasons, deliver_to=(), dropped=(), hop=0, declared_taint=(),  # type: ignore[arg-type]
        effective_taint=(), decided_ns=decided_ns,
    )  # fmt: skip


def values(metrics: list[Metric]) -> dict[str, float]:
    return {sample.name: sample.value for metric in metrics for sample in metric.samples}


def test_health_is_ready_only_while_serving_and_connected() -> None:
    health, connected = Health(), [True]
    assert health.unready() == "starting"
    health.watch(lambda: connected[0])
    announced: list[str] = []
    health.announcing(lambda: announced.append("ready"))()
    assert announced == ["ready"] and health.unready() is None
    connected[0] = False
    assert health.unready() == "not connected to NATS"
    connected[0] = True
    health.stopping()
    assert health.unready() == "stopping"


def test_a_decision_counts_once_under_the_reason_that_decided_it() -> None:
    def count(verdict: str, reason: str) -> float:
        return REGISTRY.get_sample_value("trustbus_decisions_total", {"verdict": verdict, "reason": reason}) or 0.0

    before = count("hold", "approval_required"), count("accept", "none"), count("accept", "fanout")
    decided(decision("hold", ("fanout", "approval_required")))
    decided(decision("accept", ()))
    assert (count("hold", "approval_required"), count("accept", "none"), count("accept", "fanout")) == (
        before[0] + 1,
        before[1] + 1,
        before[2],
    )


def test_coordinator_gauges_say_how_many_holds_wait_and_for_how_long() -> None:
    holds = [decision("hold", ("x",), decided_ns=7_000_000_000), decision("hold", ("x",), decided_ns=9_000_000_000)]
    read = coordinator_gauges(lambda: 3, lambda: holds, now_ns=lambda: 10_000_000_000)
    assert values(list(read())) == {
        "trustbus_partition_leases_held": 3,
        "trustbus_holds_waiting": 2,
        "trustbus_hold_oldest_age_seconds": 3.0,
    }
    none = coordinator_gauges(lambda: 0, list, now_ns=lambda: 1)
    assert values(list(none()))["trustbus_hold_oldest_age_seconds"] == 0


class Service:
    def projected_seq(self) -> int:
        return 40

    def checkpoint_age_s(self) -> float:
        return 2.5

    def uncheckpointed(self) -> int:
        return 6


async def test_ledger_lag_is_the_polled_stream_end_less_what_was_projected() -> None:
    stop = asyncio.Event()

    async def last_seq() -> int:
        stop.set()  # one poll
        return 50

    gauges = LedgerGauges(Service(), last_seq)
    assert values(list(gauges.read()))["trustbus_ledger_lag_messages"] == 0  # nothing polled yet
    await gauges.poll(stop)
    assert values(list(gauges.read())) == {
        "trustbus_ledger_projected_seq": 40,
        "trustbus_ledger_lag_messages": 10,
        "trustbus_ledger_checkpoint_age_seconds": 2.5,
        "trustbus_ledger_uncheckpointed_messages": 6,
    }


async def test_loop_collector_reads_on_the_loop_that_owns_the_state() -> None:
    loop = asyncio.get_running_loop()
    owner: list[asyncio.AbstractEventLoop] = []

    def read() -> list[Metric]:
        owner.append(asyncio.get_running_loop())
        return list(coordinator_gauges(lambda: 1, list)())

    registry = CollectorRegistry()
    registry.register(LoopCollector(loop, read))
    got = await asyncio.to_thread(registry.get_sample_value, "trustbus_partition_leases_held")
    assert got == 1 and owner == [loop]


async def test_registering_a_loop_collector_on_its_loop_reads_nothing() -> None:
    """The process registry describes collectors as they register: that must not wait on the loop registering."""
    reads: list[int] = []

    def read() -> list[Metric]:
        reads.append(1)
        return []

    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's REGISTRY
    began = asyncio.get_running_loop().time()
    registry.register(LoopCollector(asyncio.get_running_loop(), read))
    assert reads == [] and asyncio.get_running_loop().time() - began < 0.5


def test_loop_collector_of_a_closed_loop_reports_nothing() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    assert list(LoopCollector(loop, list).collect()) == []


def test_the_endpoint_answers_each_path_and_refuses_a_taken_port() -> None:
    with MetricsServer(0) as server:
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/readyz") == (503, "starting\n")
        assert get(server.port, "/metrics")[0] == 200
        assert get(server.port, "/")[0] == 404
        with pytest.raises(PortInUse, match=f"metrics port {server.port} is in use"):
            MetricsServer(server.port)


def test_readyz_says_which_check_fails_first() -> None:
    waiting = {"catching up": True}
    with MetricsServer(0) as server:
        server.health.watch(lambda: True)
        server.health.require(lambda: None)
        server.health.require(lambda: "catching up: projected 3 of 9" if waiting["catching up"] else None)
        server.health.serving()
        assert get(server.port, "/readyz") == (503, "catching up: projected 3 of 9\n")
        waiting["catching up"] = False
        assert get(server.port, "/readyz") == (200, "ready\n")
        server.health.watch(lambda: False)
        assert get(server.port, "/readyz") == (503, "not connected to NATS\n")


async def test_consumer_lag_is_read_a_bounded_number_at_a_time_and_summed_per_group() -> None:
    names = [f"c{i:03d}" for i in range(LAG_READS_PER_ROUND + 20)]
    groups: dict[str, list[str]] = {"coordinator": names, "inbox": ["unreadable"]}
    asked: list[str] = []

    async def lag(name: str) -> ConsumerLag:
        asked.append(name)
        if name == "unreadable":
            raise Unavailable("no answer")
        return ConsumerLag(2, 1, 0)

    poller = ConsumerLagPoller(lag, lambda: groups)
    await poller.round()
    assert len(asked) == LAG_READS_PER_ROUND
    assert values(list(poller.read()))["trustbus_consumer_pending_messages"] == 2 * LAG_READS_PER_ROUND
    await poller.round()  # the rest, then the first ones again
    assert set(asked) == {*names, "unreadable"} and len(asked) == 2 * LAG_READS_PER_ROUND
    samples = {(s.name, s.labels["consumer"]): s.value for m in poller.read() for s in m.samples}
    assert samples == {
        ("trustbus_consumer_pending_messages", "coordinator"): 2 * len(names),
        ("trustbus_consumer_ack_pending_messages", "coordinator"): len(names),
        ("trustbus_consumer_redelivered_messages", "coordinator"): 0,
    }  # no series for a group none of whose consumers could be read
    groups["coordinator"] = names[:1]  # partitions handed back: their consumers are forgotten
    await poller.round()
    assert values(list(poller.read()))["trustbus_consumer_pending_messages"] == 2
