"""The processes of bench/peers.py: AutoGen's gRPC runtime host, the receiving agent B and the publishing agent A.

Run by the AutoGen venv's Python (see bench/peers.py), from the repository root, so this imports only the
standard library, AutoGen (autogen-core and autogen-ext[grpc]), bench/_records.py and ``bus.stop_on_signals``
(the lazy ``trustbus.bus`` loads nothing else for it, so none of trustbus's dependencies are needed):

- ``python -m bench._autogen_procs host --port P``: ``GrpcWorkerAgentRuntimeHost`` on 127.0.0.1:P;
- ``python -m bench._autogen_procs sink --host ADDR``: a ``GrpcWorkerAgentRuntime`` with agent type ``b``,
  subscribed to the topic type ``bench``; its handler records each message's latency on receipt;
- ``python -m bench._autogen_procs send --host ADDR --phase NAME --n N``: a ``GrpcWorkerAgentRuntime``
  publishing N messages to the topic as agent ``a`` (``publish_message``: one way, no answer), as fast as
  it can (or ``--rate`` msgs/s), then waiting until the sink has every one before it reports and exits.

Payloads and the sink's record are bench/_records.py's, as for bench/mediated.py's processes. Long-running
roles print one JSON ready line when serving and exit on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost

from bench._records import OUT_ENV, Pacer, Recorder, emit, make_payload
from trustbus.bus import stop_on_signals

TOPIC = "bench"
RECORD_TIMEOUT_S = 120.0  # for the sink to see every message a sender published
RECORD_POLL_S = 0.01


@dataclass
class Note:
    """The message: the bench's JSON payload as text."""

    body: str


class Sink(RoutedAgent):
    """Agent B: records each note's latency on receipt (see ``Recorder``)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__("bench sink")
        self.recorder = recorder

    @message_handler
    async def on_note(self, message: Note, ctx: MessageContext) -> None:
        self.recorder.record(message.body.encode(), time.time_ns())


async def worker(host: str) -> GrpcWorkerAgentRuntime:
    runtime = GrpcWorkerAgentRuntime(host_address=host)
    runtime.add_message_serializer(try_get_known_serializers_for_type(Note))
    await runtime.start()
    return runtime


async def host(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    server = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{args.port}")
    server.start()
    emit(ready="host", address=f"127.0.0.1:{args.port}")
    await stop.wait()
    await server.stop()


async def sink(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    runtime = await worker(args.host)
    recorder = Recorder(Path(os.environ[OUT_ENV]))
    await Sink.register(runtime, "b", lambda: Sink(recorder))
    await runtime.add_subscription(TypeSubscription(topic_type=TOPIC, agent_type="b"))
    emit(ready="sink")
    await stop.wait()
    await runtime.stop()


async def send(args: argparse.Namespace) -> None:
    runtime = await worker(args.host)
    topic, sender = TopicId(type=TOPIC, source="default"), AgentId("a", "default")
    record = Path(os.environ[OUT_ENV]) / f"{args.phase}.json"
    pacer = Pacer(args.rate)
    cpu_start = time.process_time()
    first_ns = 0
    for i in range(args.n):
        await pacer.wait(i)
        now = time.time_ns()
        first_ns = first_ns or now
        body = make_payload(args.phase, i, args.n, now, args.payload).decode()
        await runtime.publish_message(Note(body), topic, sender=sender)
    last_ns = time.time_ns()
    # publish_message hands each message to a task of its own: stay until the sink has them all.
    for _ in range(int(RECORD_TIMEOUT_S / RECORD_POLL_S)):  # the record announces itself by no event
        if record.exists():
            break
        await asyncio.sleep(RECORD_POLL_S)
    cpu_s = time.process_time() - cpu_start
    await runtime.stop()
    emit(sent=args.n, first_ns=first_ns, last_ns=last_ns, max_lag_ms=round(pacer.max_lag_s * 1e3, 3), cpu_s=cpu_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["host", "sink", "send"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="")
    parser.add_argument("--phase", default="")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, help="msgs/s; 0 sends as fast as possible")
    parser.add_argument("--payload", type=int, default=256)
    args = parser.parse_args()
    asyncio.run({"host": host, "sink": sink, "send": send}[args.role](args))


if __name__ == "__main__":
    main()
