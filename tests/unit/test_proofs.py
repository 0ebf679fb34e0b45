"""Proof files: made from a log, checked with nothing else, and refused after any flipped bit."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from trustbus.bus import Identity, KeyGrant, Keyring, StoredMessage, new_envelope, seal, sign_grant, subjects
from trustbus.bus._keyring import encode_signed_grant
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._merkle import TreeBuilder, inclusion_proof, message_leaf_hash, root_of
from trustbus.ledger._projector import Position
from trustbus.ledger._proof_checking import check_proof
from trustbus.ledger._proof_making import prove_consistency, prove_inclusion
from trustbus.ledger._proofs import ProofError, encode_proof

T = "acme"


@dataclass
class Log:
    """A tenant's stream built in memory: envelopes from alice, a ledger checkpoint every ``every`` messages."""

    admin: Identity = field(default_factory=Identity.generate)
    ids: dict[str, Identity] = field(default_factory=dict)
    revisions: list[tuple[str, bytes]] = field(default_factory=list)
    messages: list[StoredMessage] = field(default_factory=list)
    tree: TreeBuilder = field(default_factory=TreeBuilder)
    head: bytes = GENESIS

    def __post_init__(self) -> None:
        self.keyring = Keyring(tenant=T, admin_key_id=self.admin.key_id)
        for owner, role in [("alice", "agent"), ("ledger", "ledger")]:
            identity = Identity.generate()
            grant = KeyGrant(tenant=T, key_id=identity.key_id, owner=owner, role=role, valid_from=0)  # type: ignore[arg-type]
            signed = sign_grant(grant, self.admin)
            self.keyring.add(identity.key_id, signed)
            self.revisions.append((identity.key_id, encode_signed_grant(signed)))
            self.ids[owner] = identity

    def store(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        seq = len(self.messages) + 1
        self.messages.append(StoredMessage(seq, subject, time.time_ns(), headers, body))
        self.head = chain_hash(self.head, seq, subject, headers, body)
        self.tree.append(message_leaf_hash(seq, subject, headers, body))

    def send(self, n: int, *, every: int = 0) -> None:
        for i in range(n):
            s = seal(new_envelope(tenant=T, kind="event", sender="alice", to=("bob",), payload=b"%d" % i),
                     self.ids["alice"])  # fmt: skip
            self.store(subjects.outbox(T, "alice", 0), s.body, dict(s.headers))
            if every and len(self.messages) % every == 0:
                self.checkpoint()

    def checkpoint(self, signer: str = "ledger") -> None:
        seq = len(self.messages)
        position = Position(last_seq=seq, head=self.head, count=seq, frontier=self.tree.frontier)
        s = seal(checkpoint_envelope(T, signer, position), self.ids[signer])
        self.store(subjects.checkpoint(T), s.body, dict(s.headers))


@pytest.fixture(scope="module")
def log() -> Log:
    log = Log()
    log.send(40, every=10)  # checkpoints at sequences 11, 21, 31, 41 stating trees of 10, 20, 30, 40 leaves
    return log


def _inclusion(log: Log, seq: int) -> bytes:
    return encode_proof(prove_inclusion(lambda: log.messages, log.keyring, log.revisions, T, seq))


def _consistency(log: Log, old: int, new: int) -> bytes:
    return encode_proof(prove_consistency(lambda: log.messages, log.keyring, log.revisions, T, old, new))


def test_an_inclusion_proof_of_every_sequence_checks_with_nothing_else(log: Log) -> None:
    for seq in range(1, 41):
        checked = check_proof(_inclusion(log, seq), admin_key=log.admin.key_id)
        assert (checked.kind, checked.seq, checked.tree_size, checked.signer) == ("inclusion", seq, 40, "ledger")
        assert checked.subject == log.messages[seq - 1].subject


def test_consistency_proofs_between_every_pair_of_checkpoints_check(log: Log) -> None:
    sizes = [10, 20, 30, 40]
    for old in sizes:
        for new in (s for s in sizes if s >= old):
            checked = check_proof(_consistency(log, old, new), admin_key=log.admin.key_id)
            assert (checked.kind, checked.old_size, checked.tree_size) == ("consistency", old, new)


def test_no_proof_is_made_for_a_sequence_no_checkpoint_covers(log: Log) -> None:
    with pytest.raises(ProofError) as caught:
        _inclusion(log, 41)  # the last checkpoint itself: no later checkpoint states it
    assert caught.value.reason == "no_checkpoint"
    with pytest.raises(ProofError) as caught:
        _consistency(log, 11, 40)
    assert caught.value.reason == "no_checkpoint"


def test_a_log_rewritten_under_its_checkpoint_yields_no_proof(log: Log) -> None:
    edited = list(log.messages)
    m = edited[4]
    edited[4] = StoredMessage(m.seq, m.subject, m.stored_ns, m.headers, m.body + b" ")
    with pytest.raises(ProofError) as caught:
        prove_inclusion(lambda: edited, log.keyring, log.revisions, T, 3)
    assert caught.value.reason == "log_mismatch"


def _flip_every_byte(data: bytes) -> list[bytes]:
    """One copy per byte of ``data``, with one bit of that byte flipped (bit i mod 8)."""
    return [data[:i] + bytes([data[i] ^ (1 << (i % 8))]) + data[i + 1 :] for i in range(len(data))]


@pytest.mark.parametrize("kind", ["inclusion", "consistency"])
def test_a_flipped_bit_anywhere_in_a_proof_file_is_refused(log: Log, kind: str) -> None:
    data = _inclusion(log, 7) if kind == "inclusion" else _consistency(log, 10, 30)
    check_proof(data)
    for flipped in _flip_every_byte(data):
        with pytest.raises(ProofError):
            check_proof(flipped)


def _edited(data: bytes, edit: object) -> bytes:
    proof = json.loads(data)
    edit(proof)  # type: ignore[operator]
    return json.dumps(proof, separators=(",", ":")).encode()


def _flip_hex(value: str, at: int = 0) -> str:
    return value[:at] + format(int(value[at], 16) ^ 1, "x") + value[at + 1 :]


def _flip_b64(value: str) -> str:
    return ("B" if value[0] == "A" else "A") + value[1:]


def _header(headers: list[list[str]], name: str, change: object) -> None:
    for pair in headers:
        if pair[0] == name:
            pair[1] = change(pair[1])  # type: ignore[operator]


def _other_last(key_id: str) -> str:
    """``key_id`` with another last character (a fixed replacement would leave one key in 32 unchanged)."""
    return key_id[:-1] + "AB"[key_id[-1] == "A"]


PARTS = {
    "leaf_body": lambda p: p["message"].__setitem__("body", _flip_hex(p["message"]["body"], 40)),
    "leaf_seq": lambda p: p["message"].__setitem__("seq", p["message"]["seq"] + 1),
    "leaf_subject": lambda p: p["message"].__setitem__("subject", p["message"]["subject"] + "x"),
    "leaf_signature_header": lambda p: _header(p["message"]["headers"], "Tb-Sig", _flip_b64),
    "tree_size": lambda p: p.__setitem__("tree_size", p["tree_size"] - 1),
    "root": lambda p: p.__setitem__("root", _flip_hex(p["root"])),
    "checkpoint_signature": lambda p: _header(p["checkpoint"]["headers"], "Tb-Sig", _flip_b64),
    "checkpoint_key": lambda p: _header(p["checkpoint"]["headers"], "Tb-Key", _other_last),
    "checkpoint_body": lambda p: p["checkpoint"].__setitem__("body", _flip_hex(p["checkpoint"]["body"], 100)),
    "keyring_grant": lambda p: p["keyring"][0].__setitem__("grant", _flip_hex(p["keyring"][0]["grant"], 30)),
    "keyring_entry_key": lambda p: p["keyring"][0].__setitem__("key_id", _other_last(p["keyring"][0]["key_id"])),
    "keyring_dropped": lambda p: p.__setitem__("keyring", []),
    "admin_key": lambda p: p.__setitem__("admin_key", Identity.generate().key_id),
}  # fmt: skip


@pytest.mark.parametrize("part", sorted(PARTS))
def test_a_changed_part_of_an_inclusion_proof_is_refused(log: Log, part: str) -> None:
    data = _inclusion(log, 7)
    assert check_proof(_edited(data, lambda p: None)).seq == 7  # the untouched twin, re-encoded
    with pytest.raises(ProofError):
        check_proof(_edited(data, PARTS[part]))


def test_a_changed_node_of_the_audit_path_is_refused_at_every_position(log: Log) -> None:
    data = _inclusion(log, 7)
    nodes = len(json.loads(data)["path"])
    assert nodes == 6  # a tree of 40 leaves
    for i in range(nodes):
        with pytest.raises(ProofError) as caught:
            check_proof(_edited(data, lambda p, i=i: p["path"].__setitem__(i, _flip_hex(p["path"][i], 63))))
        assert caught.value.reason == "not_included"


def test_a_changed_node_of_a_consistency_proof_is_refused_at_every_position(log: Log) -> None:
    data = _consistency(log, 10, 40)
    for i in range(len(json.loads(data)["path"])):
        with pytest.raises(ProofError) as caught:
            check_proof(_edited(data, lambda p, i=i: p["path"].__setitem__(i, _flip_hex(p["path"][i]))))
        assert caught.value.reason == "not_consistent"


def test_a_proof_pinned_to_another_admin_key_is_refused(log: Log) -> None:
    data = _inclusion(log, 3)
    with pytest.raises(ProofError) as caught:
        check_proof(data, admin_key=Identity.generate().key_id)
    assert caught.value.reason == "admin_key"
    assert check_proof(data, admin_key=log.admin.key_id).seq == 3


def _handmade(signer: str) -> bytes:
    """An inclusion proof of sequence 2 under a checkpoint signed by ``signer``, assembled by hand."""
    log = Log()
    log.send(5)
    log.checkpoint(signer)
    leaves = [message_leaf_hash(m.seq, m.subject, m.headers, m.body) for m in log.messages[:5]]
    m, cp = log.messages[1], log.messages[-1]
    key = log.ids[signer].key_id
    return json.dumps({
        "format": "trustbus/inclusion-proof/v1", "tenant": T, "admin_key": log.admin.key_id,
        "keyring": [{"key_id": k, "grant": v.hex()} for k, v in log.revisions if k == key],
        "checkpoint": {"subject": cp.subject, "headers": sorted([k, v] for k, v in cp.headers.items()),
                       "body": cp.body.hex()},
        "tree_size": 5, "root": root_of(leaves).hex(),
        "message": {"seq": 2, "subject": m.subject, "headers": sorted([k, v] for k, v in m.headers.items()),
                    "body": m.body.hex()},
        "path": [h.hex() for h in inclusion_proof(leaves, 1)],
    }).encode()  # fmt: skip


def test_a_tree_head_signed_by_an_agent_key_proves_nothing() -> None:
    """alice (an agent) signs a checkpoint over a tree of her choosing: refused; the same signed by the ledger holds."""
    assert check_proof(_handmade("ledger")).signer == "ledger"
    with pytest.raises(ProofError) as caught:
        check_proof(_handmade("alice"))
    assert caught.value.reason == "bad_checkpoint"
