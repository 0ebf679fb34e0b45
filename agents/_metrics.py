"""What the coordinator and the agent runtime count, for ``/metrics`` (bus._metrics serves them).

Labels are bounded sets only (verdict, reason code, tool, phase, outcome): never
an agent, envelope or correlation id. docs/OBSERVABILITY.md says what each means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from trustbus.bus import Decision

DECISIONS = Counter(
    "trustbus_decisions_total",
    "Decisions the coordinator recorded, by verdict and the reason that decided it (none if it gives none).",
    ["verdict", "reason"],
)
MEDIATION_SECONDS = Histogram(
    "trustbus_mediation_latency_seconds",
    "From an envelope's store time (or its approval's) to its first forwards being published.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MEMORY_WRITES = Counter(
    "trustbus_memory_writes_total",
    "Accepted memory writes the coordinator stored, by outcome (applied, already_applied, stale_revision).",
    ["outcome"],
)
EFFECTS = Counter("trustbus_effects_total", "Effect records an agent stored, by tool and phase.", ["tool", "phase"])
EFFECT_SECONDS = Histogram(
    "trustbus_effect_duration_seconds", "How long a tool's implementation ran, success or failure.", ["tool"]
)


def decided(decision: Decision) -> None:
    """Count a decision this process recorded."""
    DECISIONS.labels(decision.verdict, decision.reasons[-1] if decision.reasons else "none").inc()


def forwarded(decision: Decision, *, now_ns: Callable[[], int] = time.time_ns) -> None:
    """Observe how long an envelope accepted just now waited from its store time to its forwards."""
    MEDIATION_SECONDS.observe(max(0, now_ns() - decision.decided_ns) / 1e9)


def coordinator_gauges(
    leases: Callable[[], int], holds: Callable[[], list[Decision]], *, now_ns: Callable[[], int] = time.time_ns
) -> Callable[[], Iterator[Metric]]:
    """A reader for bus.LoopCollector: partition leases held, holds waiting and the age of the oldest.

    ``holds()``: the decisions still held in every partition this process mediates.
    """

    def read() -> Iterator[Metric]:
        held = holds()
        yield GaugeMetricFamily(
            "trustbus_partition_leases_held", "Partitions this coordinator process holds the lease of.", leases()
        )
        yield GaugeMetricFamily(
            "trustbus_holds_waiting", "Envelopes and tool calls held for an operator's approval.", len(held)
        )
        oldest = min((d.decided_ns for d in held), default=None)
        yield GaugeMetricFamily(
            "trustbus_hold_oldest_age_seconds",
            "How long the oldest hold has waited (0 when none waits).",
            0.0 if oldest is None else max(0, now_ns() - oldest) / 1e9,
        )

    return read
