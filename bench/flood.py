"""Flood benchmark: a valid sender's latency while another process floods forged envelopes, against no flood.

Run from anywhere: ``python bench/flood.py [--rate R] [--seconds S] [--flood N] [--json]``.

One ``bus.EmbeddedServer(port=0)`` (temporary store), a tenant of one partition with keys ``a``, ``b``,
``f`` (agents) and ``coordinator``, and the default policy limits (a sender with 1,000 refused envelopes
within 60 s is suspended) with a rule ``a -> b`` ``event``. Processes, as in bench/mediated.py:
``python -m trustbus coordinator run``; agent B ``python -m trustbus agent run bench._mediated_sink:Sink``
(records each envelope's latency in its handler, after verification); agent A
``python -m bench._mediated_procs tb-send`` (a ``bus.Bus`` sending ``--rate`` signed envelopes a second
for ``--seconds``, paced on absolute deadlines); the flooder ``python -m bench._flood_procs`` (agent F:
``--flood`` envelopes whose signatures do not hold, built beforehand, published to its own outbox with
core NATS publishes as fast as one process can).

Two phases in one run, after an unmeasured warm-up of A:

1. **unflooded**: A alone. ``valid_p99_ms_unflooded``.
2. **flooded**: F starts, and A starts with it, at the same pace. ``valid_p99_ms``: A's p99 while the
   coordinator works through F's backlog (its forged envelopes are refused, recorded in aggregate,
   and, past the threshold, refused unverified as ``suspended``). The bench then waits until every
   stored forged envelope is listed by a rejection summary.

Latency: A's ``time.time_ns()`` before it builds and signs an envelope, to B's on receipt; p50/p99 of
every message of the phase but the first ``--warmup`` seconds. Target on 2 cores: ``valid_p99_ms <= 5 x
valid_p99_ms_unflooded``.

Bytes, counted from the stored messages of the flooded phase (read back from the stream), each message
counted as subject + header block + body (the store adds a few dozen bytes of its own per message):

- ``bytes_per_rejected``: what recording the rejections added to the stream, per rejected envelope: the
  total size of the rejection records (``tb.<T>.quarantine``) stored during the flooded phase divided by
  the forged envelopes they list. It does **not** include the forged envelope itself: the server stores
  it in F's outbox before anyone can judge it, whatever the coordinator does. Target: <= 100.
- ``bytes_per_forged_envelope``: the stored size of one forged envelope itself, that part.
- ``stream_bytes_per_rejected``: the growth of the stream's own byte count over the flooded phase, less
  that of the unflooded phase (A's same traffic), per rejected envelope: everything, store overhead and the
  forged envelope included.

Also reported: ``valid_p99_ms_after_flood_published``, A's p99 over the envelopes it sent after F's last
publish was flushed (the coordinator still working through F's backlog, the server no longer taking it in),
and how many A sent while F was publishing; the flood's publish rate and how many were stored, refused by
reason, how long the coordinator took to record them all, and the 1-minute load average before and after (other work on
the machine moves every figure). ``--json``: the last line of stdout is one JSON object with every
figure; the table goes to stderr. Every process is stopped on success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import finish, percentiles, run_bench, stopped, supervisor, wait_for_record
from bench._records import OUT_ENV
from bench.mediated import READY_TIMEOUT_S, SENDER_SLACK_S, provision_tenant
from trustbus import bus
from trustbus._supervisor import Process
from trustbus.agents._intake import sender_consumer
from trustbus.bus._rejections import RejectionSummary, decode_rejection_summary
from trustbus.ledger._bundle import read_stream

TENANT = "flood"
SINK = "bench._mediated_sink:Sink"
P99_RATIO_TARGET = 5.0
BYTES_TARGET = 100.0
RECORD_TIMEOUT_S = 300.0

POLICY = """\
version: 1
limits:
  budget_per_correlation: 100000000
rules:
  - from: a
    to: [b]
    kinds: [event]
"""


def stored_size(subject: str, headers: dict[str, str], body: bytes) -> int:
    """Subject + header block (``NATS/1.0`` line, one line per header, blank line) + body."""
    block = 12 + sum(len(k) + len(v) + 4 for k, v in headers.items()) if headers else 0
    return len(subject) + block + len(body)


class FloodBench:
    def __init__(self, args: argparse.Namespace, work: Path, url: str) -> None:
        self.args = args
        self.url = url
        self.keys_dir = work / "keys"
        self.out_dir = work / "out"
        self.out_dir.mkdir()
        env = {**os.environ, OUT_ENV: str(self.out_dir), "TRUSTBUS_LOG": "warning", "PYTHONUNBUFFERED": "1"}
        self.children = supervisor(work, env, lambda fields: None)
        self.policy = work / "policy.yaml"
        self.servers: list[Process] = []
        self._phases = 0

    def start(self) -> None:
        keys = bus.KeyDirectory(self.keys_dir)
        holders = [("a", "agent"), ("b", "agent"), ("f", "agent"), ("coordinator", "coordinator")]
        asyncio.run(provision_tenant(self.url, TENANT, keys, holders))
        self.policy.write_text(POLICY)
        common = ["--server", self.url, "--keys", str(self.keys_dir), "--tenant", TENANT]
        py = [sys.executable, "-m"]
        coordinator = self.children.start(
            "coordinator", [*py, "trustbus", "coordinator", "run", "--policy", str(self.policy), *common]
        )
        sink = self.children.start("b", [*py, "trustbus", "agent", "run", SINK, "--id", "b", *common])
        self.servers = [coordinator, sink]
        for process in self.servers:
            process.wait_ready(READY_TIMEOUT_S)

    def sender(self, n: int) -> tuple[str, Process]:
        self._phases += 1
        name = f"phase-{self._phases}"
        args = ["--url", self.url, "--phase", name, "--n", str(n), "--rate", str(self.args.rate)]
        args += ["--payload", str(self.args.payload), "--tenant", TENANT, "--keys", str(self.keys_dir)]
        return name, self.children.start(f"{name}-a", [sys.executable, "-m", "bench._mediated_procs", "tb-send", *args])

    def finish(self, name: str, sender: Process, n: int) -> list[tuple[int, float]]:
        """Wait for A to finish and B to have every message; A's (send time ns, latency ms) past the warm-up."""
        finish(sender, n / self.args.rate + SENDER_SLACK_S, watch=self.servers)
        record = wait_for_record(
            self.out_dir / f"{name}.json",
            RECORD_TIMEOUT_S,
            watch=self.servers,
            late=f"{name}: the sink did not see all {n} messages in time",
        )
        first = round(self.args.rate * self.args.warmup)
        return [
            (s, (r - s) / 1e6)
            for i, s, r in zip(record["index"], record["sent_ns"], record["received_ns"], strict=True)
            if i >= first
        ]


async def stream_state(url: str, tenant: str = TENANT) -> tuple[int, int]:
    """(last sequence, bytes) of the tenant stream."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream().stream_info(bus.subjects.stream_name(tenant))
        return info.state.last_seq, info.state.bytes
    finally:
        await nc.close()


async def wait_recorded(url: str, from_seq: int) -> tuple[dict[str, Any], float]:
    """Wait until the coordinator has settled every forged envelope, then read the stream from ``from_seq`` until
    each is listed by a summary: the counts, and when the coordinator was done."""
    outbox = bus.subjects.outbox(TENANT, "f", 0)
    quarantine = bus.subjects.quarantine(TENANT)
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        while time.monotonic() < deadline:  # until the coordinator's consumer of F has nothing left (cheap to ask)
            info = await js.consumer_info(bus.subjects.stream_name(TENANT), sender_consumer(0, "f"))
            if not info.num_pending and not info.num_ack_pending:
                break
            await asyncio.sleep(0.2)  # pacing between asks; no event says "all recorded"
        done_at = time.monotonic()
        while True:
            messages = await read_stream(bus.TenantStream(js, TENANT), from_seq=from_seq)
            forged = [m for m in messages if m.subject == outbox]
            listed: dict[int, str] = {}
            record_bytes = 0
            for m in messages:
                if m.subject != quarantine:
                    continue
                record_bytes += stored_size(m.subject, m.headers, m.body)
                try:
                    summary: RejectionSummary = decode_rejection_summary(bus.decode_envelope(m.body).payload)
                except Exception:  # a single quarantine record, not a summary
                    continue
                listed.update({seq: reason for seq, _, reason, _, _ in summary.rejected()})
            refused = {m.seq for m in forged} & set(listed)
            if len(refused) == len(forged) or time.monotonic() > deadline:
                reasons: dict[str, int] = {}
                for seq in refused:
                    reasons[listed[seq]] = reasons.get(listed[seq], 0) + 1
                return {
                    "stored": len(forged),
                    "rejected": len(refused),
                    "by_reason": reasons,
                    "record_bytes": record_bytes,
                    "forged_bytes": sum(stored_size(m.subject, m.headers, m.body) for m in forged),
                }, done_at
            await asyncio.sleep(0.5)  # a summary stored after the consumer's last ack: read again
    finally:
        await nc.close()


def p99(latencies: list[float]) -> float:
    return percentiles(latencies, 99)[0]


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    n = round(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        server = bus.EmbeddedServer(port=0)
        url = server.start()
        bench = FloodBench(args, Path(tmp), url)
        try:
            with stopped(bench.children, server, stderr):
                bench.start()
                stderr.print("warm-up")
                name, sender = bench.sender(round(args.rate))
                bench.finish(name, sender, round(args.rate))
                stderr.print(f"unflooded: {n} envelopes at {args.rate:g}/s")
                _, first_bytes = asyncio.run(stream_state(url))
                name, sender = bench.sender(n)
                quiet = bench.finish(name, sender, n)
                mid_seq, mid_bytes = asyncio.run(stream_state(url))
                stderr.print(f"flooded: {args.flood} forged envelopes, and {n} valid at {args.rate:g}/s")
                flooder = bench.children.start(
                    "flooder",
                    [
                        *(sys.executable, "-m", "bench._flood_procs", "--url", url, "--tenant", TENANT),
                        *("--keys", str(bench.keys_dir), "--n", str(args.flood), "--payload", str(args.flood_payload)),
                    ],
                )
                flood_started = time.monotonic()
                name, sender = bench.sender(n)
                flooded = bench.finish(name, sender, n)
                finish(flooder, RECORD_TIMEOUT_S, watch=bench.servers)
                stderr.print("waiting for every forged envelope to be recorded")
                counts, recorded_at = asyncio.run(wait_recorded(url, mid_seq + 1))
                _, end_bytes = asyncio.run(stream_state(url))
        finally:
            server.stop()
    flood_line = flooder.last_line or {}
    rejected = max(counts["rejected"], 1)
    published_ns = int(flood_line.get("end_ns", 0))
    flooded_ms = [ms for _, ms in flooded]
    quiet_ms = [ms for _, ms in quiet]
    after_ms = [ms for sent, ms in flooded if sent > published_ns]  # the backlog being worked, the firehose over
    result = {
        "valid_p99_ms": round(p99(flooded_ms), 3),
        "valid_p99_ms_unflooded": round(p99(quiet_ms), 3),
        "valid_p50_ms": round(statistics.median(flooded_ms), 3),
        "valid_p50_ms_unflooded": round(statistics.median(quiet_ms), 3),
        "valid_max_ms": round(max(flooded_ms), 3),
        "valid_p99_ms_after_flood_published": round(p99(after_ms), 3) if len(after_ms) >= 100 else None,
        "valid_sent_while_flood_published": len(flooded_ms) - len(after_ms),
        "bytes_per_rejected": round(counts["record_bytes"] / rejected, 1),
        "bytes_per_forged_envelope": round(counts["forged_bytes"] / max(counts["stored"], 1), 1),
        "stream_bytes_per_rejected": round(((end_bytes - mid_bytes) - (mid_bytes - first_bytes)) / rejected, 1),
        "flood_sent": args.flood,
        "flood_stored": counts["stored"],
        "flood_publish_per_s": round(args.flood / flood_line["seconds"]) if flood_line.get("seconds") else None,
        "rejected": counts["rejected"],
        "rejected_by_reason": counts["by_reason"],
        "seconds_to_record_flood": round(recorded_at - flood_started, 2),
        "valid_messages": n,
        "rate": args.rate,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    result["p99_ratio"] = round(result["valid_p99_ms"] / max(result["valid_p99_ms_unflooded"], 1e-9), 2)
    result["targets_met"] = result["p99_ratio"] <= P99_RATIO_TARGET and result["bytes_per_rejected"] <= BYTES_TARGET
    return result


def report_table(result: dict[str, Any]) -> Table:
    table = Table(title="flood: a valid sender's latency while another floods forged envelopes")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="valid envelopes a second from A (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase (default 10)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of each phase left out (default 0.5)")
    parser.add_argument("--flood", type=int, default=50_000, help="forged envelopes F publishes (default 50000)")
    parser.add_argument("--payload", type=int, default=256, help="A's payload bytes (default 256)")
    parser.add_argument("--flood-payload", type=int, default=128, help="F's payload bytes (default 128)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    args = parser.parse_args()
    if args.rate * (args.seconds - args.warmup) < 100 or args.flood < 1:
        parser.error("--rate x (--seconds - --warmup) must leave at least 100 measured messages; --flood >= 1")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
