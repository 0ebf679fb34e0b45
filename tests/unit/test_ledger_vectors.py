"""The test vectors of docs/LEDGER.md, recomputed with the code: a divergence fails.

``tests/fixtures/ledger_vectors/`` holds ``vectors.json`` (inputs, expected
bytes, hashes and signatures, from fixed seeds and clocks) and ``bundle/``, a
complete audit bundle built from the same inputs, which an independent
verifier can check byte for byte. Regenerate (only when the spec changes on
purpose) with ``TB_WRITE_FIXTURES=1 python -m pytest tests/unit/test_ledger_vectors.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
from nacl.signing import SigningKey, VerifyKey

from trustbus.bus import (
    Envelope,
    Identity,
    KeyGrant,
    countersign,
    encode_checkpoint,
    encode_envelope,
    seal,
    sign_grant,
    subjects,
)
from trustbus.bus._keyring import encode_signed_grant
from trustbus.bus._quarantine import encode_quarantine_record, quarantine_record
from trustbus.bus._records import Checkpoint
from trustbus.ledger import GENESIS, BundleEntry, chain_hash, chained_headers, verify_bundle
from trustbus.ledger._anchors import CheckpointFile, write_checkpoint_file
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._projector import Position

VECTORS = Path(__file__).resolve().parents[1] / "fixtures" / "ledger_vectors"
TENANT = "vec"
T0 = 1_800_000_000_000_000_000  # the vectors' clock: 2027-01-15T08:00:00Z in unix ns
_enc = msgspec.msgpack.Encoder()


def _identity(byte: int) -> Identity:
    return Identity(SigningKey(bytes([byte]) * 32))


ADMIN, ALICE, COORDINATOR, LEDGER = _identity(1), _identity(2), _identity(3), _identity(4)


def _envelope(n: int, **fields: Any) -> Envelope:
    base: dict[str, Any] = {
        "v": 1,
        "id": f"0190f000-0000-7000-8000-{n:012d}",
        "tenant": TENANT,
        "kind": "event",
        "sender": "alice",
        "to": ("bob",),
        "ts": T0 + n * 1_000_000_000,
        "correlation_id": "0190f000-0000-7000-8000-000000000001",
        "causation_id": None,
        "hop": 0,
        "taint": (),
        "idempotency_key": None,
        "content_type": "application/json",
        "payload": b'{"n": %d}' % n,
    }
    return Envelope(**{**base, **fields})


def _grants() -> list[tuple[str, bytes]]:
    revisions = []
    for identity, owner, role in [
        (ADMIN, "admin", "admin"),
        (ALICE, "alice", "agent"),
        (COORDINATOR, "coordinator", "coordinator"),
        (LEDGER, "ledger", "ledger"),
    ]:
        grant = KeyGrant(tenant=TENANT, key_id=identity.key_id, owner=owner, role=role, valid_from=T0 - 3600 * 10**9)  # type: ignore[arg-type]
        revisions.append((identity.key_id, encode_signed_grant(sign_grant(grant, ADMIN))))
    return revisions


def _stream() -> list[tuple[str, int, dict[str, str], bytes]]:
    """(subject, stored_ns, headers, body) of the vectors' stream, in order."""
    out: list[tuple[str, int, dict[str, str], bytes]] = []

    def add(subject: str, envelope: Envelope, signer: Identity, extra: dict[str, str] | None = None) -> None:
        sealed = seal(envelope, signer)
        out.append((subject, envelope.ts + 1_000_000, {**sealed.headers, **(extra or {})}, sealed.body))

    sent = _envelope(1, taint=("email", "web"))
    add(subjects.outbox(TENANT, "alice", 0), sent, ALICE, {"Nats-Expected-Stream": "TB_vec"})  # not chained
    decision = _envelope(2, kind="decision", sender="coordinator", to=(), payload=b"\x80")
    add(subjects.decision(TENANT, 0), decision, COORDINATOR)
    body = encode_envelope(sent)
    taint = ("email", "web")
    csig = countersign(body, recipient="bob", decision_id=decision.id, effective_taint=taint, coordinator=COORDINATOR)
    add(subjects.inbox(TENANT, "bob"), sent, ALICE, csig)
    forged = bytearray(encode_envelope(_envelope(4)))
    forged[-2] ^= 0x01  # a flipped payload byte: refused, and quarantined below
    forged_headers = dict(seal(_envelope(4), ALICE).headers)
    out.append((subjects.outbox(TENANT, "alice", 0), T0 + 4_001_000_000, forged_headers, bytes(forged)))
    outbox = subjects.outbox(TENANT, "alice", 0)
    detail = "signature does not match the bytes received"
    record = quarantine_record(
        bytes(forged), forged_headers, reason="bad_signature", detail=detail, subject=outbox, stream_seq=4
    )
    payload = encode_quarantine_record(record)
    fields = {"to": ("topic:quarantine",), "content_type": "application/msgpack", "payload": payload}
    add(subjects.quarantine(TENANT), _envelope(5, idempotency_key="quarantine:TB_vec:4", **fields), ALICE)
    return out


def build(directory: Path | None = None) -> dict[str, Any]:
    """The vectors, recomputed; with ``directory``, also write the bundle there."""
    stream = _stream()
    head, entries, chain = GENESIS, [], []
    for seq, (subject, stored_ns, headers, body) in enumerate(stream, start=1):
        entry = _enc.encode([seq, subject, chained_headers(headers), body])
        previous, head = head, chain_hash(head, seq, subject, headers, body)
        chain.append(
            {
                "seq": seq,
                "subject": subject,
                "headers": headers,
                "body": body.hex(),
                "previous": previous.hex(),
                "chained": entry.hex(),
                "hash": head.hex(),
            }
        )
        entries.append(BundleEntry(seq, subject, stored_ns, headers, body, head))
    checkpoint = Checkpoint(stream="TB_vec", through_seq=len(stream), head=head, count=len(stream))
    position = Position(last_seq=len(stream), head=head, count=len(stream))
    stated = checkpoint_envelope(TENANT, "ledger", position, now_ns=T0 + 60 * 10**9)
    fixed = "0190f000-0000-7000-8000-000000000099"
    sealed_end = seal(msgspec.structs.replace(stated, id=fixed, correlation_id=fixed), LEDGER)
    end = CheckpointFile(dict(sealed_end.headers), sealed_end.body)  # what sign_checkpoint makes, with a fixed id
    sent = stream[0][3]
    vectors: dict[str, Any] = {
        "keys": {
            name: {"seed": (bytes([b]) * 32).hex(), "key_id": i.key_id}
            for name, b, i in [
                ("admin", 1, ADMIN),
                ("alice", 2, ALICE),
                ("coordinator", 3, COORDINATOR),
                ("ledger", 4, LEDGER),
            ]
        },
        "envelope": {"body": sent.hex(), "sig": stream[0][2]["Tb-Sig"], "key": stream[0][2]["Tb-Key"]},
        "countersignature": {k: stream[2][2][k] for k in ("Tb-Csig", "Tb-Ckey", "Tb-Decision", "Tb-Taint")},
        "keyring": [[k, v.hex()] for k, v in _grants()],
        "chain": chain,
        "checkpoint_payload": encode_checkpoint(checkpoint).hex(),
        "export_checkpoint": {"headers": end.headers, "body": end.body.hex(), "file": _enc.encode(end).hex()},
    }
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        (directory / "messages.msgpack").write_bytes(_enc.encode(entries))
        (directory / "keyring.msgpack").write_bytes(_enc.encode([[k, v] for k, v in _grants()]))
        write_checkpoint_file(directory / "end.checkpoint", end)
        manifest = {
            "format": 2,
            "tenant": TENANT,
            "stream": "TB_vec",
            "admin_key": ADMIN.key_id,
            "first_seq": 1,
            "last_seq": len(stream),
            "count": len(stream),
            "head": head.hex(),
            "exported_at": T0 + 60 * 10**9,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return vectors


def test_the_vectors_are_what_the_code_computes(tmp_path: Path) -> None:
    if os.environ.get("TB_WRITE_FIXTURES"):
        (VECTORS / "vectors.json").write_text(json.dumps(build(VECTORS / "bundle"), indent=1) + "\n")
    fresh = build(tmp_path / "bundle")
    assert fresh == json.loads((VECTORS / "vectors.json").read_text())
    for name in ("manifest.json", "messages.msgpack", "keyring.msgpack", "end.checkpoint"):
        assert (tmp_path / "bundle" / name).read_bytes() == (VECTORS / "bundle" / name).read_bytes(), name


def test_the_chain_vectors_follow_the_formula_with_nothing_but_hashlib() -> None:
    vectors = json.loads((VECTORS / "vectors.json").read_text())
    previous = bytes(32)
    for step in vectors["chain"]:
        assert step["previous"] == previous.hex()
        previous = hashlib.sha256(b"trustbus/v1/chain\x00" + previous + bytes.fromhex(step["chained"])).digest()
        assert step["hash"] == previous.hex()
    assert vectors["chain"][0]["headers"]["Nats-Expected-Stream"] and "Nats-Expected-Stream" not in bytes.fromhex(
        vectors["chain"][0]["chained"]
    ).decode("latin-1")


def test_the_signature_vectors_verify_with_nothing_but_pynacl() -> None:
    vectors = json.loads((VECTORS / "vectors.json").read_text())
    seed = bytes.fromhex(vectors["keys"]["alice"]["seed"])
    body = bytes.fromhex(vectors["envelope"]["body"])
    sig = base64.b64decode(vectors["envelope"]["sig"])
    VerifyKey(bytes(SigningKey(seed).verify_key)).verify(b"trustbus/v1\x00" + body, sig)
    assert SigningKey(seed).sign(b"trustbus/v1\x00" + body).signature == sig  # Ed25519 is deterministic


def test_the_vector_bundle_verifies_and_a_flipped_bit_in_it_does_not(tmp_path: Path) -> None:
    report = verify_bundle(VECTORS / "bundle", admin_key=ADMIN.key_id)
    assert report.ok, report.breaks
    assert (report.count, report.verified, report.recorded_rejections, report.covered) == (5, 4, 1, (1, 5))
    copy = tmp_path / "copy"
    shutil.copytree(VECTORS / "bundle", copy)
    data = bytearray((copy / "messages.msgpack").read_bytes())
    data[-40] ^= 0x01
    (copy / "messages.msgpack").write_bytes(bytes(data))
    assert not verify_bundle(copy, admin_key=ADMIN.key_id).ok
