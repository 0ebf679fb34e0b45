"""Ledger benchmark: verification on every core, Parquet projection, a query, a replay, proofs, bounded verify.

Run: ``python bench/ledger.py [--n 100000] [--verify-n 1000000] [--rate 3000] [--json] [--keep DIR]``.

No server: the ledger is generated in memory, exactly as a tenant stream would
hold it. Conversations of four stored messages — an event from one of ten
agents to two others on its outbox, the coordinator's signed decision, and the
two mediated deliveries (the sender's bytes with the coordinator's
countersignature) — ten conversations per correlation, each caused by the one
before. Every 50th conversation adds an effect (requested, completed), every
200th a forged envelope (one payload byte flipped after signing) and the
coordinator's quarantine record of it, every 1,000 messages a checkpoint
signed by a ledger key stating the true chain head. Payloads are ~200-byte
JSON. Stored times are one microsecond apart (within the skew window).

Measured (wall clock, this process):

1. **generate**: the ledger above (signing included).
2. **verify**: ``ledger._parallel.open_all`` over the whole ledger with one
   thread per core (``verify_per_s``, messages): every check of
   ``bus.open_envelope`` (size, schema, key, validity, signature, skew,
   countersignature; the replay check is made by the projector, in step 3).
   Then, on the first 20,000 verifiable messages, five interleaved rounds of:
   bare PyNaCl ``VerifyKey.verify`` of every signature they carry (a mediated
   delivery carries two: the sender's and the coordinator's countersignature)
   on one core, the same on every core (a thread per core, 1,024 signatures
   per task: libsodium releases the GIL), and ``open_all``; best round of
   each. ``verify_ratio`` = open_all signatures/s / bare PyNaCl on every core
   (1.0: verifying a ledger costs no more than its bare signature checks, on
   the same cores); ``verify_ratio_vs_ideal`` divides by one core's rate x
   cores instead, and ``cores_available`` = every-core / one-core rate shows
   how much of the machine other load left.
3. **export**: ``ledger._parallel.project_messages`` given those outcomes:
   the chain, the replay check, every table's rows, and the Parquet segments +
   catalogue written to disk (one commit) — what ``trustbus ledger run`` does
   per batch, and what an export into DuckDB/Parquet costs once verified.
   ``export_per_s`` = messages / seconds. ``end_to_end_per_s`` = messages /
   (verify + export).
4. **query**: ``ledger.connect`` (catalogue, views) plus ``SELECT * FROM
   fanout_per_correlation ORDER BY fanout DESC, sent DESC LIMIT 10``, median of 7.
5. **replay**: ``ledger.build_incident`` of one correlation over the whole ledger.

6. **proofs**: ``ledger._proof_making.prove_inclusion`` of the middle message under
   the last checkpoint (two passes over the ledger: checkpoints, then leaves),
   ``prove_consistency`` from the first checkpoint's tree to the last one's,
   and ``check_proof`` of each file (median of 21); the files' sizes.
7. **stream verify** (``--verify-n``, default 1,000,000 messages; 0 skips):
   a ledger of that many messages, stored ``--rate`` a second (default 3,000,
   so the replay window holds what two minutes of such traffic would), is
   written to a file a chunk at a time and verified in a process of its own
   exactly as ``trustbus ledger verify --tenant`` verifies the stream
   (``ledger._streaming``: a pass over the anchors, then
   ``StreamVerifier`` fed 8,192 messages at a time), reporting its time and
   peak RSS (``ru_maxrss``; ``stream_verify_baseline_rss_mb`` is the process
   before verifying, imports included). The file stands in for the server: a
   live read also holds one fetched batch of 1,000 messages.

Targets: export >= 50,000 messages/s, verify_ratio >= 0.9, query < 200 ms,
replay < 1 s, stream verify peak RSS <= 300 MB. With ``--json`` the last line of stdout is one JSON object with
every figure; the human table goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file (bench/ledger.py) would shadow the ledger package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from trustbus.bus import (
    Decision,
    EffectRecord,
    Identity,
    Keyring,
    Opened,
    countersign,
    encode_decision,
    encode_effect,
    new_envelope,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus._identity import verify_key
from trustbus.bus._keyring import KeyGrant, decode_signed_grant, encode_signed_grant
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.bus._seal import SIGNATURE_DOMAIN, countersignature_message
from trustbus.ledger import GENESIS, StoredMessage, build_incident, chain_hash, connect
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._merkle import TreeBuilder, message_leaf_hash
from trustbus.ledger._parallel import open_all, project_messages
from trustbus.ledger._projector import Position
from trustbus.ledger._proof_checking import check_proof
from trustbus.ledger._proof_making import prove_consistency, prove_inclusion, tree_checkpoints
from trustbus.ledger._proofs import encode_proof
from trustbus.ledger._streaming import Anchors, StreamVerifier, collect_anchors

T = "bench"
AGENTS = [f"agent{i}" for i in range(10)]
SINK_CHUNK = 8192  # messages per chunk of a ledger written to a file


class Generator:
    """Builds the ledger message by message, keeping the chain and the Merkle tree for checkpoints.

    Messages are kept in :attr:`messages`, or handed to ``sink`` a chunk at a time
    when one is given (a ledger too large to hold). Stored times are ``spacing_ns`` apart.
    """

    def __init__(self, *, spacing_ns: int = 1000, sink: Callable[[list[StoredMessage]], None] | None = None) -> None:
        self.admin = Identity.generate()
        self.keyring = Keyring(tenant=T, admin_key_id=self.admin.key_id)
        self.ids: dict[str, Identity] = {}
        self.revisions: list[tuple[str, bytes]] = []
        for owner, role in [*((a, "agent") for a in AGENTS), ("coordinator", "coordinator"), ("ledger", "ledger")]:
            identity = Identity.generate()
            grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=0)  # type: ignore[arg-type]
            signed = sign_grant(grant, self.admin)
            self.keyring.add(identity.key_id, signed)
            self.revisions.append((identity.key_id, encode_signed_grant(signed)))
            self.ids[owner] = identity
        self.messages: list[StoredMessage] = []
        self.seq = 0
        self.head = GENESIS
        self.tree = TreeBuilder()
        self.spacing_ns = spacing_ns
        self.sink = sink
        self.now = time.time_ns()
        self.conversations = 0

    def store(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self.seq += 1
        seq = self.seq
        self.now += self.spacing_ns
        self.messages.append(StoredMessage(seq, subject, self.now, headers, body))
        if self.sink is not None and len(self.messages) >= SINK_CHUNK:
            self.flush()
        self.head = chain_hash(self.head, seq, subject, headers, body)
        self.tree.append(message_leaf_hash(seq, subject, headers, body))
        if seq % 1000 == 0:
            position = Position(last_seq=seq, head=self.head, count=seq, frontier=self.tree.frontier)
            s = seal(checkpoint_envelope(T, "ledger", position, now_ns=self.now), self.ids["ledger"])
            self.store(subjects.checkpoint(T), s.body, dict(s.headers))

    def flush(self) -> None:
        """Hand the messages held to the sink."""
        if self.sink is not None and self.messages:
            self.sink(self.messages)
            self.messages = []

    def signed(self, owner: str, subject: str, **fields: Any) -> tuple[bytes, dict[str, str], str]:
        s = seal(new_envelope(tenant=T, sender=owner, now_ns=self.now, **fields), self.ids[owner])
        self.store(subject, s.body, dict(s.headers))
        return s.body, dict(s.headers), s.envelope.id

    def conversation(self, n: int, correlation: str | None, cause: str | None) -> tuple[str, str]:
        sender, a, b = AGENTS[n % 10], AGENTS[(n + 1) % 10], AGENTS[(n + 3) % 10]
        payload = json.dumps({"n": n, "text": "x" * 180}).encode()
        body, headers, env_id = self.signed(
            sender, subjects.outbox(T, sender, 0), kind="event", to=(a, b), payload=payload,
            correlation_id=correlation, causation_id=cause, hop=0 if cause is None else 1,
        )  # fmt: skip
        correlation = correlation or env_id
        decision = Decision(
            envelope_id=env_id, source_seq=self.seq, sender=sender, kind="event",
            correlation_id=correlation, causation_id=cause, verdict="accept", reasons=(), deliver_to=(a, b),
            dropped=(), hop=0, declared_taint=(), effective_taint=(), decided_ns=self.now,
        )  # fmt: skip
        _, _, decision_id = self.signed(
            "coordinator", subjects.decision(T, 0), kind="decision", to=(), payload=encode_decision(decision),
            content_type="application/msgpack", correlation_id=correlation,
        )  # fmt: skip
        for recipient in (a, b):
            csig = countersign(
                body,
                recipient=recipient,
                decision_id=decision_id,
                effective_taint=(),
                coordinator=self.ids["coordinator"],
            )
            self.store(subjects.inbox(T, recipient), body, {**headers, **csig})
        if n % 50 == 0:
            for phase in ("requested", "completed"):
                record = EffectRecord(
                    phase=phase, tool=f"tool{n % 7}", idempotency_key=f"k{n}", args=b"{}", effect_class="reversible",
                    compensating_tool="undo", result=b"{}" if phase == "completed" else None,
                )  # fmt: skip
                self.signed(
                    a, subjects.effect_record(T, a, 0, f"k{n}"), kind="effect", to=(), payload=encode_effect(record),
                    content_type="application/msgpack", correlation_id=correlation, causation_id=env_id,
                )  # fmt: skip
        if n % 200 == 0:
            forged = bytearray(body)
            forged[forged.rindex(b"x")] ^= 0x01
            self.store(subjects.outbox(T, sender, 0), bytes(forged), headers)
            record = quarantine_record(
                bytes(forged), headers, reason="bad_signature", detail="signature does not match the bytes received",
                subject=subjects.outbox(T, sender, 0), stream_seq=self.seq,
            )  # fmt: skip
            self.signed(
                "coordinator", subjects.quarantine(T), kind="event", to=("topic:quarantine",),
                payload=encode_quarantine_record(record), content_type="application/msgpack",
            )  # fmt: skip
        return correlation, env_id


def generate(n: int, *, spacing_ns: int = 1000, sink: Callable[[list[StoredMessage]], None] | None = None) -> Generator:
    """A ledger of ``n`` messages (with a sink: handed over a chunk at a time, possibly a few more than ``n``)."""
    gen = Generator(spacing_ns=spacing_ns, sink=sink)
    i = 0
    correlation: str | None = None
    cause: str | None = None
    while gen.seq < n:
        correlation, cause = gen.conversation(i, correlation if i % 10 else None, cause if i % 10 else None)
        i += 1
    gen.conversations = i
    if sink is not None:
        gen.flush()
        return gen
    del gen.messages[n:]
    gen.head = GENESIS
    for m in gen.messages:
        gen.head = chain_hash(gen.head, m.seq, m.subject, m.headers, m.body)
    return gen


def _raw_items(messages: list[StoredMessage]) -> list[tuple[Any, bytes, bytes]]:
    """(verify key, signed bytes, signature) of every signature on ``messages`` (countersignatures too)."""
    items = []
    for m in messages:
        items.append(
            (verify_key(m.headers["Tb-Key"]), SIGNATURE_DOMAIN + m.body, base64.b64decode(m.headers["Tb-Sig"]))
        )
        if "Tb-Csig" in m.headers:
            recipient = m.subject.rsplit(".", 1)[1]
            signed = countersignature_message(
                m.body, recipient=recipient, decision_id=m.headers["Tb-Decision"], effective_taint=()
            )
            items.append((verify_key(m.headers["Tb-Ckey"]), signed, base64.b64decode(m.headers["Tb-Csig"])))
    return items


def _raw_verify(items: list[tuple[Any, bytes, bytes]]) -> None:
    for key, message, sig in items:
        key.verify(message, sig)


def best_of(rounds: int, run: Callable[[], object]) -> float:
    """The shortest wall time of ``rounds`` runs (the run least disturbed by other load)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def verify_rates(gen: Generator, outcomes: list[Any], sample: int, cores: int) -> dict[str, float]:
    """Signatures per second: bare PyNaCl on one core and on every core, and open_all, interleaved runs."""
    messages = [m for m, o in zip(gen.messages, outcomes, strict=True) if isinstance(o, Opened)][:sample]
    items = _raw_items(messages)
    chunks = [items[i : i + 1024] for i in range(0, len(items), 1024)]
    one_core = all_cores = checked = float("inf")
    with ThreadPoolExecutor(cores) as pool:
        for _ in range(5):
            one_core = min(one_core, best_of(1, lambda: _raw_verify(items[:5000])) * len(items) / min(5000, len(items)))
            all_cores = min(all_cores, best_of(1, lambda: list(pool.map(_raw_verify, chunks))))
            checked = min(checked, best_of(1, lambda: open_all(messages, gen.keyring, T, workers=cores)))
    return {
        "raw_per_core": len(items) / one_core,
        "raw_all_cores": len(items) / all_cores,
        "open_all": len(items) / checked,
    }


def measure(n: int, keep: Path | None, stderr: Console) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    gen = generate(n)
    generate_s = time.perf_counter() - started
    stderr.print(f"generated {len(gen.messages):,} messages in {generate_s:.1f}s")
    started = time.perf_counter()
    outcomes = open_all(gen.messages, gen.keyring, T)
    verify_s = time.perf_counter() - started
    failed = sum(1 for o in outcomes if isinstance(o, Exception))
    rates = verify_rates(gen, outcomes, min(n, 20_000), cores)

    work = keep or Path(tempfile.mkdtemp(prefix="trustbus-ledger-bench-"))
    data = work / "projection"
    started = time.perf_counter()
    position = project_messages(gen.messages, gen.keyring, T, data, outcomes=outcomes)
    export_s = time.perf_counter() - started
    assert position.head == gen.head and position.last_seq == n

    query_times = []
    top: list[tuple[Any, ...]] = []
    for _ in range(7):
        started = time.perf_counter()
        top = (
            connect(data)
            .sql("SELECT * FROM fanout_per_correlation ORDER BY fanout DESC, sent DESC LIMIT 10")
            .fetchall()
        )
        query_times.append(time.perf_counter() - started)
    assert top and top[0][2] == 2 * top[0][1], top[0]  # every event went to two recipients
    holds = connect(data).sql("SELECT bool_and(holds), count(*) FROM checkpoint_checks").fetchall()[0]
    assert holds[0] and holds[1] > 0, holds

    correlation = gen.messages[len(gen.messages) // 2]
    middle = next(m for m in gen.messages[len(gen.messages) // 2 :] if m.subject.startswith(f"tb.{T}.out."))
    started = time.perf_counter()
    incident = build_incident(gen.messages, gen.keyring, T, _correlation_of(middle))
    replay_s = time.perf_counter() - started
    assert incident.steps, correlation

    return {
        "n": n,
        "cores": cores,
        "generate_s": round(generate_s, 2),
        "verify_per_s": round(n / verify_s),
        "raw_verify_per_core": round(rates["raw_per_core"]),
        "raw_verify_all_cores": round(rates["raw_all_cores"]),
        "cores_available": round(rates["raw_all_cores"] / rates["raw_per_core"], 2),
        "checked_sigs_per_s": round(rates["open_all"]),
        "verify_ratio": round(rates["open_all"] / rates["raw_all_cores"], 3),
        "verify_ratio_vs_ideal": round(rates["open_all"] / (rates["raw_per_core"] * cores), 3),
        "unverified": failed,
        "export_per_s": round(n / export_s),
        "end_to_end_per_s": round(n / (verify_s + export_s)),
        "query_ms": round(statistics.median(query_times) * 1000, 1),
        "replay_s": round(replay_s, 3),
        "replay_steps": len(incident.steps),
        "parquet_bytes": sum(f.stat().st_size for f in data.rglob("*.parquet")),
        **measure_proofs(gen),
    }


def measure_proofs(gen: Generator) -> dict[str, Any]:
    """Making and checking an inclusion proof (the middle message) and a consistency proof (first to last tree)."""
    messages = gen.messages
    heads = tree_checkpoints(messages, gen.keyring, T)
    old, new = heads[0].checkpoint.tree_size or 0, heads[-1].checkpoint.tree_size or 0
    seq = new // 2
    started = time.perf_counter()
    inclusion = encode_proof(prove_inclusion(lambda: messages, gen.keyring, gen.revisions, T, seq))
    prove_inclusion_s = time.perf_counter() - started
    started = time.perf_counter()
    consistency = encode_proof(prove_consistency(lambda: messages, gen.keyring, gen.revisions, T, old, new))
    prove_consistency_s = time.perf_counter() - started
    check_inclusion = [best_of(1, lambda: check_proof(inclusion)) for _ in range(21)]
    check_consistency = [best_of(1, lambda: check_proof(consistency)) for _ in range(21)]
    return {
        "proof_tree_size": new,
        "prove_inclusion_s": round(prove_inclusion_s, 3),
        "check_inclusion_ms": round(statistics.median(check_inclusion) * 1000, 2),
        "inclusion_proof_bytes": len(inclusion),
        "prove_consistency_s": round(prove_consistency_s, 3),
        "check_consistency_ms": round(statistics.median(check_consistency) * 1000, 2),
        "consistency_proof_bytes": len(consistency),
    }


_chunk_encoder = msgspec.msgpack.Encoder()
_chunk_decoder = msgspec.msgpack.Decoder(list[StoredMessage])


def _read_chunks(path: Path, n: int) -> Iterator[list[StoredMessage]]:
    """The ledger file's messages through sequence ``n``, a chunk at a time."""
    with path.open("rb") as f:
        while header := f.read(4):
            chunk = _chunk_decoder.decode(f.read(int.from_bytes(header, "big")))
            if chunk[-1].seq > n:
                chunk = [m for m in chunk if m.seq <= n]
            if chunk:
                yield chunk
            if chunk and chunk[-1].seq >= n:
                return


def verify_file(path: Path, n: int) -> dict[str, Any]:
    """In a process of its own: stream-verify the ledger file (as `ledger verify --tenant` reads the stream)."""
    admin, revisions = msgspec.msgpack.decode(
        path.with_suffix(".keyring").read_bytes(), type=tuple[str, list[tuple[str, bytes]]]
    )
    keyring = Keyring(tenant=T, admin_key_id=admin)
    for key_id, value in revisions:
        keyring.add(key_id, decode_signed_grant(value))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    anchors = Anchors()
    for chunk in _read_chunks(path, n):
        collect_anchors(chunk, keyring, T, into=anchors)
    verifier = StreamVerifier(keyring, T, anchors)
    remembered = 0
    for chunk in _read_chunks(path, n):
        verifier.feed(chunk)
        remembered = max(remembered, verifier.remembered)
    report = verifier.finish()
    seconds = time.perf_counter() - started
    return {
        "ok": report.ok,
        "count": report.count,
        "verified": report.verified,
        "recorded_rejections": report.recorded_rejections,
        "checkpoints": report.checkpoints,
        "seconds": seconds,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "baseline_rss_kb": baseline_kb,
        "max_ids_remembered": remembered,
    }


def measure_stream_verify(n: int, rate: int, work: Path, stderr: Console) -> dict[str, Any]:
    """Generate ``n`` messages stored ``rate`` a second into a file, then stream-verify it in a child process."""
    path = work / "ledger.chunks"
    started = time.perf_counter()
    with path.open("wb") as f:

        def sink(chunk: list[StoredMessage]) -> None:
            data = _chunk_encoder.encode(chunk)
            f.write(len(data).to_bytes(4, "big") + data)

        gen = generate(n, spacing_ns=1_000_000_000 // rate, sink=sink)
    path.with_suffix(".keyring").write_bytes(msgspec.msgpack.encode([gen.admin.key_id, gen.revisions]))
    stderr.print(f"generated {n:,} messages into {path} in {time.perf_counter() - started:.1f}s; verifying")
    child = subprocess.run(
        [sys.executable, __file__, "--verify-file", str(path), "--n", str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout.splitlines()[-1])
    assert result["ok"] and result["count"] == n, result
    path.unlink()
    return {
        "stream_verify_messages": n,
        "stream_verify_envelopes": gen.conversations,
        "stream_verify_rate_per_s": rate,
        "stream_verify_s": round(result["seconds"], 1),
        "stream_verify_per_s": round(n / result["seconds"]),
        "stream_verify_peak_rss_mb": round(result["peak_rss_kb"] / 1024, 1),
        "stream_verify_baseline_rss_mb": round(result["baseline_rss_kb"] / 1024, 1),
        "stream_verify_max_ids": result["max_ids_remembered"],
    }


def _correlation_of(message: StoredMessage) -> str:
    from trustbus.bus import decode_envelope

    return decode_envelope(message.body).correlation_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages in the generated ledger")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--keep", type=Path, help="write the projection here (default: a temp dir)")
    parser.add_argument(
        "--verify-n", type=int, default=1_000_000, help="messages in the ledger stream-verified for memory (0: skip)"
    )
    parser.add_argument("--rate", type=int, default=3000, help="messages per second of store time in that ledger")
    parser.add_argument("--verify-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verify_file is not None:
        sys.stdout.write(json.dumps(verify_file(args.verify_file, args.n)) + "\n")
        return
    stderr = Console(stderr=True)
    result = measure(args.n, args.keep, stderr)
    if args.verify_n:
        with tempfile.TemporaryDirectory(prefix="trustbus-ledger-bench-") as work:
            result |= measure_stream_verify(args.verify_n, args.rate, Path(work), stderr)
    table = Table("figure", "value", "target")
    targets = {
        "export_per_s": ">= 50,000",
        "verify_ratio": ">= 0.9",
        "query_ms": "< 200",
        "replay_s": "< 1",
        "stream_verify_peak_rss_mb": "<= 300",
    }
    for key, value in result.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value), targets.get(key, ""))
    (stderr if args.json else Console()).print(table)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
