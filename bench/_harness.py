"""What the benches share: their processes' lifecycle, percentiles, stopping on a signal, and printing the figures.

The processes are trustbus's own supervisor's (``trustbus._supervisor``, also the demo's and the end-to-end
tests'): each is stopped with SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``, on success, failure, Ctrl-C
and SIGTERM, and is sent SIGTERM by Linux if the bench itself is killed; on failure their stderr tails
and the server's log tail are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trustbus import bus
from trustbus._supervisor import Process, ProcessFailed, Supervisor, check_alive

STOP_TIMEOUT_S = 10.0
TAIL_LINES = 25
_POLL_S = 0.1  # a sink's record file announces itself by no event: it is polled for


class BenchError(Exception):
    """Something did not happen in time, or not as measured."""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process so far (Linux /proc; zeros elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def percentiles(values: Sequence[float], *cuts: int) -> tuple[float, ...]:
    """The ``cuts``-th percentiles (1..99) of ``values``, interpolated as every bench reports them."""
    quantiles = statistics.quantiles(values, n=100, method="inclusive")
    return tuple(quantiles[cut - 1] for cut in cuts)


def percentiles_ms(latencies_ns: Sequence[int]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of latencies in nanoseconds."""
    p50, p99 = percentiles(latencies_ns, 50, 99)
    return p50 / 1e6, p99 / 1e6


def p999_ms(latencies_ns: Sequence[int]) -> float:
    """The 99.9th percentile in milliseconds of latencies in nanoseconds (interpolated like :func:`percentiles`)."""
    return statistics.quantiles(latencies_ns, n=1000, method="inclusive")[998] / 1e6


def progress_bars(console: Console, label_width: int) -> Progress:
    """The benches' progress display: a label, a bar, done of total, time elapsed."""
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )


def supervisor(work: Path, env: dict[str, str], on_progress: Callable[[dict[str, Any]], None]) -> Supervisor:
    """A bench's processes: run in the repository, logs in ``work/logs``, progress lines to ``on_progress``."""
    (work / "logs").mkdir()
    return Supervisor(env=env, cwd=Path(__file__).resolve().parent.parent, logs=work / "logs", on_progress=on_progress)


def finish(process: Process, timeout_s: float, *, watch: Sequence[Process]) -> None:
    """Wait for ``process`` to exit with 0; fail early if one of ``watch`` dies meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            code = process.wait(_POLL_S)
            break
        except subprocess.TimeoutExpired:
            check_alive(watch)
            if time.monotonic() > deadline:
                raise BenchError(f"{process.name} did not finish within {timeout_s:.0f}s") from None
    if code != 0:
        raise BenchError(f"{process.name} exited with code {code}")


def wait_for_record(path: Path, timeout_s: float, *, watch: Sequence[Process], late: str) -> dict[str, Any]:
    """The JSON a sink writes to ``path`` once it has every message; BenchError ``late`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        check_alive(watch)
        if time.monotonic() > deadline:
            raise BenchError(late)
        time.sleep(0.05)
    record: dict[str, Any] = json.loads(path.read_text())
    return record


@contextlib.contextmanager
def stopped(
    processes: Supervisor, server: bus.EmbeddedServer | None, console: Console, progress: Progress | None = None
) -> Iterator[None]:
    """Stop every process on leaving; on an error, then print their stderr tails and the server's (if any)."""
    try:
        try:
            yield
        finally:
            processes.stop_all(STOP_TIMEOUT_S)
    except BaseException:
        if progress is not None:
            progress.stop()
        for process in processes.processes:
            lines = process.tail(TAIL_LINES)
            if lines:
                console.print(
                    f"[bold]--- {escape(process.name)} (exit code {process.returncode}) stderr tail ---[/bold]"
                )
                for line in lines:
                    console.print(line, markup=False, highlight=False)
        if server is not None:
            console.print("[bold]--- nats-server log tail ---[/bold]")
            for line in server.log_tail()[-TAIL_LINES:]:
                console.print(line, markup=False, highlight=False)
        raise


def verdict(passed: object) -> str:
    """A target's cell: PASS or MISS."""
    return "[green]PASS[/green]" if passed else "[red]MISS[/red]"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(
    measure: Callable[[argparse.Namespace, Console], dict[str, Any]],
    report_table: Callable[[dict[str, Any]], Table],
    args: argparse.Namespace,
) -> None:
    """Measure, stopping every process it started on SIGTERM, SIGINT or an error; then print the figures.

    With ``args.json`` the table goes to stderr and the figures as one JSON line last on stdout.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, _interrupt)
    stderr = Console(stderr=True)
    try:
        result = measure(args, stderr)
    except (BenchError, ProcessFailed) as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/red]: every process was stopped")
        sys.exit(130)
    if args.json:
        stderr.print(report_table(result))
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print(report_table(result))
