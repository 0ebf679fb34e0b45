"""Tail benchmark: how fast ``bus.tail`` reads and verifies a backlog, and that it yields every message once.

Run: ``python bench/tail.py [--backlog N] [--pause-every K] [--json]``.

One ``bus.EmbeddedServer(port=0)`` (temporary store dir), one provisioned tenant.
A ``Bus`` publishes ``--backlog`` small signed envelopes (default 200,000) to its
outbox with ``publish_pipelined``; then ``tail`` reads the whole stream with a 2 s
idle timeout, the reader pausing 0.1 s every ``--pause-every`` messages (default
20,000; 0: never) as a slow pipe would. Printed: publish and tail msgs/s (tail's
excluding the pauses and the idle timeout), and how many messages tail yielded,
missed and yielded twice. With ``--json`` the last line of stdout is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import nats

from trustbus import bus

IDLE_S = 2.0
PAUSE_S = 0.1


async def measure(backlog: int, pause_every: int) -> dict[str, Any]:
    with bus.EmbeddedServer(port=0) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        admin, alice = bus.Identity.generate(), bus.Identity.generate()
        await bus.provision(js, "bench", admin_key_id=admin.key_id)
        async with await bus.KeyringStore.open(js, "bench") as keyring:
            await keyring.grant(admin, key_id=admin.key_id, owner="admin", role="admin", valid_from=time.time_ns())
            await keyring.grant(admin, key_id=alice.key_id, owner="alice", role="agent", valid_from=time.time_ns())
            async with await bus.Bus.connect(server.url, tenant="bench", name="alice", identity=alice) as sender:
                subject = bus.subjects.outbox("bench", "alice", 0)
                start = time.perf_counter()
                for i in range(backlog):
                    env = bus.new_envelope(tenant="bench", kind="event", sender="alice", to=["b"], payload=b"%d" % i)
                    await sender.publish_pipelined(subject, sender.seal(env))
                await sender.flush(timeout_s=120)
                publish_s = time.perf_counter() - start
                last = await sender.last_seq()
            seqs: list[int] = []
            paused_s = 0.0
            start = time.perf_counter()
            async for item in bus.tail(js, keyring, "bench", idle_timeout_s=IDLE_S):
                seqs.append(item.stream_seq)
                if pause_every and len(seqs) % pause_every == 0:
                    await asyncio.sleep(PAUSE_S)
                    paused_s += PAUSE_S
            tail_s = time.perf_counter() - start - paused_s - IDLE_S
        await nc.close()
    distinct = set(seqs)
    return {
        "backlog": backlog,
        "publish_msgs_per_s": round(backlog / publish_s),
        "tail_msgs_per_s": round(len(seqs) / tail_s),
        "yielded": len(seqs),
        "missed": len(set(range(1, last + 1)) - distinct),
        "duplicated": len(seqs) - len(distinct),
        "in_order": seqs == sorted(seqs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="envelopes in the backlog")
    parser.add_argument("--pause-every", type=int, default=20_000, help="pause the reader every K messages")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line of stdout")
    args = parser.parse_args()
    result = asyncio.run(measure(args.backlog, args.pause_every))
    out = sys.stderr if args.json else sys.stdout
    for key, value in result.items():
        print(f"{key:>20}: {value}", file=out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
