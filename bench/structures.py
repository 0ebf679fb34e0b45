"""Per-message state of the agent runtime and the ledger service, driven in this process on a synthetic clock.

Run: ``python bench/structures.py [--rate R] [--windows K] [--json]``.

bench/soak.py measures whole processes, but a run shorter than the replay window (twice the 60 s skew, by
sender time) cannot tell state that a window bounds from state that grows for ever. This drives the two
replay-defence structures exactly as their processes use them, at ``--rate`` envelopes per second of
sender time for ``--windows`` windows, and reports their entries and the bytes they hold
(``tracemalloc``) at each window's end, and the bytes per envelope over the last half:

- **agent inbox** (``bus.SeenIds`` as the runtime's consumer keeps it for a recipient): a fetch of 64
  deliveries, pruned to the clock before each fetch, each delivery added when it is settled;
- **ledger replay window** (``ledger._replay_window.ReplayWindow``, the ledger service's projector): each
  envelope stored three times, as a mediated one is (the outbox copy, the coordinator's decision record,
  the inbox delivery), each checked and remembered at its store time.

Flat means bounded: entries stop at rate x window and bytes per envelope over the last half are about 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (where ledger.py would shadow the ledger package): use the root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

from trustbus import bus
from trustbus.ledger._replay_window import ReplayWindow

TENANT = "structures"
FETCH = 64
WINDOW_NS = 2 * bus.Limits().skew_ns  # how long, by sender time, a replay-defence id is kept
START_NS = 1_800_000_000 * 10**9
GRANT = bus.KeyGrant(tenant=TENANT, key_id="k", owner="a", role="agent", valid_from=0)
OUTBOX = bus.subjects.outbox(TENANT, "a", 0)
DECISIONS = bus.subjects.decision(TENANT, 0)
INBOX = bus.subjects.inbox(TENANT, "b")


def envelope(now_ns: int, sender: str = "a") -> bus.Envelope:
    return bus.new_envelope(tenant=TENANT, kind="event", sender=sender, to=("b",), now_ns=now_ns)


def agent_inbox() -> tuple[Callable[[int, int], None], Callable[[], int]]:
    """The runtime's inbox set: one step per envelope (its index and clock)."""
    seen = bus.SeenIds(window_ns=bus.Limits().skew_ns)

    def step(index: int, now_ns: int) -> None:
        if index % FETCH == 0:
            seen.prune(now_ns)
        seen.add(envelope(now_ns), index)

    return step, lambda: len(seen)


def ledger_window() -> tuple[Callable[[int, int], None], Callable[[], int]]:
    """The ledger's replay window: three stored messages per envelope, each checked and remembered."""
    window = ReplayWindow(bus.Limits().skew_ns)

    def step(index: int, now_ns: int) -> None:
        sent, decided = envelope(now_ns), envelope(now_ns, sender="coordinator")
        for offset, subject, carried in ((0, OUTBOX, sent), (1, DECISIONS, decided), (2, INBOX, sent)):
            message = bus.StoredMessage(3 * index + offset + 1, subject, now_ns, {}, b"")
            window.check(message, bus.Opened(envelope=carried, grant=GRANT))

    return step, lambda: len(window)


def drive(
    make: Callable[[], tuple[Callable[[int, int], None], Callable[[], int]]], rate: int, windows: int
) -> dict[str, Any]:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step, size = make()
        per_window = rate * WINDOW_NS // 10**9
        marks: list[dict[str, Any]] = []
        for index in range(per_window * windows):
            step(index, START_NS + index * 10**9 // rate)
            if (index + 1) % per_window == 0:
                held = tracemalloc.get_traced_memory()[0] - base
                marks.append({"envelopes": index + 1, "entries": size(), "mb": round(held / 2**20, 2), "bytes": held})
    finally:
        tracemalloc.stop()
    half = [m for m in marks if m["envelopes"] >= marks[-1]["envelopes"] / 2]
    growth = (half[-1]["bytes"] - half[0]["bytes"]) / max(1, half[-1]["envelopes"] - half[0]["envelopes"])
    return {"marks": marks, "bytes_per_envelope_last_half": round(growth, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500, help="envelopes per second of sender time (default 500)")
    parser.add_argument("--windows", type=int, default=4, help="replay windows (120 s each) to drive (default 4)")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line of stdout")
    args = parser.parse_args()
    if args.rate < 1 or args.windows < 2:
        parser.error("need --rate >= 1 and --windows >= 2")
    out = sys.stderr if args.json else sys.stdout
    results = {}
    for name, make in (("agent inbox", agent_inbox), ("ledger replay window", ledger_window)):
        result = results[name] = drive(make, args.rate, args.windows)
        held = ", ".join(f"{m['entries']:,} ids / {m['mb']} MB" for m in result["marks"])
        print(f"{name:>22}: after each {WINDOW_NS // 10**9} s window at {args.rate}/s: {held}; "
              f"last half {result['bytes_per_envelope_last_half']} B/envelope", file=out)  # fmt: skip
    if args.json:
        print(json.dumps({"rate": args.rate, "window_s": WINDOW_NS // 10**9, "structures": results}))


if __name__ == "__main__":
    main()
