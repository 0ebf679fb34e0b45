"""Checking a proof file with nothing else: no server, no bundle. Pure.

:func:`check_proof` refuses anything it cannot check, each refusal with a
stable reason code; every byte of the file is covered by a check.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from trustbus.bus import (
    HEADER_KEY,
    HEADER_MSG_ID,
    HEADER_SIG,
    BusError,
    Checkpoint,
    Keyring,
    KeyringError,
    VerificationError,
    decode_checkpoint,
    decode_envelope,
    decode_signed_grant,
    open_envelope,
    subjects,
)
from trustbus.ledger._merkle import MerkleError, message_leaf_hash, verify_consistency, verify_inclusion
from trustbus.ledger._proofs import (
    ConsistencyProof,
    Header,
    InclusionProof,
    ProofError,
    ProofFile,
    SignedCheckpoint,
    decode_proof,
)


@dataclass(frozen=True)
class CheckedProof:
    """What a proof file proved.

    Attributes:
        kind: ``inclusion`` or ``consistency``.
        tenant: the tenant.
        tree_size: the (newer) tree's size.
        root: its root.
        signer: the key owner who signed the (newer) checkpoint.
        seq: the proved message's sequence (inclusion).
        subject: its subject (inclusion).
        old_size: the older tree's size (consistency).
        old_root: its root (consistency).
    """

    kind: str
    tenant: str
    tree_size: int
    root: bytes
    signer: str
    seq: int | None = None
    subject: str | None = None
    old_size: int | None = None
    old_root: bytes | None = None


def _headers(pairs: Sequence[Header], what: str) -> dict[str, str]:
    """The headers as a map; refused unless chain-covered names, each once, sorted (the leaf's own form)."""
    names = [n for n, _ in pairs]
    if any(n[:3] != "Tb-" and n != HEADER_MSG_ID for n in names) or names != sorted(set(names)):
        raise ProofError("malformed", f"the {what}'s headers are not the chained ones, each once, sorted")
    return dict(pairs)


def _keyring(proof: ProofFile, admin_key: str | None) -> Keyring:
    if admin_key is not None and admin_key != proof.admin_key:
        raise ProofError("admin_key", f"the proof names admin key {proof.admin_key}, not the pinned {admin_key}")
    try:
        keyring = Keyring(tenant=proof.tenant, admin_key_id=proof.admin_key)
    except (BusError, ValueError) as exc:
        raise ProofError("malformed", f"tenant or admin key: {exc}") from exc
    for entry in proof.keyring:
        try:
            trusted = keyring.add(entry.key_id, decode_signed_grant(bytes.fromhex(entry.grant)))
        except KeyringError as exc:
            raise ProofError("untrusted_key", f"keyring entry {entry.key_id}: {exc}") from exc
        if trusted is None:
            raise ProofError("untrusted_key", f"keyring entry {entry.key_id} is not signed by the admin key")
    return keyring


def _canonical_base64(value: str) -> bool:
    """Whether ``value`` is the one base64 text of its bytes (unused trailing bits zero, padded)."""
    try:
        return base64.b64encode(base64.b64decode(value, validate=True)).decode() == value
    except (binascii.Error, ValueError):
        return False


def _checkpoint(signed: SignedCheckpoint, keyring: Keyring, tenant: str) -> tuple[Checkpoint, str]:
    """The checkpoint a signed checkpoint message states, and its signer; ProofError unless a ledger key signed it."""
    if signed.subject != subjects.checkpoint(tenant):
        raise ProofError("bad_checkpoint", f"a checkpoint is not on {subjects.checkpoint(tenant)}")
    headers = _headers(signed.headers, "checkpoint")
    if set(headers) != {HEADER_MSG_ID, HEADER_KEY, HEADER_SIG}:
        raise ProofError("bad_checkpoint", "a checkpoint carries exactly its id, key and signature headers")
    if not _canonical_base64(headers[HEADER_SIG]):
        raise ProofError("bad_checkpoint", "the checkpoint's signature header is not canonical base64")
    body = bytes.fromhex(signed.body)
    try:
        ts = decode_envelope(body).ts
        # Judged as of its own signed time: the store time is not in the file (it is not signed).
        opened = open_envelope(body, headers, keyring=keyring, received_ns=ts)
        checkpoint = decode_checkpoint(opened.envelope.payload)
    except VerificationError as exc:
        raise ProofError("bad_checkpoint", f"checkpoint: {exc.reason}: {exc.detail}") from exc
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProofError("bad_checkpoint", f"unreadable checkpoint: {exc}") from exc
    envelope = opened.envelope
    if opened.grant.role != "ledger" or envelope.kind != "checkpoint" or headers[HEADER_MSG_ID] != envelope.id:
        raise ProofError("bad_checkpoint", f"not a checkpoint signed by a ledger key ({envelope.sender})")
    if checkpoint.stream != subjects.stream_name(tenant):
        raise ProofError("bad_checkpoint", f"a checkpoint of stream {checkpoint.stream}")
    if checkpoint.tree_root is None or checkpoint.tree_size != checkpoint.through_seq:
        raise ProofError("bad_checkpoint", "the checkpoint states no tree head of its sequences")
    return checkpoint, envelope.sender


def _tree(checkpoint: Checkpoint, size: int, root: str, what: str) -> bytes:
    if size != checkpoint.tree_size or root != (checkpoint.tree_root or b"").hex():
        raise ProofError("mismatch", f"the {what} tree head is not the one its checkpoint signs")
    return bytes.fromhex(root)


def check_proof(data: bytes, *, admin_key: str | None = None) -> CheckedProof:
    """Check a proof file with nothing else: the keyring entries, the checkpoint(s), the Merkle proof.

    Args:
        data: the file's bytes.
        admin_key: pin the tenant's admin key (else the file's is trusted).

    Raises:
        ProofError: anything does not check (its ``reason`` says which step).
    """
    proof = decode_proof(data)
    keyring = _keyring(proof, admin_key)
    if isinstance(proof, InclusionProof):
        return _check_inclusion(proof, keyring)
    return _check_consistency(proof, keyring)


def _check_inclusion(proof: InclusionProof, keyring: Keyring) -> CheckedProof:
    checkpoint, signer = _checkpoint(proof.checkpoint, keyring, proof.tenant)
    root = _tree(checkpoint, proof.tree_size, proof.root, "stated")
    m = proof.message
    headers = _headers(m.headers, "message")
    leaf = message_leaf_hash(m.seq, m.subject, headers, bytes.fromhex(m.body))
    try:
        verify_inclusion(m.seq - 1, proof.tree_size, leaf, [bytes.fromhex(h) for h in proof.path], root)
    except MerkleError as exc:
        raise ProofError("not_included", str(exc)) from exc
    return CheckedProof("inclusion", proof.tenant, proof.tree_size, root, signer, seq=m.seq, subject=m.subject)


def _check_consistency(proof: ConsistencyProof, keyring: Keyring) -> CheckedProof:
    old, _ = _checkpoint(proof.old, keyring, proof.tenant)
    new, signer = _checkpoint(proof.new, keyring, proof.tenant)
    old_root = _tree(old, proof.old_size, proof.old_root, "old")
    new_root = _tree(new, proof.new_size, proof.new_root, "new")
    try:
        verify_consistency(proof.old_size, proof.new_size, old_root, new_root, [bytes.fromhex(h) for h in proof.path])
    except MerkleError as exc:
        raise ProofError("not_consistent", str(exc)) from exc
    return CheckedProof(
        "consistency", proof.tenant, proof.new_size, new_root, signer, old_size=proof.old_size, old_root=old_root
    )


def checked_dict(checked: CheckedProof) -> Mapping[str, object]:
    """The ``--json`` form of a checked proof."""
    out: dict[str, object] = {
        "ok": True,
        "kind": checked.kind,
        "tenant": checked.tenant,
        "tree_size": checked.tree_size,
        "root": checked.root.hex(),
        "signer": checked.signer,
    }
    if checked.kind == "inclusion":
        out |= {"seq": checked.seq, "subject": checked.subject}
    else:
        out |= {"old_size": checked.old_size, "old_root": (checked.old_root or b"").hex()}
    return out
