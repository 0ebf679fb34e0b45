"""Scale-out benchmark: agent A -> K coordinator processes sharing one tenant -> agent B, for K = 1, 2, 4.

Run from anywhere: ``python bench/scale.py [--n N] [--rounds R] [--coordinators 1,2,4] [--json]``.

Built on bench/mediated.py, whose processes, provisioning, CPU accounting and raw baseline it imports.
One ``bus.EmbeddedServer(port=0)`` (temporary store) serves every configuration; every process runs on
this machine, so all of them share its cores.

- **K coordinators** (each K of ``--coordinators``, each round): a fresh tenant ``scale<i>`` provisioned
  with ``bus.init_tenant``, keys ``a`` and ``b`` (role agent) and ``coordinator-1`` .. ``coordinator-K``
  (role coordinator), bench/mediated.py's policy (``a -> b`` ``event``, hop, budget and fan-out limits far
  above the load, no rate limit). K processes ``python -m trustbus coordinator run --name
  coordinator-<j>``, each logging every append conflict it meets (its JSON log lines on stderr,
  read by the bench). The tenant has as many
  partitions as the largest K measured; the coordinators lease them (agents/_partitions.py), and the
  measurement starts once each holds its share. Each partition has its own outbox consumer and decision
  subject, each append conditional on the last decision of that partition it knows
  (``Nats-Expected-Last-Subject-Sequence``). A's envelopes each start a correlation, so they spread
  over every partition. B is ``python -m trustbus agent run
  bench._mediated_sink:Sink --id b``; A is bench/mediated.py's ``tb-send``: it seals an envelope per
  message and ``publish_pipelined`` them to its outbox as fast as it can. Once every process is ready,
  an unmeasured warm-up of 500 envelopes, then ``--n`` measured ones. Afterwards the processes are
  stopped and the tenant's stream and buckets deleted.
- **raw**: bench/mediated.py's raw nats-py topology, unsigned (A ``publish_async`` -> a relay that
  republishes one message at a time, awaiting each ack -> B), its processes started once with a warm-up
  of 500 messages, measured in every round.

msgs/s = N / (A's first send -> B's last receive, B's clock taken in its handler after verification).
In each of ``--rounds`` rounds every configuration (raw, then each K) runs once, in an order rotated by
one place per round; each figure is the median over the rounds, and ``speedup_K`` = ``msgs_per_s_K`` /
``msgs_per_s_1``. Per configuration, also:

- **CPU µs per message per process**: the server, A (its own count, first send to last ack), each
  coordinator and B (or the relay and B), from ``/proc`` before and after the phase. With every process
  on the same cores, ``cpu_bound_msgs_per_s`` = cores x 1e6 / (their sum) is the rate at which they
  would keep every core busy: a measured rate close to it means the cores are the bound, and a sum
  growing with K means the added coordinators cost more work per message, not less.
- **decisions per coordinator**: read back from the decision log after the phase, each decision record's
  sender (the key owner that signed it), for the phase's envelopes only.
- **conflicts per coordinator**: appends refused because another coordinator had appended first, each
  followed by a catch-up that reads the decisions it missed (counted, with the time it took) and by the
  decisions of that append being made again (``discarded``): the coordinator's own log line of each
  conflict (agents/_decision_log.py), summed; also the outbox consumer's redeliveries.
- **exactly once**, checked for every phase (a failure stops the bench, it is not a figure): B's handler
  saw every index once and none twice (not even after the last), the decision log holds exactly one
  accepting decision per envelope of the phase, and B's inbox holds exactly one forward per envelope.

The machine's core count and its 1-minute load average before and after are reported: other work on
the machine moves every figure. With ``--json`` the last line of stdout is one JSON object with every
figure (``msgs_per_s_<K>``, ``speedup_<K>``, ``raw_msgs_per_s``, ``cores``, ``load_avg_1m``, and under
``configurations`` each one's details, per round too) and the human table goes to stderr with the
progress display. ``--profile DIR`` runs the
coordinators, sinks and relay under cProfile (or pyinstrument, ``--profiler``). Every process is stopped
(SIGTERM, then SIGKILL after a timeout) on success, failure, Ctrl-C and SIGTERM (and is sent SIGTERM by
Linux if the bench itself is killed); on failure their stderr tails are printed.
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench._harness import STOP_TIMEOUT_S, BenchError, progress_bars, run_bench, stopped
from bench.mediated import (
    POLICY,
    READY_TIMEOUT_S,
    SINK,
    TENANT,
    WARMUP_N,
    Bench,
    Throughput,
    provision_raw,
    provision_tenant,
)
from trustbus import bus
from trustbus._supervisor import Process
from trustbus.agents._coordinator import consumer_name
from trustbus.agents._decision_log import CONFLICT_LOGGED
from trustbus.bus._records import decode_signed

SETTLE_TIMEOUT_S = 30.0  # after B's last receive, for its inbox consumer to have nothing pending
DECISION_FETCH = 512
COUNTED = ("conflicts", "caught_up", "catch_up_s", "discarded")


def conflict_counts(process: Process) -> dict[str, float]:
    """A coordinator's conflicts so far (COUNTED), summed from the line it logged for each (its stderr log)."""
    totals = dict.fromkeys(COUNTED, 0.0)
    with contextlib.suppress(OSError), process.log.open() as lines:
        for text in lines:
            if CONFLICT_LOGGED not in text:
                continue
            fields = json.loads(text)
            for key in COUNTED:
                totals[key] += fields[key]
    return totals


def cores() -> int:
    """The cores this process may run on (its children inherit them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# -- reading a tenant back -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audit:
    """What the stream says about one measured phase of a tenant."""

    decisions: dict[str, int]  # per coordinator (the decision record's sender)
    decided: int  # distinct envelope ids among those decisions
    accepted: int  # decisions whose verdict is accept
    inbox: int  # forwards stored on B's inbox subject, warm-up included
    inbox_redelivered: int  # B's consumer: messages delivered more than once
    outbox_redelivered: int  # the coordinators' outbox consumer: the same


async def last_seq(url: str, tenant: str) -> int:
    nc = await nats.connect(url, name="bench-audit", connect_timeout=5)
    try:
        info = await nc.jetstream().stream_info(bus.subjects.stream_name(tenant))
        return info.state.last_seq
    finally:
        await nc.close()


async def spread_leases(url: str, tenant: str, names: list[str], partitions: int) -> None:
    """Wait until the K coordinators hold the tenant's partitions evenly (they rebalance once a second)."""
    bucket = bus.subjects.coordinator_bucket(tenant)
    share = -(-partitions // len(names))
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            held: dict[str, int] = {}
            for p in range(partitions):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    raw = await js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.partition-{p}")
                    with contextlib.suppress(ValueError, bus.VerificationError):  # not a coordinator's lease
                        holder = json.loads(bus.decode_envelope(decode_signed(raw.data or b"").body).payload)
                        if holder["instance"] is not None:  # else handed back
                            held[holder["name"]] = held.get(holder["name"], 0) + 1
            if set(held) == set(names) and max(held.values()) <= share:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"partitions not spread over {names} within {READY_TIMEOUT_S:.0f}s: {held}")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def read_decisions(js: JetStreamContext, tenant: str, after_seq: int) -> list[tuple[str, bus.Decision]]:
    """(signer, decision) of every record on the decision subject after ``after_seq``, in order."""
    subject = bus.subjects.all_decisions(tenant)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after_seq + 1,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subject, stream=bus.subjects.stream_name(tenant), config=config)
    found: list[tuple[str, bus.Decision]] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(DECISION_FETCH, timeout=5.0)
            except TimeoutError:
                return found  # nothing after after_seq
            for msg in msgs:
                record = bus.decode_envelope(msg.data)
                found += [(record.sender, decision) for decision in bus.decode_decisions(record.payload)[0]]
            if msgs[-1].metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


async def audit_tenant(url: str, tenant: str, *, after_seq: int) -> Audit:
    """Wait for B's inbox consumer to settle, then read the decisions after ``after_seq`` and the counts."""
    stream = bus.subjects.stream_name(tenant)
    nc = await nats.connect(url, name="bench-audit", connect_timeout=5)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            inbox = await js.consumer_info(stream, bus.subjects.inbox_consumer("b"), timeout=5.0)
            if not inbox.num_pending and not inbox.num_ack_pending:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{tenant}: B's inbox consumer still has messages pending after {SETTLE_TIMEOUT_S}s")
            await asyncio.sleep(0.05)  # the server has no event for "nothing pending": ask again
        outboxes = [
            await js.consumer_info(stream, consumer_name(p), timeout=5.0)
            for p in range(await bus.tenant_partitions(js, tenant))
        ]
        inbox_subject = bus.subjects.inbox(tenant, "b")
        state = (await js.stream_info(stream, subjects_filter=inbox_subject)).state
        decisions = await read_decisions(js, tenant, after_seq)
    finally:
        await nc.close()
    by_signer: dict[str, int] = {}
    for signer, _ in decisions:
        by_signer[signer] = by_signer.get(signer, 0) + 1
    return Audit(
        decisions=by_signer,
        decided=len({decision.envelope_id for _, decision in decisions}),
        accepted=sum(decision.verdict == "accept" for _, decision in decisions),
        inbox=(state.subjects or {}).get(inbox_subject, 0),
        inbox_redelivered=inbox.num_redelivered or 0,
        outbox_redelivered=sum(outbox.num_redelivered or 0 for outbox in outboxes),
    )


async def delete_tenant(url: str, tenant: str) -> None:
    """Delete the tenant's stream and buckets (they are not needed once its phase is read back)."""
    nc = await nats.connect(url, name="bench-admin", connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.delete_stream(bus.subjects.stream_name(tenant))
        for bucket in (bus.subjects.keyring_bucket(tenant), bus.subjects.memory_bucket(tenant)):
            await js.delete_key_value(bucket)
    finally:
        await nc.close()


# -- measurement ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scaled:
    """One measured configuration of K coordinators."""

    throughput: Throughput
    audit: Audit
    counts: dict[str, dict[str, float]]  # per coordinator, this phase: COUNTED


class ScaleBench(Bench):
    """bench/mediated.py's processes and phases, with a fresh tenant and K coordinators per configuration."""

    def __init__(self, args: argparse.Namespace, work: Path, progress: Progress) -> None:
        super().__init__(args, work, progress)
        self.keys = bus.KeyDirectory(self.keys_dir)
        # As many partitions as the most coordinators measured: each can hold one or more.
        self.partitions = max(args.coordinators)
        self.policy.write_text(POLICY)
        self._tenants = 0
        self._received: dict[str, int] = {}  # phase -> B's latest count
        self._duplicates: dict[str, int] = {}  # phase -> second deliveries B saw

    def _progress_line(self, fields: dict[str, Any]) -> None:
        """Called on the children's reader threads: B's progress (with its duplicates)."""
        phase = str(fields["progress"])
        self._received[phase] = int(fields.get("received", 0))
        if "duplicates" in fields:
            self._duplicates[phase] = max(self._duplicates.get(phase, 0), int(fields["duplicates"]))
        super()._progress_line(fields)

    def start_raw_topology(self) -> None:
        asyncio.run(provision_raw(self.url))
        for process in self.start_raw():
            process.wait_ready(READY_TIMEOUT_S)
        self.warm_up("raw")

    def warm_up(self, topology: str, *, tenant: str = TENANT, processes: dict[str, Process] | None = None) -> None:
        """An unmeasured phase; its bar goes once it is done."""
        self.throughput(topology, "warm-up", WARMUP_N, tenant=tenant, processes=processes)
        self.progress.remove_task(self._tasks.pop(self.last_phase(topology)))

    def last_phase(self, topology: str) -> str:
        return f"{topology}-{self._phases}"  # as Bench.phase names it

    def raw(self, tag: str) -> Throughput:
        throughput = self.throughput("raw", f"tput {tag}", self.args.n)
        problems = self.duplicates(throughput)
        if problems:
            raise BenchError(f"raw: not exactly once: {problems}")
        return throughput

    def duplicates(self, throughput: Throughput) -> str:
        """What B saw twice so far, in any phase ('' if nothing)."""
        seen = {phase: count for phase, count in self._duplicates.items() if count}
        if not (throughput.duplicates or seen):
            return ""
        return f"B saw second deliveries: {seen or throughput.duplicates}"

    def coordinators(self, k: int, tag: str) -> Scaled:
        """Provision a tenant, start K coordinators and B, warm up, measure, read back, stop, delete."""
        self._tenants += 1
        tenant, topology, n = f"scale{self._tenants}", f"k{k}", self.args.n
        names = [f"coordinator-{j}" for j in range(1, k + 1)]
        holders = [("a", "agent"), ("b", "agent"), *((name, "coordinator") for name in names)]
        asyncio.run(provision_tenant(self.url, tenant, self.keys, holders, partitions=self.partitions))
        common = ["--server", self.url, "--keys", str(self.keys_dir), "--tenant", tenant]
        starting = self.progress.add_task(f"{topology} start {tag}", total=k + 1)
        processes: dict[str, Process] = {}
        for name in names:
            argv = ["coordinator", "run", "--policy", str(self.policy), "--name", name, *common]
            processes[name] = self.children.start(f"{tenant}-{name}", self.argv("trustbus", argv, f"{tenant}-{name}"))
        processes["b"] = self.children.start(
            f"{tenant}-b", self.argv("trustbus", ["agent", "run", SINK, "--id", "b", *common], f"{tenant}-b")
        )
        try:
            for process in processes.values():
                process.wait_ready(READY_TIMEOUT_S)
                self.progress.advance(starting)
            self.progress.remove_task(starting)
            asyncio.run(spread_leases(self.url, tenant, names, self.partitions))
            self.warm_up(topology, tenant=tenant, processes=processes)
            mark = asyncio.run(last_seq(self.url, tenant))
            before = {name: conflict_counts(processes[name]) for name in names}
            try:
                throughput = self.throughput(topology, f"tput {tag}", n, tenant=tenant, processes=processes)
            except BenchError as exc:
                received = self._received.get(self.last_phase(topology), 0)
                raise BenchError(f"{exc} (B's last count: {received:,} of {n:,})") from exc
            audit = asyncio.run(audit_tenant(self.url, tenant, after_seq=mark))
        finally:
            self.children.stop(reversed(processes.values()), STOP_TIMEOUT_S)
        after = {name: conflict_counts(processes[name]) for name in names}
        asyncio.run(delete_tenant(self.url, tenant))
        self.check(topology, tenant, n, throughput, audit)
        counts = {name: {key: after[name][key] - before[name][key] for key in COUNTED} for name in names}
        return Scaled(throughput=throughput, audit=audit, counts=counts)

    def check(self, topology: str, tenant: str, n: int, throughput: Throughput, audit: Audit) -> None:
        """Exactly once, or BenchError."""
        problems = []
        if duplicated := self.duplicates(throughput):
            problems.append(duplicated)
        decisions = sum(audit.decisions.values())
        if decisions != n or audit.decided != n or audit.accepted != n:
            problems.append(
                f"the decision log holds {decisions:,} decisions of {audit.decided:,} envelopes, "
                f"{audit.accepted:,} accepting, for {n:,} envelopes"
            )
        if audit.inbox != WARMUP_N + n:
            problems.append(f"B's inbox holds {audit.inbox:,} forwards for {WARMUP_N + n:,} envelopes")
        if problems:
            raise BenchError(f"{topology} ({tenant}): not exactly once: {'; '.join(problems)}")


def rotated(configurations: list[str], round_no: int) -> list[str]:
    shift = round_no % len(configurations)
    return configurations[shift:] + configurations[:shift]


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    progress = progress_bars(stderr, 22)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    configurations = ["raw", *(str(k) for k in args.coordinators)]
    raw: list[Throughput] = []
    scaled: dict[int, list[Scaled]] = {k: [] for k in args.coordinators}
    orders: list[list[str]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, progress:
        bench = ScaleBench(args, Path(tmp), progress)
        server = bus.EmbeddedServer(port=0)
        try:
            with stopped(bench.children, server, stderr, progress):
                bench.url = server.start()
                bench.server_pid = server.pid
                bench.start_raw_topology()
                for round_no in range(args.rounds):
                    tag = f"{round_no + 1}/{args.rounds}"
                    orders.append(rotated(configurations, round_no))
                    for configuration in orders[-1]:
                        if configuration == "raw":
                            raw.append(bench.raw(tag))
                        else:
                            scaled[int(configuration)].append(bench.coordinators(int(configuration), tag))
        finally:
            server.stop()
    result = summarise(args, raw, scaled, orders)
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


# -- summary --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def cpu_summary(runs: list[Throughput], roles: list[str], machine_cores: int) -> dict[str, Any]:
    """Medians of each role's CPU µs per message, of their sum, and of the rate that would keep every core busy."""
    totals = [sum(run.cpu_us_per_msg[role] for role in roles) for run in runs]
    return {
        "cpu_us_per_msg": {role: round(med([run.cpu_us_per_msg[role] for run in runs]), 1) for role in roles},
        "cpu_us_per_msg_total": round(med(totals), 1),
        "cpu_bound_msgs_per_s": round(med([machine_cores * 1e6 / total for total in totals]), 1),
    }


def by_rank(rounds: Sequence[Mapping[str, float]], ranks: list[list[str]], digits: int = 1) -> list[float]:
    """Per rank (busiest coordinator first), the median over rounds of its value in ``rounds``."""
    return [
        round(med([values[rank[i]] for values, rank in zip(rounds, ranks, strict=True)]), digits)
        for i in range(len(ranks[0]))
    ]


def coordinators_summary(k: int, runs: list[Scaled], one: list[Scaled] | None, n: int, cores: int) -> dict[str, Any]:
    """One K's figures. Which coordinator wins is chance, so per coordinator they are ranked in each round by
    the decisions it made (busiest first) and the medians are taken per rank."""
    names = [f"coordinator-{j}" for j in range(1, k + 1)]
    rates = [run.throughput.msgs_per_s for run in runs]
    decisions = [{name: run.audit.decisions.get(name, 0) for name in names} for run in runs]
    ranks = [sorted(names, key=lambda name: (-made[name], name)) for made in decisions]
    cpu = cpu_summary([run.throughput for run in runs], ["server", "a", *names, "b"], cores)
    each_cpu = [{name: run.throughput.cpu_us_per_msg[name] for name in names} for run in runs]
    detail: dict[str, Any] = {
        "coordinators": k,
        "msgs_per_s": round(med(rates), 1),
        "full_load_p50_ms": round(med([run.throughput.p50_ms for run in runs]), 3),
        "full_load_p99_ms": round(med([run.throughput.p99_ms for run in runs]), 3),
        "cpu_us_per_msg": {role: cpu["cpu_us_per_msg"][role] for role in ("server", "a", "b")},
        "cpu_us_per_msg_coordinators": round(med([sum(values.values()) for values in each_cpu]), 1),
        "cpu_us_per_msg_total": cpu["cpu_us_per_msg_total"],
        "cpu_bound_msgs_per_s": cpu["cpu_bound_msgs_per_s"],
        "ranked": {
            "decisions": by_rank(decisions, ranks),
            "cpu_us_per_msg": by_rank(each_cpu, ranks),
        },
        "outbox_redelivered": med([run.audit.outbox_redelivered for run in runs]),
        "inbox_redelivered": med([run.audit.inbox_redelivered for run in runs]),
        "exactly_once_checked": len(runs) * n,
        "round_msgs_per_s": [round(rate, 1) for rate in rates],
        "rounds": [
            {
                "msgs_per_s": round(run.throughput.msgs_per_s, 1),
                "cpu_us_per_msg": {role: round(us, 1) for role, us in run.throughput.cpu_us_per_msg.items()},
                "decisions": made,
                "outbox_redelivered": run.audit.outbox_redelivered,
                "inbox_redelivered": run.audit.inbox_redelivered,
                **{key: {c: run.counts[c][key] for c in names} for key in COUNTED},
            }
            for run, made in zip(runs, decisions, strict=True)
        ],
    }
    if one is not None:
        detail["round_speedup"] = [
            round(run.throughput.msgs_per_s / base.throughput.msgs_per_s, 4)
            for run, base in zip(runs, one, strict=True)
        ]
    for key in COUNTED:
        per_round = [{name: run.counts[name][key] for name in names} for run in runs]
        detail["ranked"][key] = by_rank(per_round, ranks, 4 if key == "catch_up_s" else 1)
        detail[f"{key}_total"] = round(med([sum(values.values()) for values in per_round]), 4)
    return detail


def summarise(
    args: argparse.Namespace, raw: list[Throughput], scaled: dict[int, list[Scaled]], orders: list[list[str]]
) -> dict[str, Any]:
    machine_cores = cores()
    raw_rates = [run.msgs_per_s for run in raw]
    raw_rate = med(raw_rates)
    result: dict[str, Any] = {
        "n": args.n,
        "rounds": args.rounds,
        "payload_bytes": args.payload,
        "coordinators": args.coordinators,
        "cores": machine_cores,
        "cpu_count": os.cpu_count(),
        "orders": orders,
        "raw_msgs_per_s": round(raw_rate, 1),
    }
    cpu = cpu_summary(raw, ["server", "a", "hub", "b"], machine_cores)
    cpu["cpu_us_per_msg"]["relay"] = cpu["cpu_us_per_msg"].pop("hub")
    details: dict[str, Any] = {
        "raw": {
            "msgs_per_s": round(raw_rate, 1),
            "full_load_p50_ms": round(med([run.p50_ms for run in raw]), 3),
            "full_load_p99_ms": round(med([run.p99_ms for run in raw]), 3),
            **cpu,
            "round_msgs_per_s": [round(rate, 1) for rate in raw_rates],
        }
    }
    one = scaled.get(1)
    for k, runs in scaled.items():
        detail = coordinators_summary(k, runs, one, args.n, machine_cores)
        detail["of_raw"] = round(detail["msgs_per_s"] / raw_rate, 4)
        details[str(k)] = detail
        result[f"msgs_per_s_{k}"] = detail["msgs_per_s"]
    if one is not None:
        base = med([run.throughput.msgs_per_s for run in one])
        for k, runs in scaled.items():
            if k != 1:
                result[f"speedup_{k}"] = round(med([run.throughput.msgs_per_s for run in runs]) / base, 4)
    result["configurations"] = details
    return result


# -- report -----------------------------------------------------------------------------------


def report_table(r: dict[str, Any]) -> Table:
    ks = [str(k) for k in r["coordinators"]]
    details = r["configurations"]
    table = Table(
        title=(
            f"A -> K coordinators sharing one tenant -> B, separate processes on {r['cores']} cores: "
            f"n={r['n']:,} x {r['rounds']} rounds, payload={r['payload_bytes']} B"
        ),
        caption=(
            "medians over rounds; 'each coordinator': ranked in each round by decisions made, busiest first, "
            "medians per rank; per-round msgs/s "
            + ", ".join(f"{key if key == 'raw' else 'K=' + key} {details[key]['round_msgs_per_s']}" for key in details)
            + f"; load average before/after {r['load_avg_1m']}"
        ),
    )
    table.add_column("metric", justify="left")
    table.add_column("raw", justify="right")
    for k in ks:
        table.add_column(f"K={k}", justify="right")

    def row(metric: str, raw: str, cell: Callable[[dict[str, Any]], str]) -> None:
        table.add_row(metric, raw, *(cell(details[k]) for k in ks))

    def each(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        def cell(detail: dict[str, Any]) -> str:
            values = detail["ranked"].get(key)
            if values is None:
                return "-"
            return " / ".join(f"{value * scale:,.0f}" for value in values)

        return cell

    def total(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        def cell(detail: dict[str, Any]) -> str:
            return "-" if key not in detail else f"{detail[key] * scale:,.0f}"

        return cell

    raw = details["raw"]
    row("msgs/s (A first send -> B last receive)", f"{raw['msgs_per_s']:,.0f}", lambda d: f"{d['msgs_per_s']:,.0f}")
    row("speed-up over K=1", "", lambda d: f"{r.get('speedup_' + str(d['coordinators']), 1.0):.2f}")
    row("of raw", "1.00", lambda d: f"{d['of_raw']:.2f}")
    row(
        "msgs/s at which every core is busy",
        f"{raw['cpu_bound_msgs_per_s']:,.0f}",
        lambda d: f"{d['cpu_bound_msgs_per_s']:,.0f}",
    )
    row(
        "latency p50 / p99 at full load (ms)",
        f"{raw['full_load_p50_ms']:,.0f} / {raw['full_load_p99_ms']:,.0f}",
        lambda d: f"{d['full_load_p50_ms']:,.0f} / {d['full_load_p99_ms']:,.0f}",
    )
    cpu = raw["cpu_us_per_msg"]
    row("CPU µs/msg: nats-server", f"{cpu['server']:,.0f}", lambda d: f"{d['cpu_us_per_msg']['server']:,.0f}")
    row("CPU µs/msg: A", f"{cpu['a']:,.0f}", lambda d: f"{d['cpu_us_per_msg']['a']:,.0f}")
    row("CPU µs/msg: relay | each coordinator", f"{cpu['relay']:,.0f}", each("cpu_us_per_msg"))
    row("CPU µs/msg: coordinators together", "", total("cpu_us_per_msg_coordinators"))
    row("CPU µs/msg: B", f"{cpu['b']:,.0f}", lambda d: f"{d['cpu_us_per_msg']['b']:,.0f}")
    row("CPU µs/msg: all", f"{raw['cpu_us_per_msg_total']:,.0f}", total("cpu_us_per_msg_total"))
    row("decisions made, each coordinator", "", each("decisions"))
    row("append conflicts, each coordinator", "", each("conflicts"))
    row("append conflicts, all coordinators", "", total("conflicts_total"))
    row("decisions read back after conflicts, each", "", each("caught_up"))
    row("ms spent catching up after conflicts, each", "", each("catch_up_s", 1e3))
    row("decisions discarded and made again, all", "", total("discarded_total"))
    row("outbox redeliveries", "", total("outbox_redelivered"))
    row("exactly once (envelopes checked)", "", lambda d: f"[green]yes[/green] ({d['exactly_once_checked']:,})")
    return table


def parse_coordinators(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text!r}") from None
    if not counts or counts[0] < 1 or 1 not in counts:
        raise argparse.ArgumentTypeError("coordinator counts are >= 1 and include 1 (the speed-ups' base)")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="envelopes per measured phase (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration; medians (default 3)")
    parser.add_argument(
        "--coordinators",
        type=parse_coordinators,
        default=[1, 2, 4],
        help="coordinator counts to measure, comma-separated, 1 included (default 1,2,4)",
    )
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per message (default 256)")
    parser.add_argument("--profile", type=Path, help="profile the coordinators, sinks and relay into this dir")
    parser.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    parser.set_defaults(keep_records=None)  # read by bench/mediated.py's Bench
    args = parser.parse_args()
    if args.n < 100 or args.rounds < 1:
        parser.error("need --n >= 100 and --rounds >= 1")
    if args.payload < 128:
        parser.error("--payload must be at least 128 bytes (the timing fields)")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
