"""Peer benchmark: AutoGen's gRPC runtime, agent A publishing to agent B through the host, one way, three processes.

Run from anywhere: ``python bench/peers.py [--n N] [--rounds K] [--payload B] [--venv DIR] [--json]``; or
``python bench/mediated.py --peers``, which runs the same phases in its own rounds, so AutoGen's figure
and the mediated path's come from one run on one machine (``autogen_msgs_per_s``, ``vs_autogen``).

AutoGen is not a dependency of trustbus, nor of any of its extras: it runs in a venv of its own,
``autogen-core==0.7.5`` and ``autogen-ext[grpc]==0.7.5`` from PyPI, made on the first run in
``$TRUSTBUS_BENCH_CACHE`` (default ``$XDG_CACHE_HOME/trustbus-bench``, else ``~/.cache/trustbus-bench``)
as ``autogen-0.7.5`` (``--venv DIR`` to put it elsewhere). By hand, the same is::

    python3 -m venv ~/.cache/trustbus-bench/autogen-0.7.5
    ~/.cache/trustbus-bench/autogen-0.7.5/bin/python -m pip install 'autogen-core==0.7.5' 'autogen-ext[grpc]==0.7.5'
    printf 'autogen-core==0.7.5\\nautogen-ext[grpc]==0.7.5\\n' > ~/.cache/trustbus-bench/autogen-0.7.5/requirements.txt

(the last file says the venv is complete; a venv without it is made again).

The topology (bench/_autogen_procs.py, run by that venv's Python): a ``GrpcWorkerAgentRuntimeHost`` on
127.0.0.1; agent B, a ``RoutedAgent`` in a ``GrpcWorkerAgentRuntime`` process of its own, subscribed to a
topic; agent A, a third process, ``publish_message``-ing ``--n`` messages to that topic as fast as it can.
Each message is a dataclass carrying the same JSON payload as bench/mediated.py's (A's ``time.time_ns()``
taken before it is built); B records ``time.time_ns()`` in its handler. msgs/s = N / (A's first send ->
B's last receive), the median over ``--rounds``, after an unmeasured warm-up of 500. Nothing is signed,
verified, stored or acknowledged: the host relays in memory, and a message in flight when a process dies
is gone. CPU µs per message of the host, A and B are read from ``/proc`` as bench/mediated.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (where ledger.py would shadow the ledger package): use the root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from bench._harness import cpu_seconds, finish, progress_bars, run_bench, stopped, supervisor, wait_for_record
from bench._records import OUT_ENV
from trustbus._supervisor import Process, Supervisor, check_alive

AUTOGEN_VERSION = "0.7.5"
REQUIREMENTS = (f"autogen-core=={AUTOGEN_VERSION}", f"autogen-ext[grpc]=={AUTOGEN_VERSION}")
PROCS = "bench._autogen_procs"
CACHE_ENV = "TRUSTBUS_BENCH_CACHE"
WARMUP_N = 500
READY_TIMEOUT_S = 60.0
SENDER_SLACK_S = 120.0  # for a sender to connect, publish and see the sink have every message
DELIVERY_SLACK_S = 30.0
PIP_TIMEOUT_S = 900.0


def default_venv() -> Path:
    """Where the AutoGen venv lives unless ``--venv`` says otherwise."""
    cache = os.environ.get(CACHE_ENV) or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trustbus-bench"
    )
    return Path(cache) / f"autogen-{AUTOGEN_VERSION}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_complete(venv: Path) -> bool:
    """Whether ``venv`` was made with exactly :data:`REQUIREMENTS` (its ``requirements.txt`` says so)."""
    marker = venv / "requirements.txt"
    return venv_python(venv).exists() and marker.exists() and marker.read_text().split() == list(REQUIREMENTS)


def ensure_venv(venv: Path, console: Console) -> Path:
    """The AutoGen venv's Python, making the venv first if it is not complete (``python -m venv``, then pip)."""
    if is_complete(venv):
        return venv_python(venv)
    console.print(f"making the AutoGen venv in {venv} ({', '.join(REQUIREMENTS)} from PyPI)")
    staged = venv.with_name(venv.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(staged)], check=True)
    pip = [str(venv_python(staged)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS]
    subprocess.run(pip, check=True, timeout=PIP_TIMEOUT_S)
    (staged / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    shutil.rmtree(venv, ignore_errors=True)
    staged.rename(venv)  # the venv's python is found through pyvenv.cfg beside it, so the move keeps it working
    return venv_python(venv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class AutoGenPeers:
    """The host and B of one AutoGen topology, and the command of a sender A for each phase."""

    def __init__(self, children: Supervisor, python: Path) -> None:
        self.children = children
        self.python = python
        self.address = ""
        self.servers: list[Process] = []  # host, then B

    def start(self) -> list[Process]:
        """Start the host and B, not waiting for them to be ready (``servers``)."""
        self.address = f"127.0.0.1:{free_port()}"
        port = self.address.rpartition(":")[2]
        host = self.children.start("autogen-host", [str(self.python), "-m", PROCS, "host", "--port", port])
        host.wait_ready(READY_TIMEOUT_S)  # B's runtime connects to it at start
        sink = self.children.start("autogen-b", [str(self.python), "-m", PROCS, "sink", "--host", self.address])
        self.servers = [host, sink]
        return self.servers

    def sender(self, phase: str, n: int, rate: float, payload: int) -> list[str]:
        """The command of A for one phase."""
        args = ["--host", self.address, "--phase", phase, "--n", str(n), "--rate", str(rate), "--payload", str(payload)]
        return [str(self.python), "-m", PROCS, "send", *args]


@dataclass(frozen=True, slots=True)
class Round:
    msgs_per_s: float
    cpu_us_per_msg: dict[str, float]  # host, a, b


def run_phase(peers: AutoGenPeers, out_dir: Path, name: str, n: int, payload: int) -> Round:
    """A at full speed for ``n`` messages; its rate from the sink's record, and CPU per message."""
    host, sink = peers.servers
    before = {"host": sum(cpu_seconds(host.pid)), "b": sum(cpu_seconds(sink.pid))}
    sender = peers.children.start(f"{name}-a", peers.sender(name, n, 0.0, payload))
    finish(sender, SENDER_SLACK_S, watch=peers.servers)
    record = wait_for_record(
        out_dir / f"{name}.json", DELIVERY_SLACK_S, watch=peers.servers, late=f"{name}: B did not see all {n}"
    )
    check_alive(peers.servers)
    cpu = {"host": sum(cpu_seconds(host.pid)) - before["host"], "b": sum(cpu_seconds(sink.pid)) - before["b"]}
    cpu["a"] = float((sender.last_line or {}).get("cpu_s", 0.0))
    span_ns = max(record["received_ns"]) - min(record["sent_ns"])
    return Round(n / (span_ns / 1e9), {role: seconds * 1e6 / n for role, seconds in cpu.items()})


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    python = ensure_venv(args.venv, stderr)
    load_before = os.getloadavg()[0]
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, progress_bars(stderr, 16) as progress:
        work = Path(tmp)
        out_dir = work / "out"
        out_dir.mkdir()
        children = supervisor(work, {**os.environ, OUT_ENV: str(out_dir), "PYTHONUNBUFFERED": "1"}, lambda _: None)
        with stopped(children, None, stderr, progress):
            peers = AutoGenPeers(children, python)
            peers.start()[-1].wait_ready(READY_TIMEOUT_S)
            task = progress.add_task("autogen", total=args.rounds + 1)
            run_phase(peers, out_dir, "autogen-warmup", WARMUP_N, args.payload)
            progress.advance(task)
            for round_no in range(args.rounds):
                rounds.append(run_phase(peers, out_dir, f"autogen-{round_no + 1}", args.n, args.payload))
                progress.advance(task)
    return {
        "n": args.n,
        "rounds": args.rounds,
        "payload_bytes": args.payload,
        "autogen_version": AUTOGEN_VERSION,
        "autogen_msgs_per_s": round(statistics.median(r.msgs_per_s for r in rounds), 1),
        "round_autogen_msgs_per_s": [round(r.msgs_per_s, 1) for r in rounds],
        "autogen_cpu_us_per_msg": {
            role: round(statistics.median(r.cpu_us_per_msg[role] for r in rounds), 1) for role in ("host", "a", "b")
        },
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def report_table(r: dict[str, Any]) -> Table:
    table = Table(
        title=f"AutoGen {r['autogen_version']} gRPC runtime, A -> host -> B, one way: "
        f"n={r['n']:,} x {r['rounds']} rounds",
        caption=f"per round {r['round_autogen_msgs_per_s']} msgs/s; load average before/after {r['load_avg_1m']}",
    )
    table.add_column("metric")
    table.add_column("AutoGen", justify="right")
    table.add_row("msgs/s (A first send -> B last receive)", f"{r['autogen_msgs_per_s']:,.0f}")
    cpu = r["autogen_cpu_us_per_msg"]
    table.add_row("CPU µs/msg: A / host / B", " / ".join(f"{cpu[role]:,.0f}" for role in ("a", "host", "b")))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="messages per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per message (default 256)")
    parser.add_argument("--venv", type=Path, default=default_venv(), help="the AutoGen venv (made if missing)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    args = parser.parse_args()
    if args.n < 100 or args.rounds < 1 or args.payload < 128:
        parser.error("need --n >= 100, --rounds >= 1 and --payload >= 128")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
