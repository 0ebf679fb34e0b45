"""Mediated benchmark: agent A -> coordinator -> agent B, three processes, against the same topology in raw nats-py.

Run from anywhere: ``python bench/mediated.py [--n N] [--rate R] [--seconds S] [--rounds K] [--json]``.

One ``bus.EmbeddedServer(port=0)`` (temporary store; ``--sync always`` makes it fsync every write
before acking it, as a kept store does: run both to see what durability costs) serves two topologies of
three separate processes each, all on this machine (see ``bench/_mediated_procs.py`` and ``bench/_mediated_sink.py``):

1. **mediated** (trustbus): a tenant provisioned with ``bus.init_tenant`` and keys made with
   ``bus.new_key`` in a temporary ``bus.KeyDirectory`` (``a`` and ``b`` role agent, ``coordinator``
   role coordinator); a policy allowing ``a -> b`` ``event`` with hop, budget and fan-out limits far
   above the load and no rate limit. ``python -m trustbus coordinator run`` mediates; agent B is
   ``python -m trustbus agent run bench._mediated_sink:Sink --id b``; agent A is a process using
   ``bus.Bus`` directly: it builds an envelope per message, seals it and ``publish_pipelined`` it to its
   outbox. Every hop is signed and verified, and each envelope gets a decision appended to the log and
   a countersigned forward.
2. **raw**: plain nats-py JetStream, unsigned, on a stream of its own (``RAW`` on ``raw.>``, file storage,
   the tenant stream's duplicate window). A publishes to ``raw.out.a`` with ``publish_async`` (at most
   1,024 acks outstanding, a ``Nats-Msg-Id`` each); a relay process standing in for the coordinator
   pull-consumes them with the settings of the coordinator's consumer of one sender (a fetch of up to 64,
   agents/_intake.py) and works a fetched batch at a time, as the coordinator does and as one would with
   plain nats-py: it republishes every message of the batch to ``raw.in.b`` pipelined (``publish_async``,
   a ``Nats-Msg-Id`` each, the futures gathered rather than awaited one by one), then acks each message
   whose copy is stored (naks the others); B pull-consumes ``raw.in.b`` with the agent runtime's inbox
   settings and acks each. The payload is the same. This is the strong baseline ``ratio`` is measured
   against.

Each of A's envelopes starts a correlation of its own unless ``--per-correlation K`` (A's envelopes in each
correlation): a new correlation is the coordinator's costliest case (a lookup in the state bucket before
deciding, its state stored at the next snapshot), a conversation of many envelopes its cheapest.

The payload of each message is JSON of ``--payload`` bytes carrying A's ``time.time_ns()`` taken just
before the message is built (and, mediated, signed); B records ``time.time_ns()`` on receipt (in the
agent's handler: after verification), so latency is end to end across all three processes. Two
measurements per topology, in ``--rounds`` rounds that alternate which topology goes first, after an
unmeasured warm-up of ``--warmup-n`` messages per topology (500):

- **throughput**: A sends ``--n`` messages as fast as it can (pipelined, bounded);
  msgs/s = N / (A's first send -> B's last receive). ``ratio`` = mediated / raw, the median of the
  per-round ratios (so load from elsewhere on the machine hits both sides of each ratio alike).
- **latency at a fixed offered load**: A sends ``--rate`` msgs/s for ``--seconds``, paced on absolute
  deadlines (``start + i / rate``, no drift); p50, p99, p99.9 and max of the per-message latency, leaving
  out the first ``--warmup`` seconds of sends. p50 is the median over the rounds; ``p99_ms``, ``p999_ms``
  and ``max_ms`` are the worst round's (the tail has to hold in every round, not in a typical one), and
  each round's are reported beside them (``round_p99_ms``, ``round_p999_ms``, ``round_max_ms``;
  ``median_p99_ms`` for comparison with figures taken before). A's worst lag behind its schedule is
  reported so a sender that could not keep the pace shows.

In each throughput phase the CPU time (user + system, from ``/proc``) of the server, the relay or
coordinator and B is read before and after, and A reports its own from first send to last ack: CPU µs per
message per process. On a machine whose cores are all busy, throughput is about cores / (total CPU per
message), so these figures say where to cut. The 1-minute load average before and after the run is
reported too: other work on the machine moves every figure.

Targets on a 2-core machine: ``ratio`` >= 0.7, mediated p99 <= 10 ms at 500 msgs/s in every round,
``vs_autogen`` >= 1.0 (docs/PERFORMANCE.md has figures and where the time goes). With ``--json`` the last
line of stdout is one JSON object with every figure and the human table goes to stderr with the progress
display. ``--profile DIR`` runs the coordinator, the sinks and the relay under cProfile (or
pyinstrument, ``--profiler``) and leaves their profiles in DIR; ``--keep-records DIR`` keeps every
phase's per-message send and receive times (and, with ``--stages``, the coordinator's notes);
``--coordinator-module M`` runs ``python -m M coordinator run``
instead of ``trustbus`` (a wrapper that patches the coordinator, to measure a candidate change without
editing it). ``--metrics`` runs the coordinator and B with ``--metrics-port 0`` and scrapes both every
second (a harsher rate than Prometheus's usual 15 s), so a run with it and one without show what the
metrics cost (docs/OBSERVABILITY.md). ``--telemetry`` adds a third topology in the same run: the
mediated path again, in a tenant of its own (``benchtel``) with its own coordinator and B, every process
of it (A included) tracing at 100% sampling (``--sample-ratio R``: a share R of the traces, decided by A)
and exporting over OTLP/HTTP to a receiver the bench runs on 127.0.0.1 (it counts what it is sent, never
decodes it), the coordinator and B also serving ``/metrics`` scraped every second. ``telemetry_ratio`` is
its throughput over the plain mediated path's (the median of the per-round ratios; target >= 0.9), and
``telemetry_cpu_ratio`` the same of their CPU per message (all four processes, off over on): what the
throughput ratio tends to when the cores are all busy, steadier than it when other work shares them. The
plain path runs the same instrumented code with nothing configured: its figures are tracing off.
``--candidate-module M`` adds the mediated path once more, in a tenant of its own (``benchcand``) with its
own B, its coordinator run as ``python -m M coordinator run`` (a wrapper that changes the coordinator: a
lever measured before and after in the same rounds): ``candidate_ratio`` (its msgs/s over the plain
coordinator's, the median of the per-round ratios), ``candidate_cpu_ratio`` (CPU per message of all
four processes, plain over candidate) and its tail at ``--rate``. ``decisions_per_record`` (and
``candidate_decisions_per_record``): the envelopes A sent over the decision records stored, over the whole
run (a coordinator records a batch's decisions in one record: how large its batches were).
``--peers`` adds AutoGen's gRPC runtime (bench/peers.py: host, B and each phase's A as processes, in a venv
of its own made on first use under a cache directory, ``--autogen-venv``) to every round's throughput
phases: ``autogen_msgs_per_s`` (one way, the median over rounds) and ``vs_autogen``, the mediated path's
msgs/s over AutoGen's (the median of the per-round ratios; target >= 1.0, while every mediated envelope is
signed, verified, decided, recorded and countersigned and AutoGen's are none of these).
Every process is stopped (SIGTERM, then SIGKILL after a timeout) on
success, failure, Ctrl-C and SIGTERM (and is sent SIGTERM by Linux if the bench itself is killed); on failure
their stderr tails are printed (bench/_harness.py, over the process supervisor the demo and the end-to-end tests use).
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
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from bench._harness import (
    cpu_seconds,
    finish,
    p999_ms,
    percentiles_ms,
    progress_bars,
    run_bench,
    stopped,
    supervisor,
    verdict,
    wait_for_record,
)
from bench._records import OUT_ENV
from bench._stage_coordinator import STAGES_ENV
from bench.peers import AutoGenPeers, default_venv, ensure_venv
from trustbus import bus
from trustbus._supervisor import Process
from trustbus.agents._forwarding import INBOX_SETTINGS
from trustbus.agents._intake import SENDER_SETTINGS

PROCS = "bench._mediated_procs"
STAGE_COORDINATOR = "bench._stage_coordinator"  # with --stages
ON_UVLOOP = "bench._on_uvloop"  # with --uvloop
STAGES = ("send_to_stored", "stored_to_group", "group_to_forward", "forward_to_handler")
SINK = "bench._mediated_sink:Sink"
TENANT = "bench"
TOPOLOGIES = ("raw", "mediated")
TELEMETRY = "telemetry"  # with --telemetry: the mediated path, traced and with metrics on
TELEMETRY_TENANT = "benchtel"
AUTOGEN = "autogen"  # with --peers: AutoGen's gRPC runtime (bench/peers.py), throughput phases only
TELEMETRY_TARGET = 0.9
CANDIDATE = "candidate"  # with --candidate-module: the mediated path with a changed coordinator
TENANTS = {TELEMETRY: TELEMETRY_TENANT, CANDIDATE: "benchcand"}  # the topologies with a tenant of their own
AUTOGEN_TARGET = 1.0  # mediated msgs/s over AutoGen's
RATIO_TARGET = 0.7  # of the strong raw relay (batched fetch, pipelined publishes)
P99_TARGET_MS = 10.0
READY_TIMEOUT_S = 60.0
SENDER_SLACK_S = 60.0  # beyond the paced duration, for a sender to connect, send and flush
DELIVERY_SLACK_S = 30.0  # after the sender exits, for the sink to see the last message (plus N / 200 s)
DUPLICATE_WINDOW_S = bus.tenant_stream_config(TENANT, admin_key_id="").duplicate_window

POLICY = """\
version: 1
limits:
  hop_limit: 8
  fanout_per_envelope: 16
  budget_per_correlation: 100000000
rules:
  - from: a
    to: [b]
    kinds: [event]
"""


# -- setup ------------------------------------------------------------------------------


async def provision_tenant(
    url: str, tenant: str, keys: bus.KeyDirectory, holders: list[tuple[str, str]], *, partitions: int = 1
) -> None:
    """The tenant (with ``partitions`` partitions), and a key for each (owner, role) of ``holders``."""
    await bus.init_tenant([url], tenant, keys=keys, partitions=partitions)
    for owner, role in holders:
        await bus.new_key([url], tenant, owner, role=role, keys=keys)  # type: ignore[arg-type]


async def provision_raw(url: str) -> None:
    """The raw stream, with consumers configured like the coordinator's outbox and the agent runtime's inbox."""
    nc = await nats.connect(url, name="bench-admin", connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="RAW", subjects=["raw.>"], storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S)
        )
        for durable, subject, settings in (
            ("relay", "raw.out.a", SENDER_SETTINGS),
            ("sink-b", "raw.in.b", INBOX_SETTINGS),
        ):
            await js.add_consumer(
                "RAW",
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    max_ack_pending=settings.max_ack_pending,
                    max_deliver=settings.max_deliver,
                    ack_wait=settings.ack_wait_s,
                ),
            )
    finally:
        await nc.close()


async def provision(url: str, keys: bus.KeyDirectory) -> None:
    """The tenant, the three keys, and the raw stream with consumers configured like the coordinator's."""
    await provision_tenant(url, TENANT, keys, [("a", "agent"), ("b", "agent"), ("coordinator", "coordinator")])
    await provision_raw(url)


# -- measurement --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throughput:
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_msg: dict[str, float]  # per process: server, a, hub (coordinator or relay), b
    sys_us_per_msg: dict[str, float]  # the part of it spent in the kernel (not known for a)
    duplicates: int = 0  # second deliveries the sink saw before it had every message


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    sender_max_lag_ms: float
    stages_ms: dict[str, dict[str, float]] | None = None  # with --stages: p50, p90, p99 of each of STAGES


def scrape_every_second(ports: list[int]) -> None:
    """Read each port's /metrics once a second for as long as the bench runs (a daemon thread)."""
    while True:
        for port in ports:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                r.read()
        time.sleep(1.0)  # the scrape interval being measured


class OtlpSink:
    """A local OTLP/HTTP endpoint: answers 200 to every export and counts requests and bytes (never decodes)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bytes += len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True).start()

    def env(self, sample_ratio: float) -> dict[str, str]:
        """The OTEL_* variables that trace ``sample_ratio`` of the traces (decided by A, followed by the
        others) and export them here."""
        sampler = {"OTEL_TRACES_SAMPLER": "always_on"}
        if sample_ratio < 1:
            sampler = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(sample_ratio)}
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces",
            **sampler,
        }


def fetch_args(settings: bus.ConsumerSettings) -> list[str]:
    return ["--batch", str(settings.batch), "--fetch-timeout", str(settings.fetch_timeout_s)]


class Bench:
    """The server's URL, the processes, the progress display, and the phases."""

    def __init__(self, args: argparse.Namespace, work: Path, progress: Progress) -> None:
        self.args = args
        self.work = work
        self.out_dir = work / "out"
        self.keys_dir = work / "keys"
        self.policy = work / "policy.yaml"
        self.progress = progress
        self.url = ""
        self.server_pid: int | None = None
        self._tasks: dict[str, TaskID] = {}
        self._phases = 0
        env = {**os.environ, OUT_ENV: str(self.out_dir), "TRUSTBUS_LOG": "warning", "PYTHONUNBUFFERED": "1"}
        self.out_dir.mkdir()
        self.children = supervisor(work, env, self._progress_line)
        self.servers: dict[str, list[Process]] = {}  # per topology: its long-running processes, hub first
        self.otlp: OtlpSink | None = None  # with --telemetry
        self.autogen: AutoGenPeers | None = None  # with --peers
        self.envs: dict[str, dict[str, str]] = {}  # per topology: what its processes add to the environment

    def _progress_line(self, fields: dict[str, Any]) -> None:
        task = self._tasks.get(str(fields["progress"]))
        if task is not None:
            self.progress.update(task, completed=int(fields.get("received", 0)))

    def argv(self, module: str, args: list[str], profile_name: str | None = None) -> list[str]:
        profile_dir: Path | None = self.args.profile
        if self.args.uvloop:
            return [sys.executable, "-m", ON_UVLOOP, module, *args]
        if profile_dir is None or profile_name is None:
            return [sys.executable, "-m", module, *args]
        if self.args.profiler == "pyinstrument":
            out = profile_dir / f"{profile_name}.pyisession"
            return [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(out), "-m", module, *args]
        return [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"{profile_name}.prof"), "-m", module, *args]

    def start_servers(self, autogen_python: Path | None = None) -> None:
        """Provision, then start (and wait for) the coordinator, both sinks and the relay (and, with --telemetry,
        the traced coordinator and sink; with ``autogen_python``, AutoGen's host and B)."""
        keys = bus.KeyDirectory(self.keys_dir)
        asyncio.run(provision(self.url, keys))
        self.policy.write_text(POLICY)
        if self.args.stages:
            self.envs["mediated"] = {STAGES_ENV: str(self.out_dir)}
        module = STAGE_COORDINATOR if self.args.stages else ""
        scraped = self.start_mediated("mediated", TENANT, metrics=self.args.metrics, module=module)
        processes = [*self.servers["mediated"], *self.start_raw()]
        holders = [("a", "agent"), ("b", "agent"), ("coordinator", "coordinator")]
        if self.args.telemetry:
            asyncio.run(provision_tenant(self.url, TELEMETRY_TENANT, keys, holders))
            self.otlp = OtlpSink()
            self.envs[TELEMETRY] = self.otlp.env(self.args.sample_ratio)
            scraped += self.start_mediated(TELEMETRY, TELEMETRY_TENANT, metrics=True)
            processes += self.servers[TELEMETRY]
        if self.args.candidate_module:
            asyncio.run(provision_tenant(self.url, TENANTS[CANDIDATE], keys, holders))
            self.start_mediated(CANDIDATE, TENANTS[CANDIDATE], metrics=False, module=self.args.candidate_module)
            processes += self.servers[CANDIDATE]
        if autogen_python is not None:
            self.autogen = AutoGenPeers(self.children, autogen_python)
            processes += self.servers.setdefault(AUTOGEN, self.autogen.start())
        for process in processes:
            process.wait_ready(READY_TIMEOUT_S)
        ports = [int(p.ready_line["metrics_port"]) for p in scraped if p.ready_line is not None]
        if ports:
            threading.Thread(target=scrape_every_second, args=(ports,), name="scraper", daemon=True).start()

    def start_mediated(self, topology: str, tenant: str, *, metrics: bool, module: str = "") -> list[Process]:
        """Start ``topology``'s coordinator (``python -m module``, by default ``--coordinator-module``) and B in
        ``tenant`` (not waiting); those serving /metrics."""
        common = ["--server", self.url, "--keys", str(self.keys_dir), "--tenant", tenant]
        if metrics:
            common += ["--metrics-port", "0"]
        env = {**self.children.env, **self.envs.get(topology, {})}
        coordinator = self.children.start(
            f"{topology}-coordinator",
            self.argv(
                module or self.args.coordinator_module,
                ["coordinator", "run", "--policy", str(self.policy), *common],
                f"{topology}-coordinator",
            ),
            env=env,
        )
        sink = self.children.start(
            f"{topology}-b",
            self.argv("trustbus", ["agent", "run", SINK, "--id", "b", *common], f"{topology}-b"),
            env=env,
        )
        self.servers[topology] = [coordinator, sink]
        return [coordinator, sink] if metrics else []

    def start_raw(self) -> list[Process]:
        """Start the raw relay and sink, ``servers["raw"]`` (the caller waits for them to be ready)."""
        relay = self.children.start(
            "raw-relay", self.argv(PROCS, ["raw-relay", "--url", self.url, *fetch_args(SENDER_SETTINGS)], "raw-relay")
        )
        raw_sink = self.children.start(
            "raw-b", self.argv(PROCS, ["raw-sink", "--url", self.url, *fetch_args(INBOX_SETTINGS)], "raw-b")
        )
        self.servers["raw"] = [relay, raw_sink]
        return self.servers["raw"]

    def phase(
        self,
        topology: str,
        label: str,
        n: int,
        rate: float,
        *,
        tenant: str = TENANT,
        watch: list[Process] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run one sender to completion and wait for the sink's file: (sink record, sender summary).

        Any topology but ``raw`` is trustbus, A sending in ``tenant``; ``watch`` (by default the topology's
        ``servers``) are the processes whose exit fails the phase.
        """
        self._phases += 1
        name = f"{topology}-{self._phases}"  # the phase's file name and the sender's log name
        self._tasks[name] = self.progress.add_task(f"{topology} {label}", total=n)
        common = ["--url", self.url, "--phase", name, "--n", str(n), "--rate", str(rate)]
        common += ["--payload", str(self.args.payload)]
        if topology == AUTOGEN:
            assert self.autogen is not None
            argv = self.autogen.sender(name, n, rate, self.args.payload)
        elif topology == "raw":
            argv = self.argv(PROCS, ["raw-send", *common])
        else:
            tenant = TENANTS.get(topology, tenant)
            keys = ["--tenant", tenant, "--keys", str(self.keys_dir)]
            argv = self.argv(PROCS, ["tb-send", *common, *keys, "--per-correlation", str(self.args.per_correlation)])
        env = {**self.children.env, **self.envs.get(topology, {})}
        sender = self.children.start(f"{name}-a", argv, env=env)
        watch = self.servers[topology] if watch is None else watch
        finish(sender, (n / rate if rate else 0.0) + SENDER_SLACK_S, watch=watch)
        record = wait_for_record(
            self.out_dir / f"{name}.json",
            DELIVERY_SLACK_S + n / 200,
            watch=watch,
            late=f"{name}: the sink did not see all {n} messages in time",
        )
        self.progress.update(self._tasks[name], completed=n)
        if self.args.keep_records is not None:
            (self.args.keep_records / f"{name}-{'paced' if rate else 'tput'}.json").write_text(json.dumps(record))
        return record, sender.last_line or {}

    def throughput(
        self, topology: str, label: str, n: int, *, tenant: str = TENANT, processes: dict[str, Process] | None = None
    ) -> Throughput:
        """A phase at full speed; ``processes`` (by default the topology's hub and b) have their CPU counted by role."""
        if processes is None:
            hub, sink = self.servers[topology]
            processes = {"hub": hub, "b": sink}
        pids = {"server": self.server_pid, **{role: process.pid for role, process in processes.items()}}
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        record, sender = self.phase(topology, label, n, 0.0, tenant=tenant, watch=list(processes.values()))
        after = {role: cpu_seconds(pid) for role, pid in pids.items()}
        cpu = {role: sum(after[role]) - sum(before[role]) for role in pids}
        cpu["a"] = float(sender.get("cpu_s", 0.0))
        kernel = {role: after[role][1] - before[role][1] for role in pids}
        span_ns = max(record["received_ns"]) - min(record["sent_ns"])
        p50, p99 = percentiles_ms([r - s for s, r in zip(record["sent_ns"], record["received_ns"], strict=True)])
        return Throughput(
            msgs_per_s=n / (span_ns / 1e9),
            p50_ms=p50,
            p99_ms=p99,
            cpu_us_per_msg={role: seconds * 1e6 / n for role, seconds in cpu.items()},
            sys_us_per_msg={role: seconds * 1e6 / n for role, seconds in kernel.items()},
            duplicates=int(record.get("duplicates", 0)),
        )

    def latency(self, topology: str, label: str) -> Latency:
        rate, seconds = self.args.rate, self.args.seconds
        record, sender = self.phase(topology, label, round(rate * seconds), rate)
        first_measured = round(rate * self.args.warmup)
        latencies = [
            r - s
            for i, s, r in zip(record["index"], record["sent_ns"], record["received_ns"], strict=True)
            if i >= first_measured
        ]
        p50, p99 = percentiles_ms(latencies)
        staged = self.args.stages and topology == "mediated"
        return Latency(
            p50_ms=p50,
            p99_ms=p99,
            p999_ms=p999_ms(latencies),
            max_ms=max(latencies) / 1e6,
            sender_max_lag_ms=float(sender.get("max_lag_ms", 0.0)),
            stages_ms=stage_percentiles(self.out_dir, record, first_measured) if staged else None,
        )


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    progress = progress_bars(stderr, 22)
    for directory in (args.profile, args.keep_records):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    topologies = (*TOPOLOGIES, TELEMETRY) if args.telemetry else TOPOLOGIES
    if args.candidate_module:
        topologies = (*topologies, CANDIDATE)
    paced = topologies  # AutoGen's figure is its throughput alone
    autogen_python = ensure_venv(args.autogen_venv, stderr) if args.peers else None
    if args.peers:
        topologies = (*topologies, AUTOGEN)
    throughputs: dict[str, list[Throughput]] = {t: [] for t in topologies}
    latencies: dict[str, list[Latency]] = {t: [] for t in paced}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mediated-") as tmp, progress:
        bench = Bench(args, Path(tmp), progress)
        server = bus.EmbeddedServer(port=0, sync_always=args.sync == "always")
        try:
            with stopped(bench.children, server, stderr, progress):
                bench.url = server.start()
                bench.server_pid = server.pid
                bench.start_servers(autogen_python)
                for topology in topologies:
                    bench.throughput(topology, "warm-up", args.warmup_n)
                for round_no in range(args.rounds):
                    order = topologies if round_no % 2 == 0 else tuple(reversed(topologies))
                    tag = f"{round_no + 1}/{args.rounds}"
                    for topology in order:
                        throughputs[topology].append(bench.throughput(topology, f"tput {tag}", args.n))
                    for topology in order:
                        if topology in paced:
                            latencies[topology].append(bench.latency(topology, f"{args.rate:g}/s {tag}"))
                if args.keep_records is not None:  # with --stages: the coordinator's notes too
                    for notes in bench.out_dir.glob("coordinator-*.jsonl"):
                        (args.keep_records / notes.name).write_bytes(notes.read_bytes())
                recorded = asyncio.run(
                    decisions_per_record(bench.url, [TENANT, *(TENANTS[t] for t in topologies if t in TENANTS)])
                )
        finally:
            server.stop()
    result = summarise(args, throughputs, latencies)
    result["decisions_per_record"] = recorded[TENANT]
    if args.candidate_module:
        result["candidate_decisions_per_record"] = recorded[TENANTS[CANDIDATE]]
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["sync_always"] = args.sync == "always"
    result["per_correlation"] = args.per_correlation
    result["metrics"] = args.metrics
    result["uvloop"] = args.uvloop
    if args.telemetry:
        result.update(telemetry_figures(throughputs, latencies))
        result["sample_ratio"] = args.sample_ratio
        assert bench.otlp is not None
        result["otlp_exports"] = {"requests": bench.otlp.requests, "bytes": bench.otlp.bytes}
    if args.peers:
        result.update(autogen_figures(throughputs))
    if args.candidate_module:
        result.update(candidate_figures(throughputs, latencies))
        result["candidate_module"] = args.candidate_module
    return result


async def decisions_per_record(url: str, tenants: list[str]) -> dict[str, float]:
    """Per tenant: envelopes its agents sent (each decided once) over decision records stored."""
    nc = await nats.connect(url)
    try:
        js, counts = nc.jetstream(), {}
        for tenant in tenants:
            stream = bus.subjects.stream_name(tenant)
            sent = await js.stream_info(stream, subjects_filter=f"tb.{tenant}.out.>")
            records = await js.stream_info(stream, subjects_filter=bus.subjects.all_decisions(tenant))
            counted = [sum((info.state.subjects or {}).values()) for info in (sent, records)]
            counts[tenant] = round(counted[0] / counted[1], 2) if counted[1] else 0.0
        return counts
    finally:
        await nc.close()


def stage_percentiles(out_dir: Path, record: dict[str, Any], first_measured: int) -> dict[str, dict[str, float]]:
    """p50, p90 and p99 (ms) of each of ``STAGES`` for the measured envelopes of one paced phase, from the
    coordinator's notes (bench/_stage_coordinator.py) and the sink's record."""
    noted: dict[int, tuple[int, int, int]] = {}  # index -> stored, group start, forward
    for path in out_dir.glob("coordinator-*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            phase, index, stored_ns, group_ns, forward_ns = json.loads(line)
            if phase == record["phase"]:
                noted[index] = (stored_ns, group_ns, forward_ns)
    spans: dict[str, list[int]] = {stage: [] for stage in STAGES}
    for index, sent, received in zip(record["index"], record["sent_ns"], record["received_ns"], strict=True):
        if index < first_measured or index not in noted:
            continue
        stored, group, forward = noted[index]
        steps = (stored - sent, group - stored, forward - group, received - forward)
        for stage, span in zip(STAGES, steps, strict=True):
            spans[stage].append(span)
    if not spans[STAGES[0]]:
        raise RuntimeError(f"{record['phase']}: the coordinator noted none of its envelopes' stages")
    return {stage: _spread_ms(values) for stage, values in spans.items()}


def _spread_ms(values_ns: list[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    return {f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)] / 1e6, 3) for q in (50, 90, 99)}


def cpu_ratios_per_round(before: list[Throughput], after: list[Throughput]) -> list[float]:
    """Per round, CPU per message of all processes before over after (above 1: ``after`` is cheaper)."""
    return [sum(b.cpu_us_per_msg.values()) / sum(a.cpu_us_per_msg.values()) for b, a in zip(before, after, strict=True)]


def candidate_figures(throughputs: dict[str, list[Throughput]], latencies: dict[str, list[Latency]]) -> dict[str, Any]:
    """The changed coordinator against the plain one, in the same rounds: throughput and CPU ratios, the tail."""
    new, old = throughputs[CANDIDATE], throughputs["mediated"]
    ratios = [n.msgs_per_s / o.msgs_per_s for o, n in zip(old, new, strict=True)]
    cpu_ratios = cpu_ratios_per_round(old, new)
    paced = latencies[CANDIDATE]
    return {
        "candidate_msgs_per_s": round(statistics.median([x.msgs_per_s for x in new]), 1),
        "candidate_ratio": round(statistics.median(ratios), 4),  # candidate / mediated msgs/s
        "round_candidate_ratios": [round(r, 4) for r in ratios],
        "candidate_cpu_ratio": round(statistics.median(cpu_ratios), 4),  # mediated / candidate CPU per message
        "candidate_cpu_us_per_msg": {
            role: round(statistics.median([x.cpu_us_per_msg[role] for x in new]), 1)
            for role in ("server", "a", "hub", "b")
        },
        "candidate_p50_ms": round(statistics.median([x.p50_ms for x in paced]), 3),
        "candidate_p99_ms": round(max(x.p99_ms for x in paced), 3),
        "candidate_p999_ms": round(max(x.p999_ms for x in paced), 3),
        "candidate_max_ms": round(max(x.max_ms for x in paced), 3),
        "round_candidate_p99_ms": [round(x.p99_ms, 3) for x in paced],
    }


def autogen_figures(throughputs: dict[str, list[Throughput]]) -> dict[str, Any]:
    """AutoGen's one-way throughput, and the mediated path's over it (the median of the per-round ratios)."""
    peers, mediated = throughputs[AUTOGEN], throughputs["mediated"]
    ratios = [m.msgs_per_s / a.msgs_per_s for m, a in zip(mediated, peers, strict=True)]
    return {
        "autogen_msgs_per_s": round(statistics.median([x.msgs_per_s for x in peers]), 1),
        "round_autogen_msgs_per_s": [round(x.msgs_per_s, 1) for x in peers],
        "vs_autogen": round(statistics.median(ratios), 4),
        "round_vs_autogen": [round(r, 4) for r in ratios],
        "autogen_cpu_us_per_msg": {  # hub: AutoGen's host
            role: round(statistics.median([x.cpu_us_per_msg[role] for x in peers]), 1) for role in ("a", "hub", "b")
        },
        "vs_autogen_pass": statistics.median(ratios) >= AUTOGEN_TARGET,
    }


def telemetry_figures(throughputs: dict[str, list[Throughput]], latencies: dict[str, list[Latency]]) -> dict[str, Any]:
    """The traced mediated path against the plain one: ``telemetry_ratio`` (throughput on / off) and latencies."""
    on, off = throughputs[TELEMETRY], throughputs["mediated"]
    ratios = [t.msgs_per_s / m.msgs_per_s for m, t in zip(off, on, strict=True)]
    ratio = statistics.median(ratios)
    # CPU per message of all four processes, off over on: what the throughput ratio tends to on a machine
    # whose cores are all busy, and steadier than it when other work shares the machine.
    cpu_ratios = cpu_ratios_per_round(off, on)
    return {
        "telemetry_cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "telemetry_msgs_per_s": round(statistics.median([x.msgs_per_s for x in on]), 1),
        "telemetry_ratio": round(ratio, 4),
        "round_telemetry_ratios": [round(r, 4) for r in ratios],
        "telemetry_p50_ms": round(statistics.median([x.p50_ms for x in latencies[TELEMETRY]]), 3),
        "telemetry_p99_ms": round(statistics.median([x.p99_ms for x in latencies[TELEMETRY]]), 3),
        "telemetry_cpu_us_per_msg": {
            role: round(statistics.median([x.cpu_us_per_msg[role] for x in on]), 1)
            for role in ("server", "a", "hub", "b")
        },
        "telemetry_pass": ratio >= TELEMETRY_TARGET,
    }


def summarise(
    args: argparse.Namespace, throughputs: dict[str, list[Throughput]], latencies: dict[str, list[Latency]]
) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    raw_t, med_t = throughputs["raw"], throughputs["mediated"]
    raw_l, med_l = latencies["raw"], latencies["mediated"]
    round_ratios = [m.msgs_per_s / r.msgs_per_s for r, m in zip(raw_t, med_t, strict=True)]
    ratio = med(round_ratios)
    p99 = max(x.p99_ms for x in med_l)  # the worst round's: the tail must hold in every round
    return {
        "n": args.n,
        "rounds": args.rounds,
        "payload_bytes": args.payload,
        "offered_rate": args.rate,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "raw_msgs_per_s": round(med([x.msgs_per_s for x in raw_t]), 1),
        "mediated_msgs_per_s": round(med([x.msgs_per_s for x in med_t]), 1),
        "ratio": round(ratio, 4),
        "round_ratios": [round(r, 4) for r in round_ratios],
        "round_raw_msgs_per_s": [round(x.msgs_per_s, 1) for x in raw_t],
        "round_mediated_msgs_per_s": [round(x.msgs_per_s, 1) for x in med_t],
        "p50_ms": round(med([x.p50_ms for x in med_l]), 3),
        "p99_ms": round(p99, 3),
        "median_p99_ms": round(med([x.p99_ms for x in med_l]), 3),
        "p999_ms": round(max(x.p999_ms for x in med_l), 3),
        "max_ms": round(max(x.max_ms for x in med_l), 3),
        "raw_p50_ms": round(med([x.p50_ms for x in raw_l]), 3),
        "raw_p99_ms": round(max(x.p99_ms for x in raw_l), 3),
        "raw_p999_ms": round(max(x.p999_ms for x in raw_l), 3),
        "raw_max_ms": round(max(x.max_ms for x in raw_l), 3),
        "round_p99_ms": [round(x.p99_ms, 3) for x in med_l],
        "round_p999_ms": [round(x.p999_ms, 3) for x in med_l],
        "round_max_ms": [round(x.max_ms, 3) for x in med_l],
        "round_raw_p99_ms": [round(x.p99_ms, 3) for x in raw_l],
        "sender_max_lag_ms": round(max(x.sender_max_lag_ms for x in med_l), 3),
        "raw_sender_max_lag_ms": round(max(x.sender_max_lag_ms for x in raw_l), 3),
        "full_load_p50_ms": round(med([x.p50_ms for x in med_t]), 3),
        "full_load_p99_ms": round(med([x.p99_ms for x in med_t]), 3),
        "raw_full_load_p50_ms": round(med([x.p50_ms for x in raw_t]), 3),
        "raw_full_load_p99_ms": round(med([x.p99_ms for x in raw_t]), 3),
        "cpu_us_per_msg": {
            topology: {
                role: round(med([x.cpu_us_per_msg[role] for x in throughputs[topology]]), 1)
                for role in ("server", "a", "hub", "b")
            }
            for topology in TOPOLOGIES
        },
        "sys_us_per_msg": {
            topology: {
                role: round(med([x.sys_us_per_msg[role] for x in throughputs[topology]]), 1)
                for role in ("server", "hub", "b")
            }
            for topology in TOPOLOGIES
        },
        "ratio_pass": ratio >= RATIO_TARGET,
        "p99_pass": p99 <= P99_TARGET_MS,
        **stage_figures(med_l),
    }


def stage_figures(paced: list[Latency]) -> dict[str, Any]:
    """With --stages: the stages of the round with the worst p99, and each round's p99 per stage."""
    if not paced or paced[0].stages_ms is None:
        return {}
    worst = max(paced, key=lambda x: x.p99_ms)
    return {
        "stages_ms": worst.stages_ms,
        "round_stage_p99_ms": {stage: [x.stages_ms[stage]["p99"] for x in paced if x.stages_ms] for stage in STAGES},
    }


# -- report -------------------------------------------------------------------------------


def report_table(r: dict[str, Any]) -> Table:
    rate = f"{r['offered_rate']:g}/s"
    table = Table(
        title=(
            f"A -> coordinator -> B, separate processes: n={r['n']:,} x {r['rounds']} rounds, "
            f"payload={r['payload_bytes']} B, {rate} for {r['seconds']:g} s"
        ),
        caption=(
            f"throughput and p50: medians over rounds; p99, p99.9, max: the worst round's; "
            f"per-round ratios {r['round_ratios']}; per-round mediated p99 {r['round_p99_ms']} ms, "
            f"p99.9 {r['round_p999_ms']} ms, max {r['round_max_ms']} ms; raw p99 {r['round_raw_p99_ms']} ms; "
            f"load average before/after {r['load_avg_1m']}"
        ),
    )
    for column in ("metric", "raw", "mediated", "ratio", "target"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row(
        "msgs/s (A first send -> B last receive)",
        f"{r['raw_msgs_per_s']:,.0f}",
        f"{r['mediated_msgs_per_s']:,.0f}",
        f"{r['ratio']:.3f}",
        f">= {RATIO_TARGET} {verdict(r['ratio_pass'])}",
    )
    table.add_row(f"latency p50 at {rate} (ms)", f"{r['raw_p50_ms']:.2f}", f"{r['p50_ms']:.2f}", "", "")
    table.add_row(
        f"latency p99 at {rate}, worst round (ms)",
        f"{r['raw_p99_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        "",
        f"<= {P99_TARGET_MS:g} {verdict(r['p99_pass'])}",
    )
    table.add_row(f"latency p99.9 at {rate}, worst round (ms)", f"{r['raw_p999_ms']:.2f}", f"{r['p999_ms']:.2f}")
    table.add_row(f"latency max at {rate}, worst round (ms)", f"{r['raw_max_ms']:.2f}", f"{r['max_ms']:.2f}", "", "")
    for stage, spread in (r.get("stages_ms") or {}).items():
        table.add_row(
            f"{stage.replace('_', ' ')} p50 / p90 / p99, worst round (ms)",
            "",
            f"{spread['p50']:.2f} / {spread['p90']:.2f} / {spread['p99']:.2f}",
            "",
            "",
        )
    table.add_row(
        "sender's worst lag behind schedule (ms)",
        f"{r['raw_sender_max_lag_ms']:.2f}",
        f"{r['sender_max_lag_ms']:.2f}",
        "",
        "",
    )
    table.add_row(
        "latency p50 / p99 at full load (ms)",
        f"{r['raw_full_load_p50_ms']:.1f} / {r['raw_full_load_p99_ms']:.1f}",
        f"{r['full_load_p50_ms']:.1f} / {r['full_load_p99_ms']:.1f}",
        "",
        "",
    )
    cpu, kernel = r["cpu_us_per_msg"], r["sys_us_per_msg"]

    def cpu_cell(topology: str, role: str) -> str:
        if role not in kernel[topology]:
            return f"{cpu[topology][role]:,.0f}"
        return f"{cpu[topology][role]:,.0f} ({kernel[topology][role]:,.0f})"

    for role, what in (("a", "A"), ("hub", "relay | coordinator"), ("b", "B"), ("server", "nats-server")):
        table.add_row(f"CPU µs/msg at full load (sys): {what}", cpu_cell("raw", role), cpu_cell("mediated", role))
    raw_total, mediated_total = (sum(cpu[t].values()) for t in ("raw", "mediated"))
    table.add_row("CPU µs/msg at full load: all", f"{raw_total:,.0f}", f"{mediated_total:,.0f}", "", "")
    if "candidate_ratio" in r:
        table.add_row(
            f"candidate coordinator ({r['candidate_module']}) msgs/s (ratio: candidate / plain)",
            "",
            f"{r['candidate_msgs_per_s']:,.0f}",
            f"{r['candidate_ratio']:.3f}",
            "",
        )
        table.add_row(
            "candidate: CPU ratio (plain / candidate); p99 / p99.9 / max at the rate, worst round (ms)",
            "",
            f"{r['candidate_p99_ms']:.2f} / {r['candidate_p999_ms']:.2f} / {r['candidate_max_ms']:.2f}",
            f"{r['candidate_cpu_ratio']:.3f}",
            "",
        )
    if "vs_autogen" in r:
        table.add_row(
            "AutoGen gRPC msgs/s, one way (ratio: mediated / AutoGen)",
            "",
            f"{r['autogen_msgs_per_s']:,.0f}",
            f"{r['vs_autogen']:.3f}",
            f">= {AUTOGEN_TARGET:g} {verdict(r['vs_autogen_pass'])}",
        )
        autogen_cpu = r["autogen_cpu_us_per_msg"]
        table.add_row(
            "AutoGen CPU µs/msg: A / host / B",
            "",
            " / ".join(f"{autogen_cpu[role]:,.0f}" for role in ("a", "hub", "b")),
            "",
            "",
        )
    if "telemetry_ratio" in r:
        table.add_row(
            "traced + metrics msgs/s (ratio: on / off)",
            "",
            f"{r['telemetry_msgs_per_s']:,.0f}",
            f"{r['telemetry_ratio']:.3f}",
            f">= {TELEMETRY_TARGET} {verdict(r['telemetry_pass'])}",
        )
        table.add_row(
            "CPU µs/msg, all processes: off / on (ratio)",
            "",
            f"{mediated_total:,.0f} / {sum(r['telemetry_cpu_us_per_msg'].values()):,.0f}",
            f"{r['telemetry_cpu_ratio']:.3f}",
            "",
        )
        table.add_row(
            f"traced latency p50 / p99 at {rate} (ms)",
            "",
            f"{r['telemetry_p50_ms']:.2f} / {r['telemetry_p99_ms']:.2f}",
            "",
            "",
        )
        traced_cpu = r["telemetry_cpu_us_per_msg"]
        table.add_row(
            "traced CPU µs/msg: A / coordinator / B / server",
            "",
            " / ".join(f"{traced_cpu[role]:,.0f}" for role in ("a", "hub", "b", "server")),
            "",
            "",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="messages per throughput phase (default 5000)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered msgs/s in the latency phase (default 500)")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of the latency phase (default 6)")
    parser.add_argument(
        "--warmup-n", type=int, default=500, help="unmeasured messages per topology before the rounds (default 500)"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of paced sends left out (default 0.5)")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per message (default 256)")
    parser.add_argument(
        "--per-correlation",
        type=int,
        default=1,
        help="envelopes A sends in each correlation (default 1: each starts its own, the coordinator's costliest "
        "case: a state lookup and a stored state per envelope; at most limits.decisions_per_correlation, 1500)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both topologies; medians (default 3)")
    parser.add_argument("--profile", type=Path, help="profile the coordinator, sinks and relay into this dir")
    parser.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    parser.add_argument(
        "--coordinator-module",
        default="trustbus",
        help="module run with `python -m MODULE coordinator run ...` (default trustbus): to measure a candidate change",
    )
    parser.add_argument(
        "--candidate-module",
        default="",
        help="also run the mediated path, in a tenant of its own, with `python -m MODULE coordinator run` (a "
        "coordinator with a change to measure) in every round; --json adds candidate_ratio (its msgs/s over the "
        "plain coordinator's) and candidate_cpu_ratio",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="note when each mediated envelope is stored, its group starts and its forward is published (a "
        "wrapped coordinator, bench/_stage_coordinator.py); --json adds stages_ms (p50/p90/p99 of A's send -> "
        "stored -> group start -> forward published -> B's handler, in the round with the worst p99)",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run every process of the raw and mediated topologies on uvloop's event loop (bench/_on_uvloop.py): "
        "a stronger raw relay, and the mediated path on the same loop",
    )
    parser.add_argument("--keep-records", type=Path, help="copy each phase's per-message record into this dir")
    parser.add_argument(
        "--sync",
        choices=["default", "always"],
        default="default",
        help="'always': the server fsyncs every write before acking it, as a kept store does (default: the "
        "temporary store's 2-minute interval)",
    )
    parser.add_argument(
        "--metrics", action="store_true", help="serve /metrics from the coordinator and B, scraped every second"
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="also run the mediated path traced (100%% sampling, OTLP to a local receiver) with metrics on; "
        "--json adds telemetry_ratio (throughput on / off)",
    )
    parser.add_argument(
        "--sample-ratio",
        type=float,
        default=1.0,
        help="with --telemetry: the share of traces sampled (default 1: every one; below 1, A decides and the "
        "coordinator and B follow, OTEL_TRACES_SAMPLER=parentbased_traceidratio)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run AutoGen's gRPC runtime (bench/peers.py) in each round; --json adds autogen_msgs_per_s and "
        "vs_autogen (mediated / AutoGen msgs/s)",
    )
    parser.add_argument(
        "--autogen-venv", type=Path, default=default_venv(), help="with --peers: the AutoGen venv (made if missing)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    args = parser.parse_args()
    if args.warmup_n < 1:
        parser.error("--warmup-n must be at least 1")
    if args.n < 100 or args.rounds < 1 or args.rate <= 0 or args.seconds <= args.warmup or args.warmup < 0:
        parser.error("need --n >= 100, --rounds >= 1, --rate > 0 and --seconds > --warmup >= 0")
    if args.rate * (args.seconds - args.warmup) < 100:
        parser.error("--rate x (--seconds - --warmup) must leave at least 100 measured messages")
    if not 1 <= args.per_correlation <= 1500:
        parser.error("--per-correlation must be in 1..1500 (limits.decisions_per_correlation)")
    if args.stages and args.coordinator_module != "trustbus":
        parser.error("--stages runs its own wrapped coordinator: not with --coordinator-module")
    if args.uvloop and args.profile:
        parser.error("--uvloop and --profile: one wrapper per process; profile without --uvloop")
    if args.payload < 128:
        parser.error("--payload must be at least 128 bytes (the timing fields)")
    if not 0 < args.sample_ratio <= 1:
        parser.error("--sample-ratio must be in (0, 1]")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
