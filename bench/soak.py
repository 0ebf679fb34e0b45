"""Soak benchmark: N mediated envelopes through real processes; memory per process, a coordinator restart, exactly once.

Run from anywhere: ``python bench/soak.py [--n N] [--window W] [--json]`` (default N = 1,000,000; ``--n 200000``
for a quick run).

One ``bus.EmbeddedServer(port=0)`` (temporary store) and one provisioned tenant serve three processes,
started and stopped by trustbus's own supervisor (bench/_harness.py): ``trustbus coordinator run``, agent B
(``trustbus agent run bench._soak_sink:Sink --id b``, which counts each envelope's index once in a byte
array of the run's size, so its memory does not grow with the run) and ``trustbus ledger run`` projecting
the stream into a temporary directory. Agent A is this process: a ``bus.Bus`` with A's key sending
``event`` envelopes to B in correlations of 10, each payload JSON of ``--payload`` bytes naming its index.

**Past the correlation cache:** the coordinator keeps ``correlations_in_memory`` (10,000) correlations in
memory and stores the others; ``--capacity C`` sets it to C in the run's policy, so a shorter run goes past it
(N + the restart batch, over 10, correlations in all; both in the JSON).

**Steady by construction:** A keeps at most ``--window`` envelopes in flight, sent but not yet counted by B
(B reports its count every 50 ms); so the coordinator never has more than that waiting, and the run goes at
the mediated rate instead of piling a backlog into the stream. ``--rate R`` also holds A to at most R
envelopes a second, never more (time lost to a slow stretch is not made up by a burst): what the processes
must remember for a time (the replay ids of the last 120 s, the forwards of the last 90 s) follows the rate,
so a run whose rate rises in its second half (a shared machine getting quieter) shows growth that is not per
decision; at a steady rate that memory is full within the first minutes and the slope shows only what grows
with the count. The rate of each tenth is in the JSON.

**Memory:** the RSS (``/proc/<pid>/statm``) of the coordinator, B, the ledger service and nats-server every
``--sample-s`` seconds and when B has received each tenth of N; printed at 10 %, 50 % and 100 % (every
tenth in the JSON, to see the curve), and as a slope in bytes per decision over the last half (least
squares over every sample from 50 % to 100 %, against B's count: each envelope B received is one decision).
The JSON also has each process's anonymous RSS at each tenth (``RssAnon`` of ``/proc/<pid>/status``: the
heap, without the pages of mapped files such as a native library's code, which count in the RSS as they are
first used).

**Restart:** when B has received N, the coordinator is SIGKILLed with ``--window`` envelopes in flight, and A
goes on with the last ``restart batch`` (2 x window, at most N / 10) while it is down. Once B has been quiet
for a second (it has everything the dead coordinator forwarded), the coordinator is started again;
``restart_s`` is from that start to B's first receipt after it (the first forward, plus B's handling).

**Logs:** ``--logs DIR`` keeps each process's log (info level: the restart's steps with their times) in DIR.

**Disk:** the tenant stream's messages and bytes at the end, and its bytes per envelope B received (every
message a mediated envelope leaves: outbox copy, decision, forward, and the ledger's checkpoints).

**Exactly once:** every envelope whose publish A saw acked must reach B once: ``lost`` = acked - distinct
indices B received once no more arrive (within ``--settle-s`` of the last), ``duplicated`` = second
deliveries B saw.

Targets on a 2-core machine (issue 14): coordinator RSS slope over the last half <= 5 bytes per decision,
coordinator RSS at 1,000,000 decisions <= 200 MB, restart <= 5 s, lost = duplicated = 0; printed beside the
figures with the gap. With ``--json`` the last line of stdout is one JSON object with every figure (the
table goes to stderr, with the progress display).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (where ledger.py would shadow the ledger package): use the root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench._harness import BenchError, progress_bars, run_bench, stopped, supervisor, verdict
from bench._soak_sink import TOTAL_ENV
from bench.flood import stream_state
from bench.mediated import POLICY, READY_TIMEOUT_S, provision_tenant
from trustbus import bus
from trustbus._supervisor import Process, Supervisor, check_alive

TENANT = "soak"
SINK = "bench._soak_sink:Sink"
PER_CORRELATION = 10
MARKS = (10, 50, 100)  # percent of N at which RSS is reported
DECILES = tuple(range(10, 101, 10))  # percent of N at which RSS is always sampled (and listed in the JSON)
QUIET_S = 1.0  # B without a receipt for this long has everything already forwarded
WATCH_S = 0.5  # how often a wait checks that the processes still run
RESTART_TIMEOUT_S = 3600.0
FLUSH_TIMEOUT_S = 120.0
PAGE = os.sysconf("SC_PAGE_SIZE")

SLOPE_TARGET = 5.0  # bytes per decision, coordinator, last half
RSS_TARGET_MB = 200.0  # coordinator, at 1,000,000 decisions
RESTART_TARGET_S = 5.0


def rss_bytes(pid: int | None) -> int:
    """Resident set size of a live process (Linux ``/proc``); 0 if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def rss_anon_bytes(pid: int | None) -> int:
    """Anonymous resident memory of a live process (``RssAnon``, Linux); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def slope(points: Sequence[tuple[int, int]]) -> float:
    """Least-squares slope of y over x; 0 for fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def soak_policy(capacity: int | None) -> str:
    """The mediated bench's policy, with ``correlations_in_memory`` set to ``capacity`` (None: the default)."""
    if capacity is None:
        return POLICY
    return POLICY.replace("limits:\n", f"limits:\n  correlations_in_memory: {capacity}\n", 1)


def payload(index: int, size: int) -> bytes:
    """JSON of ``size`` bytes (or the smallest possible) naming ``index``."""
    head = f'{{"i":{index},"x":"'
    return (head + "x" * max(0, size - len(head) - 2) + '"}').encode()


class Receipts:
    """B's counts, from its progress lines (read on the supervisor's thread, applied on the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_count: Callable[[int], None]) -> None:
        self.received = 0
        self.duplicates = 0
        self._loop = loop
        self._on_count = on_count
        self._changed = asyncio.Event()
        self._after: int | None = None  # watching for the first receipt once the count passes this
        self.first_after_ns: int | None = None

    def line(self, fields: dict[str, Any]) -> None:
        """A progress line of B (any thread)."""
        self._loop.call_soon_threadsafe(self._apply, fields)

    def _apply(self, fields: dict[str, Any]) -> None:
        received, duplicates = int(fields["received"]), int(fields["duplicates"])
        if self._after is not None and self.first_after_ns is None and received > self._after:
            self.first_after_ns = int(fields["first_ns"])
        self.received, self.duplicates = received, duplicates
        self._on_count(received)
        self._changed.set()

    def watch_first_after(self, count: int) -> None:
        """Note the time of B's first receipt once its count passes ``count`` (``first_after_ns``)."""
        self._after, self.first_after_ns = count, None

    async def until(self, done: Callable[[], bool], timeout_s: float, *, watch: Sequence[Process] = ()) -> bool:
        """Wait until ``done()``; False after ``timeout_s``. ProcessFailed if one of ``watch`` exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not done():
            check_alive(watch)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, WATCH_S))
        return True

    async def quiet(self, quiet_s: float, timeout_s: float, *, watch: Sequence[Process] = ()) -> bool:
        """Wait until the count has not changed for ``quiet_s``; False if it still changes after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await self.until(partial(self._differs, self.received), quiet_s, watch=watch):
                return True
        return False

    def _differs(self, count: int) -> bool:
        return self.received != count


@dataclass
class Samples:
    """RSS samples: (decisions, bytes) per process, and the samples taken at the marks."""

    series: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    at_marks: dict[int, dict[str, int]] = field(default_factory=dict)
    anon_at_marks: dict[int, dict[str, int]] = field(default_factory=dict)
    marked_s: dict[int, float] = field(default_factory=dict)  # seconds into the run when each mark was reached

    def take(self, decisions: int, pids: dict[str, int | None]) -> dict[str, int]:
        taken = {name: rss_bytes(pid) for name, pid in pids.items()}
        for name, rss in taken.items():
            self.series.setdefault(name, []).append((decisions, rss))
        return taken

    def last_half_slope(self, name: str, n: int) -> float:
        return slope([(x, y) for x, y in self.series[name] if x >= n / 2])

    def count(self) -> int:
        return max((len(s) for s in self.series.values()), default=0)


class Soak:
    """The processes, agent A, the samples, and the figures of one run."""

    def __init__(self, args: argparse.Namespace, work: Path, server: bus.EmbeddedServer, progress: Progress) -> None:
        self.args = args
        self.n: int = args.n
        self.window: int = args.window
        self.restart_batch = max(1, min(2 * self.window, self.n // 10))
        self.total = self.n + self.restart_batch
        self.work = work
        self.server = server
        self.progress = progress
        self.keys = bus.KeyDirectory(work / "keys")
        self.task = progress.add_task("soak", total=self.total)
        self.receipts = Receipts(asyncio.get_running_loop(), lambda c: progress.update(self.task, completed=c))
        level = "info" if args.logs else "warning"
        env = {**os.environ, TOTAL_ENV: str(self.total), "TRUSTBUS_LOG": level, "PYTHONUNBUFFERED": "1"}
        self.children: Supervisor = supervisor(work, env, self._line)
        self.samples = Samples()
        self.processes: dict[str, Process] = {}
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.stream: dict[str, int] = {}

    def _line(self, fields: dict[str, Any]) -> None:
        if fields.get("progress") == "soak":
            self.receipts.line(fields)

    @property
    def running(self) -> list[Process]:
        return list(self.processes.values())

    def pids(self) -> dict[str, int | None]:
        return {**{name: p.pid for name, p in self.processes.items()}, "nats-server": self.server.pid}

    async def start(self) -> None:
        """Provision the tenant and keys; start the coordinator, B and the ledger service."""
        holders = [("a", "agent"), ("b", "agent"), ("coordinator", "coordinator"), ("ledger", "ledger")]
        await provision_tenant(self.server.url, TENANT, self.keys, holders)
        policy = self.work / "policy.yaml"
        policy.write_text(soak_policy(self.args.capacity))
        common = ["--server", self.server.url, "--keys", str(self.keys.root), "--tenant", TENANT]
        trustbus = [sys.executable, "-m", "trustbus"]
        argvs = {
            "coordinator": [*trustbus, "coordinator", "run", "--policy", str(policy), *common],
            "agent": [*trustbus, "agent", "run", SINK, "--id", "b", *common],
            "ledger": [*trustbus, "ledger", "run", "--data", str(self.work / "projection"), *common],
        }
        for name, argv in argvs.items():
            self.processes[name] = self.children.start(name, argv)
        for process in self.running:
            await process.ready(READY_TIMEOUT_S)

    async def send(self) -> None:
        """Agent A: ``total`` envelopes, at most ``window`` not yet received by B; counts the acked ones."""
        identity = self.keys.load(TENANT, "a")
        async with await bus.Bus.connect(self.server.url, tenant=TENANT, name="a", identity=identity) as a:
            correlation = bus.new_id()
            due = time.monotonic()  # when the next send may go, at --rate
            for index in range(self.total):
                if self.args.rate is not None:
                    if (ahead := due - time.monotonic()) > 0:
                        await asyncio.sleep(ahead)  # holds A to --rate
                    due = max(due, time.monotonic()) + 1 / self.args.rate  # time lost is not made up in a burst
                if self.sent - self.receipts.received >= self.window:
                    await self.receipts.until(
                        lambda: self.sent - self.receipts.received < self.window, RESTART_TIMEOUT_S
                    )
                if index % PER_CORRELATION == 0:
                    correlation = bus.new_id()
                envelope = bus.new_envelope(
                    tenant=TENANT,
                    kind="event",
                    sender="a",
                    to=("b",),
                    correlation_id=correlation,
                    payload=payload(index, self.args.payload),
                )
                ack = await a.publish_pipelined(a.outbox(envelope), a.seal(envelope))
                ack.add_done_callback(self._acked)
                self.sent += 1
            with contextlib.suppress(bus.TransportError):  # counted by _acked
                await a.flush(timeout_s=FLUSH_TIMEOUT_S)

    def _acked(self, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and ack.exception() is None:
            self.acked += 1
        else:
            self.failed += 1

    async def sample_run(self, started: float) -> None:
        """Sample RSS every ``--sample-s`` and at each mark, until B has received N (the last sample)."""
        for mark in DECILES:
            goal = max(1, self.n * mark // 100)
            while True:
                reached = await self.receipts.until(
                    partial(self._received, goal), self.args.sample_s, watch=self.running
                )
                taken = self.samples.take(self.receipts.received, self.pids())
                if reached:
                    self.samples.at_marks[mark] = taken
                    self.samples.anon_at_marks[mark] = {name: rss_anon_bytes(pid) for name, pid in self.pids().items()}
                    self.samples.marked_s[mark] = time.monotonic() - started
                    break

    def _received(self, count: int) -> bool:
        return self.receipts.received >= count

    async def restart(self) -> tuple[float, float]:
        """SIGKILL the coordinator (under load), start it again once B is quiet: (start to ready, to first receipt)."""
        coordinator = self.processes.pop("coordinator")
        coordinator.kill()
        if not await self.receipts.quiet(QUIET_S, RESTART_TIMEOUT_S, watch=self.running):
            raise BenchError("B kept receiving after the coordinator was killed")
        self.receipts.watch_first_after(self.receipts.received)
        started_ns, started = time.time_ns(), time.monotonic()
        self.processes["coordinator"] = restarted = self.children.restart(coordinator)
        await restarted.ready(RESTART_TIMEOUT_S)
        ready_s = time.monotonic() - started
        if not await self.receipts.until(
            lambda: self.receipts.first_after_ns is not None, RESTART_TIMEOUT_S, watch=self.running
        ):
            raise BenchError(f"no envelope reached B within {RESTART_TIMEOUT_S:.0f}s of the coordinator's restart")
        assert self.receipts.first_after_ns is not None
        return ready_s, (self.receipts.first_after_ns - started_ns) / 1e9

    async def settle(self, sender: asyncio.Task[None]) -> None:
        """Wait until B has every acked envelope, or none has arrived for ``--settle-s``."""
        while not self._settled(sender):
            moved = partial(self._settled_or_moved, sender, self.receipts.received)
            if not await self.receipts.until(moved, self.args.settle_s, watch=self.running):
                return

    def _settled(self, sender: asyncio.Task[None]) -> bool:
        return sender.done() and self.receipts.received >= self.acked

    def _settled_or_moved(self, sender: asyncio.Task[None], count: int) -> bool:
        return self._settled(sender) or self.receipts.received != count

    async def run(self) -> dict[str, Any]:
        await self.start()
        started = time.monotonic()
        sender = asyncio.get_running_loop().create_task(self.send())
        try:
            await self.sample_run(started)
            run_s = time.monotonic() - started
            ready_s, restart_s = await self.restart()
            await self.settle(sender)
            if not sender.done():
                raise BenchError(f"A could not send all {self.total} envelopes: B stopped receiving")
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        after_restart = rss_bytes(self.processes["coordinator"].pid)
        messages, stored = await stream_state(self.server.url, TENANT)
        self.stream = {"messages": messages, "bytes": stored}
        return self.figures(run_s, ready_s, restart_s, after_restart)

    def figures(self, run_s: float, ready_s: float, restart_s: float, after_restart: int) -> dict[str, Any]:
        names = list(self.samples.series)
        mb = {name: {m: round(self.samples.at_marks[m][name] / 2**20, 1) for m in DECILES} for name in names}
        anon = {name: [round(self.samples.anon_at_marks[m][name] / 2**20, 1) for m in DECILES] for name in names}
        marked = [0.0, *(self.samples.marked_s[m] for m in DECILES)]
        tenth = self.n / len(DECILES)
        rates = [round(tenth / max(1e-9, b - a), 1) for a, b in pairwise(marked)]
        rss_mb = {name: {f"{m}%": mb[name][m] for m in MARKS} for name in names}
        slopes = {name: round(self.samples.last_half_slope(name, self.n), 2) for name in names}
        coordinator_mb = rss_mb["coordinator"]["100%"]
        lost = max(0, self.acked - self.receipts.received)
        duplicated = self.receipts.duplicates
        return {
            "n": self.n,
            "window": self.window,
            "payload_bytes": self.args.payload,
            "per_correlation": PER_CORRELATION,
            "correlations": self.total // PER_CORRELATION,
            "capacity": self.args.capacity,
            "restart_batch": self.restart_batch,
            "run_s": round(run_s, 1),
            "decisions_per_s": round(self.n / run_s, 1),
            "rate_limit": self.args.rate,
            "decisions_per_s_by_decile": rates,
            "samples": self.samples.count(),
            "coordinator_rss_mb": coordinator_mb,
            "rss_slope_bytes_per_decision": slopes["coordinator"],
            "restart_s": round(restart_s, 3),
            "coordinator_ready_s": round(ready_s, 3),
            "coordinator_rss_after_restart_mb": round(after_restart / 2**20, 1),
            "lost": lost,
            "duplicated": duplicated,
            "acked": self.acked,
            "publish_failures": self.failed,
            "received": self.receipts.received,
            "stream_messages": self.stream["messages"],
            "stream_bytes": self.stream["bytes"],
            "stream_bytes_per_envelope": round(self.stream["bytes"] / max(1, self.receipts.received)),
            "rss_mb": rss_mb,
            "rss_mb_by_decile": {name: list(mb[name].values()) for name in names},
            "rss_anon_mb_by_decile": anon,
            "rss_slope": slopes,
            "targets": {
                "rss_slope_bytes_per_decision": SLOPE_TARGET,
                "coordinator_rss_mb": RSS_TARGET_MB,
                "restart_s": RESTART_TARGET_S,
                "lost": 0,
                "duplicated": 0,
            },
            "pass": {
                "rss_slope_bytes_per_decision": slopes["coordinator"] <= SLOPE_TARGET,
                "coordinator_rss_mb": coordinator_mb <= RSS_TARGET_MB,
                "restart_s": restart_s <= RESTART_TARGET_S,
                "lost": lost == 0,
                "duplicated": duplicated == 0,
            },
        }


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    progress = progress_bars(stderr, 6)

    async def soak() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, progress:
            server = bus.EmbeddedServer(port=0)
            try:
                server.start()
                bench = Soak(args, Path(tmp), server, progress)
                with stopped(bench.children, server, stderr, progress):
                    return await bench.run()
            finally:
                server.stop()
                if args.logs:
                    shutil.copytree(Path(tmp) / "logs", args.logs, dirs_exist_ok=True)

    return asyncio.run(soak())


def report_table(r: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"soak: {r['n']:,} mediated envelopes A -> coordinator -> B (+ ledger service), "
            f"{r['window']} in flight, correlations of {r['per_correlation']}"
        ),
        caption=(
            f"{r['run_s']:,.0f} s at {r['decisions_per_s']:,.0f} decisions/s, {r['samples']} RSS samples per process; "
            f"slope: least squares over the samples from 50% to 100% of N; restart: SIGKILL with {r['window']} in "
            f"flight, {r['restart_batch']} sent while down; acked {r['acked']:,}, received {r['received']:,}"
        ),
    )
    for column in ("figure", "measured", "target", "gap", ""):
        table.add_column(column, justify="left" if column == "figure" else "right")

    def target(label: str, key: str, spelled: str) -> None:
        measured, goal = r[key], r["targets"][key]
        gap = f"{measured - goal:+,.2f}" if measured > goal else "-"
        table.add_row(label, f"{measured:,}", spelled.format(goal), gap, verdict(r["pass"][key]))

    for name, marks in r["rss_mb"].items():
        rss = " / ".join(f"{marks[f'{m}%']:,.1f}" for m in MARKS)
        if name == "coordinator":
            at_n = "-" if marks["100%"] <= RSS_TARGET_MB else f"{marks['100%'] - RSS_TARGET_MB:+,.1f}"
            table.add_row(f"{name} RSS MB at 10/50/100%", rss, f"<= {RSS_TARGET_MB:g} at 1M", at_n,
                          verdict(r["pass"]["coordinator_rss_mb"]))  # fmt: skip
            target(f"{name} RSS slope B/decision", "rss_slope_bytes_per_decision", "<= {:g}")
        else:
            table.add_row(f"{name} RSS MB at 10/50/100%", rss)
            table.add_row(f"{name} RSS slope B/decision", f"{r['rss_slope'][name]:,.1f}")
    table.add_section()
    target("restart: start to first forward (s)", "restart_s", "<= {:g}")
    table.add_row("restart: start to ready line (s)", f"{r['coordinator_ready_s']:,}")
    table.add_row("coordinator RSS after restart MB", f"{r['coordinator_rss_after_restart_mb']:,.1f}")
    table.add_row("stream bytes per mediated envelope", f"{r['stream_bytes_per_envelope']:,}")
    target("lost", "lost", "= {:g}")
    target("duplicated", "duplicated", "= {:g}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="mediated envelopes (default 1,000,000)")
    parser.add_argument("--window", type=int, default=1000, help="envelopes in flight, sent not received (1000)")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per envelope (default 256)")
    parser.add_argument(
        "--capacity",
        type=int,
        help="the coordinator's correlations_in_memory (default: the policy's, 10,000): lower it to evict sooner",
    )
    parser.add_argument(
        "--rate", type=float, help="at most this many envelopes a second from A (default: as the window allows)"
    )
    parser.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    parser.add_argument(
        "--settle-s", type=float, default=60.0, help="after the restart, how long without a receipt ends the run (60)"
    )
    parser.add_argument(
        "--logs", type=Path, help="keep each process's log (at info level, JSON lines) in this directory"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    args = parser.parse_args()
    if args.n < 100 or args.window < 1 or args.sample_s <= 0 or args.settle_s <= 0:
        parser.error("need --n >= 100, --window >= 1, --sample-s > 0 and --settle-s > 0")
    if args.capacity is not None and args.capacity < 1:
        parser.error("need --capacity >= 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("need --rate > 0")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
