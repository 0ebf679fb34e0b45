"""Agent B of bench/soak.py: ``trustbus agent run bench._soak_sink:Sink --id b``, counting every index once.

Its memory does not grow with the run: the indices seen are one byte each in a ``bytearray`` of the
run's size (``$BENCH_SOAK_TOTAL``), allocated at start, so the agent's RSS the bench samples is the
runtime's, not the bench's bookkeeping. Every ``REPORT_S`` in which something arrived it prints one
progress line: distinct indices received, second deliveries, and the time of the first receipt since the
previous line (so the bench can time the first delivery after a restart to the receipt, not to its read).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from trustbus.agents import Agent, Context

TOTAL_ENV = "BENCH_SOAK_TOTAL"
REPORT_S = 0.05


class Sink(Agent):
    """Marks each envelope's index (``{"i": index, ...}`` payload) as received; counts second deliveries."""

    def __init__(self) -> None:
        self.seen = bytearray(int(os.environ[TOTAL_ENV]))
        self.received = 0
        self.duplicates = 0
        self.first_ns = 0  # the first receipt not yet reported
        self._reporter: asyncio.Task[None] | None = None

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        self._reporter = asyncio.get_running_loop().create_task(self._report())

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
