"""What a bench's sender and sink processes share, in the standard library alone (the AutoGen peers run it too).

Each payload is JSON of a fixed size carrying the phase name, the message index, the phase's message
count and the sender's ``time.time_ns()`` taken just before the message is built. A sink records
``time.time_ns()`` on receipt for the first delivery of each index and, once it has seen every index of a
phase, writes ``<$BENCH_MEDIATED_OUT>/<phase>.json``; it prints JSON progress lines meanwhile (and one for
each second delivery of an index, with the phase's count of them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

OUT_ENV = "BENCH_MEDIATED_OUT"  # where the sinks write
PROGRESS_EVERY = 250


def make_payload(phase: str, index: int, count: int, sent_ns: int, size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (or the smallest possible, if larger) with the timing fields."""
    head = f'{{"p":"{phase}","i":{index},"n":{count},"t":{sent_ns},"x":"'
    return (head + "x" * max(0, size - len(head) - 2) + '"}').encode()


def emit(**fields: Any) -> None:
    """One JSON line on stdout, for the bench's reader thread."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Recorder:
    """Receive times per phase; writes a phase's file once every index has arrived."""

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = out_dir
        self._phases: dict[str, dict[str, Any]] = {}

    def record(self, payload: bytes, received_ns: int) -> None:
        fields = json.loads(payload)
        name = fields["p"]
        phase = self._phases.get(name)
        if phase is None:
            phase = self._phases[name] = {"n": fields["n"], "seen": {}, "duplicates": 0, "written": False}
        seen: dict[int, tuple[int, int]] = phase["seen"]
        if fields["i"] in seen:
            phase["duplicates"] += 1
            emit(progress=name, received=len(seen), duplicates=phase["duplicates"])
            return
        seen[fields["i"]] = (fields["t"], received_ns)
        if len(seen) % PROGRESS_EVERY == 0 or len(seen) == phase["n"]:
            emit(progress=name, received=len(seen))
        if len(seen) == phase["n"] and not phase["written"]:
            phase["written"] = True
            self._write(name, phase)

    def _write(self, name: str, phase: dict[str, Any]) -> None:
        indices = sorted(phase["seen"])
        result = {
            "phase": name,
            "n": phase["n"],
            "duplicates": phase["duplicates"],
            "index": indices,
            "sent_ns": [phase["seen"][i][0] for i in indices],
            "received_ns": [phase["seen"][i][1] for i in indices],
        }
        target = self._out_dir / f"{name}.json"
        staged = target.with_suffix(".tmp")
        staged.write_text(json.dumps(result))
        os.replace(staged, target)


class Pacer:
    """Absolute send deadlines ``start + i / rate`` (no drift); rate 0 means as fast as possible."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.perf_counter()
        self.max_lag_s = 0.0

    async def wait(self, index: int) -> None:
        if not self.rate:
            return
        deadline = self.start + index / self.rate
        delay = deadline - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        self.max_lag_s = max(self.max_lag_s, time.perf_counter() - deadline)
