"""Transport benchmark: trustbus (signed envelopes) against raw nats-py JetStream, on one embedded server.

Run: ``python bench/transport.py [--n N] [--payload BYTES] [--rounds R] [--json]``.

What is measured, all in one process against one ``bus.EmbeddedServer(port=0)``
(temporary store dir), after an unmeasured warm-up of 500 messages per path, in
``--rounds`` rounds (default 5) that each run both paths back to back, alternating
which goes first, every phase with its own stream, tenant and consumer names:

1. **raw**: unsigned nats-py JetStream. A file-storage stream of its own with the
   trustbus stream's ``duplicate_window``; one connection publishes N messages of
   ``--payload`` bytes with ``js.publish_async`` (at most 1,024 awaiting their ack,
   each carrying a ``Nats-Msg-Id``; the ack futures are bounded with ``wait_for``),
   while another connection consumes them from a durable pull consumer
   (``fetch(batch=256)``, ``ack()`` each).
2. **trustbus**: a provisioned tenant with the publisher's and the reader's keys in
   its keyring. One ``Bus`` builds an envelope per message (payload of the same
   size), seals it and publishes it to its outbox with ``publish_pipelined``, then
   calls ``flush``; another ``Bus`` consumes the outbox through ``ensure_consumer``
   + ``consume`` (batch 256, max_ack_pending 4,096, which also configures the
   consumer), acking each verified delivery.

In both, publisher and consumer run concurrently as two tasks, and the throughput
is end-to-end: N / (first publish to last ack). Latency is per message, from just
before the publish (raw; keyed by ``Nats-Msg-Id``) or just before ``seal``
(trustbus; keyed by envelope id) to its delivery to the consumer loop, as p50/p99.
The publisher is not paced, so under this full load the latency is mostly the
backlog queued ahead of the consumer. Each figure is the median over the rounds;
``ratio`` is the median of the per-round trustbus/raw ratios, so load from other
processes on the machine hits both sides of each ratio alike.

3. **verify**: in-process, no server: PyNaCl ``VerifyKey.verify`` of a signature over
   ``--payload`` random bytes against ``bus.open_envelope`` of a sealed envelope with
   a payload of that size, best of 15 interleaved runs of 1,000 calls each (short runs, many
   repeats: the best run is the one least disturbed by other load on the machine).

Targets: ``ratio`` = trustbus / raw msgs/s >= 0.6, ``verify_ratio`` = open/s / verify/s >= 0.9.
With ``--json`` the last line of stdout is one JSON object with every figure; the
human table then goes to stderr along with the progress display.
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
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, StorageType, StreamConfig
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from bench._harness import percentiles_ms, progress_bars, run_bench, verdict
from trustbus import bus

WARMUP_N = 500
MAX_PENDING = 1024  # publishes awaiting their ack at once: Bus.connect's default max_in_flight
SETTINGS = bus.ConsumerSettings(batch=256, max_ack_pending=4096)
ACK_TIMEOUT_S = 30.0
VERIFY_ITERATIONS = 1_000
VERIFY_REPEATS = 15
RATIO_TARGET = 0.6
VERIFY_RATIO_TARGET = 0.9
PROGRESS_STEP = 1_000
MSG_ID = Header.MSG_ID.value
DUPLICATE_WINDOW_S = bus.tenant_stream_config("bench", admin_key_id="").duplicate_window


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """One measured phase: end-to-end throughput and delivery latency percentiles."""

    msgs_per_s: float
    p50_ms: float
    p99_ms: float


class Clock:
    """Send times per message key, delivery latencies, and the span from first publish to last ack."""

    def __init__(self, n: int, progress: Progress, task: TaskID) -> None:
        self.n = n
        self._progress = progress
        self._task = task
        self._sent_ns: dict[str, int] = {}
        self._latencies_ns: list[int] = []
        self._start_ns: int | None = None
        self._end_ns: int | None = None
        self.acked = 0

    @property
    def done(self) -> bool:
        return self.acked >= self.n

    def sent(self, key: str) -> None:
        now = time.perf_counter_ns()
        if self._start_ns is None:
            self._start_ns = now
        self._sent_ns[key] = now

    def delivered(self, key: str) -> bool:
        """Record the latency of ``key``'s first delivery; False for a redelivery."""
        start = self._sent_ns.pop(key, None)
        if start is None:
            return False
        self._latencies_ns.append(time.perf_counter_ns() - start)
        return True

    def ack_done(self) -> None:
        self.acked += 1
        if self.done:
            self._end_ns = time.perf_counter_ns()
        if self.done or self.acked % PROGRESS_STEP == 0:
            self._progress.update(self._task, completed=self.acked)

    def result(self) -> PhaseResult:
        assert self._start_ns is not None and self._end_ns is not None
        p50_ms, p99_ms = percentiles_ms(self._latencies_ns)
        return PhaseResult(msgs_per_s=self.n / ((self._end_ns - self._start_ns) / 1e9), p50_ms=p50_ms, p99_ms=p99_ms)


def phase_timeout_s(n: int) -> float:
    return 60.0 + n / 200


def median_result(results: list[PhaseResult]) -> PhaseResult:
    return PhaseResult(
        msgs_per_s=statistics.median(r.msgs_per_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
    )


# -- raw nats-py JetStream -------------------------------------------------------


@contextlib.asynccontextmanager
async def connection(url: str, name: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url, name=name)
    try:
        yield nc
    finally:
        await nc.close()


async def create_raw_stream(js: JetStreamContext, stream: str, subject: str, durable: str) -> None:
    await js.add_stream(
        StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S)
    )
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=SETTINGS.max_ack_pending,
            max_deliver=SETTINGS.max_deliver,
            ack_wait=SETTINGS.ack_wait_s,
        ),
    )


async def raw_publish(js: JetStreamContext, subject: str, tag: str, payload: bytes, clock: Clock) -> None:
    futures = []
    for i in range(clock.n):
        msg_id = f"{tag}-{i}"
        clock.sent(msg_id)
        futures.append(await js.publish_async(subject, payload, wait_stall=ACK_TIMEOUT_S, headers={MSG_ID: msg_id}))
    acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), ACK_TIMEOUT_S)
    failures = [a for a in acks if isinstance(a, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} raw publishes failed, first: {failures[0]!r}")


async def raw_consume(js: JetStreamContext, stream: str, durable: str, clock: Clock) -> None:
    sub = await js.pull_subscribe_bind(durable, stream=stream)
    try:
        while not clock.done:
            try:
                msgs = await sub.fetch(SETTINGS.batch, timeout=SETTINGS.fetch_timeout_s)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                fresh = clock.delivered((msg.headers or {})[MSG_ID])
                await msg.ack()
                if fresh:
                    clock.ack_done()
    finally:
        await sub.unsubscribe()


async def run_raw(url: str, tag: str, payload: bytes, clock: Clock) -> None:
    stream, subject, durable = f"RAW_{tag}", f"raw.{tag}.>", f"raw-{tag}"
    async with connection(url, "bench-raw-admin") as admin:
        await create_raw_stream(admin.jetstream(), stream, subject, durable)
    async with connection(url, "bench-raw-pub") as pub, connection(url, "bench-raw-sub") as sub:
        publisher = raw_publish(
            pub.jetstream(publish_async_max_pending=MAX_PENDING), f"raw.{tag}.data", tag, payload, clock
        )
        consumer = raw_consume(sub.jetstream(), stream, durable, clock)
        await asyncio.wait_for(asyncio.gather(publisher, consumer), phase_timeout_s(clock.n))


# -- trustbus ---------------------------------------------------------------------


async def provision_tenant(url: str, tenant: str, members: dict[str, bus.Identity]) -> None:
    """Provision ``tenant`` and grant each member's key (valid from a second ago)."""
    admin = bus.Identity.generate()
    async with connection(url, "bench-tb-admin") as nc:
        js = nc.jetstream()
        await bus.provision(js, tenant, admin_key_id=admin.key_id)
        async with await bus.KeyringStore.open(js, tenant, follow=False) as keyring:
            valid_from = time.time_ns() - 1_000_000_000
            for owner, identity in members.items():
                await keyring.grant(admin, key_id=identity.key_id, owner=owner, role="agent", valid_from=valid_from)


async def tb_publish(bus_a: bus.Bus, subject: str, payload: bytes, clock: Clock) -> None:
    for _ in range(clock.n):
        envelope = bus.new_envelope(
            tenant=bus_a.tenant,
            kind="event",
            sender=bus_a.name,
            to=("reader",),
            payload=payload,
            content_type="application/msgpack",
        )
        clock.sent(envelope.id)
        await bus_a.publish_pipelined(subject, bus_a.seal(envelope))
    await bus_a.flush(timeout_s=ACK_TIMEOUT_S)


async def tb_consume(bus_b: bus.Bus, durable: str, clock: Clock) -> None:
    deliveries = bus_b.consume(durable, settings=SETTINGS)  # an async generator, typed as AsyncIterator
    async with contextlib.aclosing(deliveries):  # type: ignore[type-var]
        async for delivery in deliveries:
            fresh = clock.delivered(delivery.envelope.id)
            await delivery.ack()
            if fresh:
                clock.ack_done()
            if clock.done:
                return


async def run_trustbus(url: str, tag: str, payload: bytes, clock: Clock) -> None:
    tenant, durable = f"bench-{tag}", f"bench-{tag}"
    alice, reader = bus.Identity.generate(), bus.Identity.generate()
    await provision_tenant(url, tenant, {"alice": alice, "reader": reader})
    subject = bus.subjects.outbox(tenant, "alice", 0)
    async with (
        await bus.Bus.connect(url, tenant=tenant, name="alice", identity=alice, max_in_flight=MAX_PENDING) as bus_a,
        await bus.Bus.connect(url, tenant=tenant, name="reader", identity=reader) as bus_b,
    ):
        await bus_b.ensure_consumer(durable, subject, settings=SETTINGS)
        publisher = tb_publish(bus_a, subject, payload, clock)
        consumer = tb_consume(bus_b, durable, clock)
        await asyncio.wait_for(asyncio.gather(publisher, consumer), phase_timeout_s(clock.n))


# -- signature verification, in process ------------------------------------------


def best_rates(calls: list[Callable[[], object]]) -> list[float]:
    """Calls per second of each of ``calls``: best of the interleaved repeats."""
    best = [0.0] * len(calls)
    for _ in range(VERIFY_REPEATS):
        for index, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(VERIFY_ITERATIONS):
                call()
            best[index] = max(best[index], VERIFY_ITERATIONS / (time.perf_counter() - start))
    return best


def verify_rates(payload_bytes: int) -> tuple[float, float]:
    """(raw Ed25519 verifies/s over ``payload_bytes``, open_envelope/s of an envelope with that payload)."""
    signing_key = SigningKey.generate()
    message = os.urandom(payload_bytes)
    signature = signing_key.sign(message).signature
    verify_key = signing_key.verify_key

    admin, alice = bus.Identity.generate(), bus.Identity.generate()
    keyring = bus.Keyring(tenant="bench", admin_key_id=admin.key_id)
    grant = bus.KeyGrant(tenant="bench", key_id=alice.key_id, owner="alice", role="agent", valid_from=0)
    keyring.add(alice.key_id, bus.sign_grant(grant, admin))
    envelope = bus.new_envelope(
        tenant="bench",
        kind="event",
        sender="alice",
        to=("reader",),
        payload=os.urandom(payload_bytes),
        content_type="application/msgpack",
    )
    sealed = bus.seal(envelope, alice)
    bus.open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=envelope.ts)  # must not raise

    raw_rate, open_rate = best_rates(
        [
            lambda: verify_key.verify(message, signature),
            lambda: bus.open_envelope(sealed.body, sealed.headers, keyring=keyring, received_ns=envelope.ts),
        ]
    )
    return raw_rate, open_rate


# -- orchestration and report -----------------------------------------------------


Runner = Callable[[str, str, bytes, Clock], Awaitable[None]]
RUNNERS: dict[str, Runner] = {"raw": run_raw, "trustbus": run_trustbus}


async def transport_phases(
    url: str, n: int, rounds: int, payload: bytes, progress: Progress
) -> dict[str, list[PhaseResult]]:
    """Warm up both paths, then measure both in each round, alternating the order; fresh names in every phase."""

    def clock(label: str, count: int) -> Clock:
        return Clock(count, progress, progress.add_task(label, total=count))

    for name, runner in RUNNERS.items():
        await runner(url, "warm", payload, clock(f"{name} warm-up", WARMUP_N))
    results: dict[str, list[PhaseResult]] = {name: [] for name in RUNNERS}
    for round_no in range(rounds):
        order = list(RUNNERS) if round_no % 2 == 0 else list(reversed(RUNNERS))
        for name in order:
            phase = clock(f"{name} {round_no + 1}/{rounds}", n)
            await RUNNERS[name](url, f"r{round_no}", payload, phase)
            results[name].append(phase.result())
    return results


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    n, rounds, payload_bytes = args.n, args.rounds, args.payload
    payload = os.urandom(payload_bytes)
    progress = progress_bars(stderr, 17)
    with progress:
        with bus.EmbeddedServer(port=0) as server:
            results = asyncio.run(transport_phases(server.url, n, rounds, payload, progress))
        verify_task = progress.add_task("verify / open()", total=None)
        raw_verify, open_rate = verify_rates(payload_bytes)
        progress.update(verify_task, total=1, completed=1)
    raw, trustbus = median_result(results["raw"]), median_result(results["trustbus"])
    round_ratios = [t.msgs_per_s / r.msgs_per_s for r, t in zip(results["raw"], results["trustbus"], strict=True)]
    ratio = statistics.median(round_ratios)
    verify_ratio = open_rate / raw_verify
    return {
        "n": n,
        "rounds": rounds,
        "payload_bytes": payload_bytes,
        "raw_msgs_per_s": round(raw.msgs_per_s, 1),
        "trustbus_msgs_per_s": round(trustbus.msgs_per_s, 1),
        "ratio": round(ratio, 4),
        "round_ratios": [round(r, 4) for r in round_ratios],
        "p50_ms": round(trustbus.p50_ms, 3),
        "p99_ms": round(trustbus.p99_ms, 3),
        "raw_p50_ms": round(raw.p50_ms, 3),
        "raw_p99_ms": round(raw.p99_ms, 3),
        "raw_verify_per_s": round(raw_verify, 1),
        "open_per_s": round(open_rate, 1),
        "verify_ratio": round(verify_ratio, 4),
        "ratio_pass": ratio >= RATIO_TARGET,
        "verify_ratio_pass": verify_ratio >= VERIFY_RATIO_TARGET,
    }


def report_table(r: dict[str, Any]) -> Table:
    table = Table(
        title=f"trustbus transport: n={r['n']} x {r['rounds']} rounds, payload={r['payload_bytes']} B",
        caption=f"medians over rounds; per-round ratios {r['round_ratios']}",
    )
    for column in ("metric", "raw", "trustbus", "ratio", "target"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row(
        "msgs/s (end to end)",
        f"{r['raw_msgs_per_s']:,.0f}",
        f"{r['trustbus_msgs_per_s']:,.0f}",
        f"{r['ratio']:.3f}",
        f">= {RATIO_TARGET} {verdict(r['ratio_pass'])}",
    )
    table.add_row("latency p50 (ms)", f"{r['raw_p50_ms']:.2f}", f"{r['p50_ms']:.2f}", "", "")
    table.add_row("latency p99 (ms)", f"{r['raw_p99_ms']:.2f}", f"{r['p99_ms']:.2f}", "", "")
    table.add_row(
        "verify/s vs open()/s",
        f"{r['raw_verify_per_s']:,.0f}",
        f"{r['open_per_s']:,.0f}",
        f"{r['verify_ratio']:.3f}",
        f">= {VERIFY_RATIO_TARGET} {verdict(r['verify_ratio_pass'])}",
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per measured phase (default 20000)")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes per message (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both paths; medians reported (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last on stdout")
    args = parser.parse_args()
    if args.n < 100 or args.payload < 0 or args.rounds < 1:
        parser.error("--n must be at least 100, --payload non-negative, --rounds at least 1")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
