"""Agent B of bench/soak.py: ``trustbus agent run bench._soak_sink:Sink --id b``, counting every index once.

Its memory does not grow with the run: the indices seen are one byte each in a ``bytearray`` of the
run's size (``$BENCH_SOAK_TOTAL``), allocated at start, so the agent's RSS the bench samples is the
runtime's, not the bench's bookkeeping. Every ``REPORT_S`` in which something arrived it prints one
progress line: distinct indices received, second deliveries, and the time of the first receipt since the
previous line (so the bench can time the first delivery after a restart to the receipt, not to its read).

With ``$BENCH_SOAK_TRACE`` set to a file, it traces its allocations (``tracemalloc``) and, every
``TRACE_S``, writes there what the process holds and the sources whose holdings grew most since the first
report: to tell what grows per message from what a window bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from trustbus.agents import Agent, Context

TOTAL_ENV = "BENCH_SOAK_TOTAL"
TRACE_ENV = "BENCH_SOAK_TRACE"
REPORT_S = 0.05
TRACE_S = 30.0
TRACE_TOP = 12


class Sink(Agent):
    """Marks each envelope's index (``{"i": index, ...}`` payload) as received; counts second deliveries."""

    def __init__(self) -> None:
        self.seen = bytearray(int(os.environ[TOTAL_ENV]))
        self.received = 0
        self.duplicates = 0
        self.first_ns = 0  # the first receipt not yet reported
        self._tasks: list[asyncio.Task[None]] = []
        self._trace = Path(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None
        if self._trace is not None:
            tracemalloc.start(8)

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._report()))
        if self._trace is not None:
            self._tasks.append(loop.create_task(self._trace_growth(self._trace)))

    async def handle(self, ctx: Context) -> None:
        now = time.time_ns()
        index = json.loads(ctx.envelope.payload)["i"]
        if self.seen[index]:
            self.duplicates += 1
        else:
            self.seen[index] = 1
            self.received += 1
        self.first_ns = self.first_ns or now

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_S)  # a cadence, not a wait for an event
            if self.first_ns:
                line = {"progress": "soak", "received": self.received, "duplicates": self.duplicates}
                sys.stdout.write(json.dumps({**line, "first_ns": self.first_ns}) + "\n")
                sys.stdout.flush()
                self.first_ns = 0

    async def _trace_growth(self, out: Path) -> None:
        first: tracemalloc.Snapshot | None = None
        while True:
            await asyncio.sleep(TRACE_S)  # a cadence
            snapshot = tracemalloc.take_snapshot()
            first = first or snapshot
            held = sum(stat.size for stat in snapshot.statistics("filename"))
            lines = [f"received {self.received} held {held / 2**20:.1f} MB"]
            for stat in snapshot.compare_to(first, "traceback")[:TRACE_TOP]:
                lines.append(f"  {stat.size_diff / 2**10:+,.0f} KiB in {stat.count_diff:+,} blocks:")
                lines.extend(f"    {line}" for line in stat.traceback.format()[-6:])
            with out.open("a") as file:
                file.write("\n".join(lines) + "\n")
