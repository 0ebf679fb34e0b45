"""The processes of bench/mediated.py: senders (agent A), the raw relay and sink, and the sinks' recorder.

Every role is its own process, started from the repository root by the bench:

- ``python -m trustbus agent run bench._mediated_sink:Sink --id b ...``: trustbus agent B;
- ``python -m bench._mediated_procs tb-send ...``: trustbus agent A, a ``bus.Bus`` publishing sealed
  envelopes to its outbox;
- ``python -m bench._mediated_procs raw-send|raw-relay|raw-sink ...``: the same topology in plain
  nats-py JetStream, unsigned, with the relay standing in for the coordinator (its fetch batch and
  timeout are given by the bench: the coordinator's and the agent runtime's). The relay works as the
  coordinator does, a fetched batch at a time: it publishes every copy of the batch before awaiting any
  of their acks (``publish_async``, gathered), then acks each message whose copy is stored.

Nothing here imports ``agents``: A and the raw processes depend only on ``bus`` and nats-py. The payloads
and the sinks' recorder are bench/_records.py's. Long-running roles print one JSON ready line on stdout
when serving, JSON progress lines while receiving, and exit on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header

from bench._records import OUT_ENV, Pacer, Recorder, emit, make_payload
from trustbus import bus

MSG_ID = Header.MSG_ID.value
FLUSH_TIMEOUT_S = 60.0
RELAY_TIMEOUT_S = 5.0  # for the relay's copies of one batch to be stored

RAW_STREAM = "RAW"
RAW_SUBJECTS = "raw.>"
RAW_OUT = "raw.out.a"
RAW_IN = "raw.in.b"
RAW_RELAY_DURABLE = "relay"
RAW_SINK_DURABLE = "sink-b"
RAW_MAX_PENDING = 1024  # publishes awaiting their ack at once: Bus.connect's default max_in_flight


# -- agent A: trustbus and raw senders ---------------------------------------------


def summary(args: argparse.Namespace, pacer: Pacer, first_ns: int, last_ns: int, cpu_s: float) -> None:
    """The sender's report: its CPU seconds count from its first send to its last ack (not its start-up)."""
    emit(sent=args.n, first_ns=first_ns, last_ns=last_ns, max_lag_ms=round(pacer.max_lag_s * 1e3, 3), cpu_s=cpu_s)


SEND_ATTRIBUTES = {"messaging.system": "nats", "messaging.operation.type": "send"}


async def tb_send(args: argparse.Namespace) -> None:
    bus.configure_tracing("bench a")  # on only if OTEL_* asks (bench/mediated.py --telemetry)
    keys = bus.KeyDirectory(Path(args.keys))
    identity = keys.load(args.tenant, "a")
    async with await bus.Bus.connect(args.url, tenant=args.tenant, name="a", identity=identity) as bus_a:
        pacer = Pacer(args.rate)
        cpu_start = time.process_time()
        first_ns = 0
        correlation: str | None = None
        for i in range(args.n):
            await pacer.wait(i)
            now = time.time_ns()
            first_ns = first_ns or now
            with bus.traced("send event", SEND_ATTRIBUTES):  # off (no OTEL_* set): a null context
                envelope = bus.new_envelope(
                    tenant=args.tenant,
                    kind="event",
                    sender="a",
                    to=("b",),
                    payload=make_payload(args.phase, i, args.n, now, args.payload),
                    content_type="application/json",
                    trace=bus.current_trace(),
                    correlation_id=correlation if i % args.per_correlation else None,
                )
                correlation = envelope.correlation_id
                await bus_a.publish_pipelined(bus_a.outbox(envelope), bus_a.seal(envelope))
        last_ns = time.time_ns()
        await bus_a.flush(timeout_s=FLUSH_TIMEOUT_S)
        cpu_s = time.process_time() - cpu_start
    summary(args, pacer, first_ns, last_ns, cpu_s)


async def raw_send(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url, name="bench-raw-a", connect_timeout=5)
    try:
        js = nc.jetstream(publish_async_max_pending=RAW_MAX_PENDING)
        pacer = Pacer(args.rate)
        cpu_start = time.process_time()
        first_ns = 0
        futures = []
        for i in range(args.n):
            await pacer.wait(i)
            now = time.time_ns()
            first_ns = first_ns or now
            data = make_payload(args.phase, i, args.n, now, args.payload)
            futures.append(
                await js.publish_async(RAW_OUT, data, wait_stall=FLUSH_TIMEOUT_S, headers={MSG_ID: f"{args.phase}-{i}"})
            )
        last_ns = time.time_ns()
        acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), FLUSH_TIMEOUT_S)
        failures = [a for a in acks if isinstance(a, BaseException)]
        if failures:
            raise RuntimeError(f"{len(failures)} raw publishes failed, first: {failures[0]!r}")
        cpu_s = time.process_time() - cpu_start
    finally:
        await nc.close()
    summary(args, pacer, first_ns, last_ns, cpu_s)


# -- the raw coordinator stand-in and agent B ----------------------------------------


async def relay_batch(js: JetStreamContext, msgs: list[Msg]) -> None:
    """Republish a fetched batch pipelined (every publish sent before any ack is awaited), then ack each message
    whose copy is stored and nak the others: what the coordinator does with a batch, less the checks."""
    published = [
        await js.publish_async(RAW_IN, msg.data, wait_stall=RELAY_TIMEOUT_S, headers={MSG_ID: relay_id(msg)})
        for msg in msgs
    ]
    stored = await asyncio.wait_for(asyncio.gather(*published, return_exceptions=True), RELAY_TIMEOUT_S)
    for msg, ack in zip(msgs, stored, strict=True):
        await (msg.nak() if isinstance(ack, BaseException) else msg.ack())


def relay_id(msg: Msg) -> str:
    """The copy's ``Nats-Msg-Id``: a redelivered message is stored once in B's inbox, as a forward is."""
    return f"{(msg.headers or {}).get(MSG_ID, '')}:b"


async def raw_serve(args: argparse.Namespace) -> None:
    """The relay (fetch a batch like the coordinator, republish it pipelined, ack what is stored) or the sink
    (fetch, record, ack)."""
    relay = args.role == "raw-relay"
    durable = RAW_RELAY_DURABLE if relay else RAW_SINK_DURABLE
    recorder = None if relay else Recorder(Path(os.environ[OUT_ENV]))
    stop = bus.stop_on_signals()
    nc = await nats.connect(args.url, name=f"bench-{args.role}", connect_timeout=5)
    try:
        js = nc.jetstream(publish_async_max_pending=RAW_MAX_PENDING)
        sub = await js.pull_subscribe_bind(durable, stream=RAW_STREAM)
        emit(ready=args.role)
        while not stop.is_set():
            try:
                msgs: list[Msg] = await sub.fetch(args.batch, timeout=args.fetch_timeout)
            except TimeoutError:  # nats-py's own subclass or asyncio's
                continue
            if recorder is not None:
                for msg in msgs:
                    recorder.record(msg.data, time.time_ns())
                    await msg.ack()
            else:
                await relay_batch(js, msgs)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error):
            await nc.drain()
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["tb-send", "raw-send", "raw-relay", "raw-sink"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", default="")
    parser.add_argument("--keys", default="")
    parser.add_argument("--phase", default="")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="msgs/s; 0 sends as fast as possible")
    parser.add_argument("--payload", type=int, default=256)
    parser.add_argument("--per-correlation", type=int, default=1, help="tb-send: envelopes per correlation")
    parser.add_argument("--batch", type=int, default=64, help="messages per fetch (relay and sink)")
    parser.add_argument("--fetch-timeout", type=float, default=1.0, help="seconds one fetch waits")
    args = parser.parse_args()
    runner = {"tb-send": tb_send, "raw-send": raw_send, "raw-relay": raw_serve, "raw-sink": raw_serve}[args.role]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
