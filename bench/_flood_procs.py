"""The flooder of bench/flood.py: ``python -m bench._flood_procs --url URL --tenant T --keys DIR --n N``.

Connects as agent ``f`` (its own key, so the server would let it publish to its outbox) and publishes
``--n`` envelopes to ``tb.<T>.out.f.0`` whose signatures do not hold (each a fresh envelope, signed
headers copied from another one: ``bad_signature``), as fast as one process can: core NATS publishes,
built beforehand, no ``Nats-Msg-Id`` (so none is dropped as a duplicate). Prints one JSON line:
``{"flooded": N, "seconds": S, "start_ns": T0, "end_ns": T1, "bytes": B}`` (B: the bodies' total size; T0, T1:
the wall clock when the first publish started and the last was flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import nats

from trustbus import bus
from trustbus.bus._seal import HEADER_MSG_ID

FLOODER = "f"


async def flood(args: argparse.Namespace) -> None:
    identity = bus.KeyDirectory(Path(args.keys)).load(args.tenant, FLOODER)
    template = bus.seal(
        bus.new_envelope(tenant=args.tenant, kind="event", sender=FLOODER, to=("b",), payload=b"{}"), identity
    )
    headers = {k: v for k, v in template.headers.items() if k != HEADER_MSG_ID}
    outbox = bus.subjects.outbox(args.tenant, FLOODER, 0)
    filler = b'{"x":"' + b"x" * max(0, args.payload - 8) + b'"}'
    bodies = [
        bus.encode_envelope(
            bus.new_envelope(tenant=args.tenant, kind="event", sender=FLOODER, to=("b",), payload=filler)
        )
        for _ in range(args.n)
    ]
    nc = await nats.connect(args.url, name="bench-flooder", connect_timeout=5)
    try:
        start, start_ns = time.perf_counter(), time.time_ns()
        for body in bodies:
            await nc.publish(outbox, body, headers=headers)
        await nc.flush(timeout=60)
        seconds, end_ns = time.perf_counter() - start, time.time_ns()
    finally:
        await nc.close()
    summary = {"flooded": args.n, "seconds": seconds, "start_ns": start_ns, "end_ns": end_ns}
    sys.stdout.write(json.dumps({**summary, "bytes": sum(map(len, bodies))}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--payload", type=int, default=128)
    asyncio.run(flood(parser.parse_args()))


if __name__ == "__main__":
    main()
