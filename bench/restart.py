"""Restart benchmark: how long a coordinator takes to read its decision log back, one get per record or in batches.

Run: ``python bench/restart.py [--decisions N ...] [--snapshot] [--process] [--bounded-only] [--json]``.

One ``bus.EmbeddedServer(port=0)`` (temporary store dir), one provisioned
tenant. The long log is written directly, not driven through a coordinator
(that would take hours at 100,000): a ``Bus`` connected with a key of the
``coordinator`` role signs ``N`` decision records exactly as the coordinator
does (``group_records``: accepted events from ``alice`` to ``bob``, ten per
correlation, recorded 64 to a record as the coordinator records a full group)
and appends them to partition 0's decision log in atomic batches of about 1,000
decisions (``SubjectLog.append_batch``). Then ``DecisionLog.catch_up`` reads the whole log back into a
fresh state (in this process, verifying every record as a restarting
coordinator does), once through ``Bus.log(subject)`` (one get per record, how
the coordinator read it before) and once through ``Bus.log(subject,
in_batches=True)`` (an ephemeral pull consumer, a fetch per 1,000 records, how
it reads it now). With ``--process``, a coordinator process is then started
over the same log (``python -m trustbus coordinator run``, every partition
its own) and timed from its start to its JSON ready line, which it prints once
it has caught up on its partitions' decisions. Printed for each ``N`` (default
10,000 and 100,000): seconds and decisions/s of each read, whether both folded
the same state, and the process's start to ready.

With ``--snapshot``, the state is then rebuilt as a coordinator does at start
with no snapshot (``DecisionLog.restore`` with a ``CorrelationStore`` of the
default capacity, 10,000 correlations: the whole log, storing the correlations
beyond the capacity in ``tb_state_<T>`` as it goes), a snapshot is stored
(``DecisionLog.snapshot``), ``--tail`` (1,000) more decisions are written, and a fresh
restore is timed (the snapshot, then only the tail). With ``--process`` too,
the coordinator process then starts from that snapshot, and its RSS once ready
(``/proc/<pid>/status``) is printed. ``--bounded-only`` skips both reads into
a state that keeps every decision in memory (at 1,000,000 they take minutes
and about 1 GB). With ``--json`` the last line of stdout is one JSON object
with every figure.

**Longer logs than can be signed in time** (``--distinct D`` with
``--decisions N``; the reads of ``--snapshot`` are the only ones made): signing and appending runs at about
1,000 decisions/s on 2 shared cores, so 10,000,000 would take hours. Instead D
distinct decisions are written as above (D / 10 correlations: keep it within
the cache's 10,000 so no rebuild stores any), folded into a bounded state (the
restore of a coordinator with no snapshot), and the log is then filled up to N
records with byte-identical copies of them, appended in the same atomic batches
without their ``Nats-Msg-Id`` (so the duplicate window keeps them). A copy is
a replay of a record folded before: a coordinator reading it skips it
(``DecisionLog``: "stored again"), which moves only the state's last sequence;
so the state of the distinct records with its last sequence set to the log's
end is the state folding the whole log gives, and it is stored as the
snapshot. Then ``TAIL`` fresh decisions, and the restore (and ``--process``
start) is timed as above, on a log of N + ``TAIL`` records. Printed
too: how long each write took, the stream's bytes and the server's store
directory on disk, and nats-server's RSS.
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
import json
import os
import tempfile
import time
from typing import Any

from bench.flood import stream_state
from trustbus import bus
from trustbus._supervisor import ProcessFailed, Supervisor
from trustbus.agents import parse_policy
from trustbus.agents._correlation_store import correlation_store
from trustbus.agents._decision_log import DecisionLog, group_records
from trustbus.bus import SubjectLog

TENANT = "bench"
PER_CORRELATION = 10
BATCH = 1000
GROUP = 64  # decisions per record: a full group of one sender's fetch
RULES = {"rules": [{"from": "alice", "to": ["bob"], "kinds": ["event"]}]}
POLICY = parse_policy(RULES)
READY_S = 600.0
TAIL = 1000  # decisions written after the snapshot (--tail)


def decision_about(cause: bus.Envelope, seq: int, now_ns: int) -> bus.Decision:
    """An accepted delivery of ``cause`` to bob."""
    return bus.Decision(
        envelope_id=cause.id,
        source_seq=seq,
        sender=cause.sender,
        kind=cause.kind,
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
        verdict="accept",
        reasons=(),
        deliver_to=("bob",),
        dropped=(),
        hop=cause.hop,
        declared_taint=(),
        effective_taint=(),
        decided_ns=now_ns,
    )


async def write_decisions(coordinator: bus.Bus, log: bus.SubjectLog, count: int) -> None:
    """Append ``count`` decisions signed by ``coordinator`` to ``log``, ``GROUP`` a record, about ``BATCH`` a batch."""
    tip = await log.last()
    last = 0 if tip is None else tip.seq
    correlation = bus.new_id()
    step = BATCH // GROUP * GROUP
    for start in range(0, count, step):
        decisions = []
        for index in range(start, min(start + step, count)):
            if index % PER_CORRELATION == 0:
                correlation = bus.new_id()
            cause = bus.new_envelope(
                tenant=TENANT, kind="event", sender="alice", to=["bob"], correlation_id=correlation, payload=b"x"
            )
            decisions.append(decision_about(cause, index + 1, coordinator.clock()))
        records = [
            (record.sealed.body, dict(record.sealed.headers))
            for first in range(0, len(decisions), GROUP)
            for record in group_records(coordinator, decisions[first : first + GROUP])
        ]
        last = await log.append_batch(records, after=last, batch_id=bus.new_id())


async def fill_with_copies(log: SubjectLog, count: int) -> int:
    """Append copies of ``log``'s records (without ``Nats-*`` headers) in batches until it holds ``count`` records;
    the last sequence."""
    originals = [
        (record.body, {k: v for k, v in record.headers.items() if not k.startswith("Nats-")})
        async for record in log.read()
    ]
    tip = await log.last()
    last_seq, held = (0 if tip is None else tip.seq), len(originals)
    while held < count:
        take = min(BATCH, count - held)
        batch = [originals[(held + i) % len(originals)] for i in range(take)]
        last_seq = await log.append_batch(batch, after=last_seq, batch_id=bus.new_id())
        held += take
    return last_seq


async def timed_catch_up(log: bus.SubjectLog, keyring: bus.Keyring) -> tuple[float, DecisionLog]:
    """Seconds one :meth:`DecisionLog.catch_up` over ``log`` takes from an empty state, and what it read."""
    decisions = DecisionLog(log, keyring, POLICY)
    start = time.perf_counter()
    await decisions.catch_up()
    return time.perf_counter() - start, decisions


async def timed_restore(coordinator: bus.Bus, log: bus.SubjectLog) -> tuple[float, DecisionLog]:
    """Seconds a coordinator's :meth:`DecisionLog.restore` of partition 0 takes (its snapshot, if any, and the rest)."""
    decisions = DecisionLog(log, coordinator.keyring.keyring, POLICY, store=correlation_store(coordinator, 0))
    start = time.perf_counter()
    await decisions.restore()
    return time.perf_counter() - start, decisions


async def with_snapshot(
    coordinator: bus.Bus, subject: str, *, fill_to: int | None = None, tail: int = TAIL
) -> dict[str, Any]:
    """Rebuild with no snapshot, store one, write ``TAIL`` more decisions, and time a restore from it. ``fill_to``:
    between the rebuild and the snapshot, fill the log with copies up to that many records (:func:`fill_with_copies`).
    """
    rebuild_s, rebuilt = await timed_restore(coordinator, coordinator.log(subject, in_batches=True))
    filled: dict[str, Any] = {}
    if fill_to is not None:
        start = time.perf_counter()
        last = await fill_with_copies(coordinator.log(subject, in_batches=True), fill_to)
        filled = {"copies_write_s": round(time.perf_counter() - start, 2), "snapshot_covers": last}
        rebuilt.state.last_seq = last  # what reading the copies does: each is skipped as a replay
    start = time.perf_counter()
    assert await rebuilt.snapshot()
    snapshot_s = time.perf_counter() - start
    await write_decisions(coordinator, coordinator.log(subject), tail)
    restore_s, restored = await timed_restore(coordinator, coordinator.log(subject, in_batches=True))
    assert restored.store is not None and rebuilt.store is not None
    assert restored.state.last_seq > rebuilt.state.last_seq
    return {
        "rebuild_without_snapshot_s": round(rebuild_s, 2),
        "correlations_stored": rebuilt.store.writes,
        **filled,
        "snapshot_s": round(snapshot_s, 2),
        "restore_from_snapshot_s": round(restore_s, 2),
        "tail": tail,
        "loads_after_snapshot": restored.store.loads,
        "in_memory_after_restore": len(restored.state.correlations),
    }


async def measure(
    count: int,
    *,
    process: bool,
    snapshot: bool = False,
    unbounded: bool = True,
    distinct: int | None = None,
    tail: int = TAIL,
) -> dict[str, Any]:
    """Write ``count`` decisions to a fresh server and time both reads of them (and a coordinator's start);
    with ``distinct``, reach ``count`` with copies of that many (:func:`with_snapshot`)."""
    with bus.EmbeddedServer(port=0) as server, tempfile.TemporaryDirectory() as tmp:
        keys = bus.KeyDirectory(Path(tmp) / "keys")
        await bus.init_tenant([server.url], TENANT, keys=keys)
        await bus.new_key([server.url], TENANT, "c1", role="coordinator", keys=keys)
        identity = keys.load(TENANT, "c1")
        async with await bus.Bus.connect(server.url, tenant=TENANT, name="c1", identity=identity) as coordinator:
            subject = bus.subjects.decision(TENANT, 0)
            start = time.perf_counter()
            await write_decisions(coordinator, coordinator.log(subject), count if distinct is None else distinct)
            result: dict[str, Any] = {"decisions": count, "write_s": round(time.perf_counter() - start, 2)}
            if distinct is not None:
                result |= {"distinct": distinct, **await with_snapshot(coordinator, subject, fill_to=count, tail=tail)}
                unbounded = snapshot = False  # both would read every copy
            ring = coordinator.keyring.keyring
            if unbounded:
                batched_s, new = await timed_catch_up(coordinator.log(subject, in_batches=True), ring)
                result |= {"batched_s": round(batched_s, 2), "batched_per_s": round(count / batched_s)}
                one_by_one_s, old = await timed_catch_up(coordinator.log(subject), ring)
                result |= {
                    "one_by_one_s": round(one_by_one_s, 2),
                    "one_by_one_per_s": round(count / one_by_one_s),
                    "speedup": round(one_by_one_s / batched_s, 1),
                    "same_state": old.state.last_seq == new.state.last_seq
                    and old.decision_ids == new.decision_ids
                    and len(old.state.decided) == len(new.state.decided) == count,
                }
                del old, new
            if snapshot:
                result |= await with_snapshot(coordinator, subject, tail=tail)
        ready = await asyncio.to_thread(coordinator_ready, server.url, keys, Path(tmp)) if process else None
        result["stream_messages"], result["stream_bytes"] = await stream_state(server.url, TENANT)
        result["store_dir_bytes"] = await asyncio.to_thread(disk_bytes, server.data_dir or Path(tmp))
        result["server_rss_mb"] = round(rss_mb(server.pid), 1) if server.pid else None
    result["process_ready_s"] = None if ready is None else round(ready[0], 2)
    result["process_rss_mb"] = None if ready is None else round(ready[1], 1)
    return result


def disk_bytes(directory: Path) -> int:
    """The bytes of every file under ``directory``."""
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def coordinator_ready(url: str, keys: bus.KeyDirectory, tmp: Path) -> tuple[float, float]:
    """Seconds from starting ``trustbus coordinator run`` as c1 to its ready line, and its RSS then (MB); then it
    is stopped."""
    policy = tmp / "policy.yaml"
    policy.write_text(json.dumps(RULES))  # JSON is YAML
    env = {**os.environ, "NATS_URL": url, "TRUSTBUS_KEYS": str(keys.root)}
    processes = Supervisor(env=env, cwd=Path(__file__).resolve().parent.parent, logs=tmp)
    start = time.perf_counter()
    coordinator = processes.start(
        "coordinator", [sys.executable, "-m", "trustbus", "coordinator", "run", "-t", TENANT, "--policy", str(policy),
                        "--name", "c1"],
    )  # fmt: skip
    try:
        line = coordinator.wait_ready(READY_S)  # blocks on the pipe's reader: the time is the line's, not a poll's
        ready_s = time.perf_counter() - start
        if not line.get("ready"):
            raise RuntimeError(f"the coordinator's first line is not its ready line: {line}")
        return ready_s, rss_mb(coordinator.pid)
    except ProcessFailed as exc:
        raise RuntimeError("\n".join([str(exc), *coordinator.tail()])) from None
    finally:
        processes.stop_all()


def rss_mb(pid: int) -> float:
    """The resident set of process ``pid``, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--decisions", type=int, nargs="+", default=[10_000, 100_000], help="decision log lengths to time"
    )
    parser.add_argument("--process", action="store_true", help="also time a coordinator process's start to ready")
    parser.add_argument("--snapshot", action="store_true", help="also time a restore from a snapshot and a tail")
    parser.add_argument("--bounded-only", action="store_true", help="skip the reads that keep every decision")
    parser.add_argument("--tail", type=int, default=TAIL, help=f"decisions after the snapshot (default {TAIL:,})")
    parser.add_argument(
        "--distinct", type=int, help="write this many decisions and copies of them up to --decisions (implies the rest)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line of stdout")
    args = parser.parse_args()
    out = sys.stderr if args.json else sys.stdout
    results = []
    for count in args.decisions:
        result = asyncio.run(
            measure(
                count,
                process=args.process,
                snapshot=args.snapshot,
                unbounded=not args.bounded_only,
                distinct=args.distinct,
                tail=args.tail,
            )
        )
        results.append(result)
        print(describe(result), file=out)
    if args.json:
        print(json.dumps({"runs": results}))


def describe(result: dict[str, Any]) -> str:
    """One line of figures for one log length."""
    line = f"{result['decisions']:>9,} decisions (written in {result['write_s']} s): "
    if "distinct" in result:
        line = (
            f"{result['decisions']:>9,} decisions ({result['distinct']:,} distinct written in {result['write_s']} s, "
            f"copies of them up to {result['snapshot_covers']:,} in {result['copies_write_s']} s)"
        )
    if "one_by_one_s" in result:
        line += (
            f"one get per record {result['one_by_one_s']:7.2f} s ({result['one_by_one_per_s']:,}/s), "
            f"in batches {result['batched_s']:6.2f} s ({result['batched_per_s']:,}/s), "
            f"x{result['speedup']}, same state: {result['same_state']}"
        )
    if "restore_from_snapshot_s" in result:
        line += (
            f"; no snapshot, bounded rebuild {result['rebuild_without_snapshot_s']} s "
            f"({result['correlations_stored']:,} correlations stored), snapshot {result['snapshot_s']} s, "
            f"restore from it + {result['tail']:,} decisions {result['restore_from_snapshot_s']} s "
            f"({result['loads_after_snapshot']:,} correlation loads)"
        )
    if result["process_ready_s"] is not None:
        line += f"; coordinator process ready in {result['process_ready_s']} s, RSS {result['process_rss_mb']} MB"
    line += (
        f"; stream {result['stream_messages']:,} messages, {result['stream_bytes'] / 2**30:.2f} GiB, store dir "
        f"{result['store_dir_bytes'] / 2**30:.2f} GiB, nats-server RSS {result['server_rss_mb']} MB"
    )
    return line


if __name__ == "__main__":
    main()
