"""The coordinator of bench/scale.py: ``python -m bench._scale_coordinator coordinator run ...``.

This is trustbus's own CLI (``trustbus.cli.main``) running the unchanged coordinator, with three
methods wrapped before it starts, to count what a conflicting append costs:

- ``Coordinator.start``: marks the end of a partition's start-up (its first catch-up is not a conflict);
- ``DecisionLog.catch_up``: after start-up it runs once per append that found another coordinator's
  decision in the log first (a conflict); counted, with the decisions it read and the time it took;
- ``DecisionLog.append_applied``: the decisions made and then discarded because their append conflicted
  (they are decided again after the catch-up).

Once started, after each conflict, and once at exit, the running totals go to stdout as one JSON line
``{"progress": "coordinator", "tenant": ..., "name": ..., "conflicts": ..., "caught_up": ...,
"catch_up_s": ..., "discarded": ...}`` (the bench reads lines with a ``progress`` field as they come).
The wrapping costs a counter update per call. If one of these methods is gone the coordinator
runs unwrapped and prints no counts.
"""

from __future__ import annotations

import atexit
import functools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from trustbus.agents._coordinator import Coordinator
from trustbus.agents._decision_log import DecisionLog
from trustbus.bus import Conflict

COUNTS = "coordinator"  # the "progress" value of a counts line


class Counts:
    """One coordinator's totals since it started."""

    def __init__(self) -> None:
        self.tenant = ""
        self.name = ""
        self.started = False
        self.conflicts = 0
        self.caught_up = 0  # decisions read by those catch-ups
        self.catch_up_s = 0.0
        self.discarded = 0

    def emit(self) -> None:
        if not self.name:
            return
        fields = {
            "progress": COUNTS,
            "tenant": self.tenant,
            "name": self.name,
            "conflicts": self.conflicts,
            "caught_up": self.caught_up,
            "catch_up_s": round(self.catch_up_s, 6),
            "discarded": self.discarded,
        }
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


COUNTED = Counts()

Method = Callable[..., Awaitable[Any]]


def _wrap_start(start: Method) -> Method:
    @functools.wraps(start)
    async def wrapped(self: Coordinator) -> None:
        COUNTED.tenant, COUNTED.name = self.bus.tenant, self.bus.name
        await start(self)
        self.log._bench_started = True  # type: ignore[attr-defined]  # per partition: each starts with a catch-up
        COUNTED.started = True
        COUNTED.emit()

    return wrapped


def _wrap_catch_up(catch_up: Method) -> Method:
    @functools.wraps(catch_up)
    async def wrapped(self: DecisionLog, **kwargs: Any) -> None:
        if not getattr(self, "_bench_started", False):
            await catch_up(self, **kwargs)
            return
        decided = len(self.state.decided)  # in memory: also counts a stored correlation it loads back
        began = time.perf_counter()
        try:
            await catch_up(self, **kwargs)
        finally:
            COUNTED.conflicts += 1
            COUNTED.catch_up_s += time.perf_counter() - began
            COUNTED.caught_up += len(self.state.decided) - decided
            COUNTED.emit()

    return wrapped


def _wrap_append_applied(append_applied: Method) -> Method:
    @functools.wraps(append_applied)
    async def wrapped(self: DecisionLog, items: list[Any], **kwargs: Any) -> None:
        try:
            await append_applied(self, items, **kwargs)
        except Exception as exc:
            if isinstance(exc, Conflict):
                COUNTED.discarded += len(items)
            raise

    return wrapped


def instrument() -> bool:
    """Wrap the coordinator's and its decision log's methods; False (and nothing wrapped) if one is missing."""
    wrappers: list[tuple[type, str, Callable[[Method], Method]]] = [
        (Coordinator, "start", _wrap_start),
        (DecisionLog, "catch_up", _wrap_catch_up),
        (DecisionLog, "append_applied", _wrap_append_applied),
    ]
    if not all(callable(getattr(owner, name, None)) for owner, name, _ in wrappers):
        return False
    for owner, name, wrap in wrappers:
        setattr(owner, name, wrap(getattr(owner, name)))
    atexit.register(COUNTED.emit)
    return True


def main() -> None:
    instrument()
    from trustbus.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
