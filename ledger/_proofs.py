"""Proof files: one envelope's inclusion in the log, or one checkpoint's log being a prefix of a later one's.

A proof file is a JSON object (docs/LEDGER.md, "Merkle tree") carrying
everything needed to check it with no server and no bundle: the proved
message, the audit path, the ledger-signed checkpoint stating the tree head,
and the admin-signed keyring revisions of the key that signed that
checkpoint. :func:`check_proof` refuses anything it cannot check, each refusal
with a stable reason code; every byte of the file is covered by a check.

Making proofs (:func:`prove_inclusion`, :func:`prove_consistency`) reads the
messages twice in order (once for the checkpoints, once for the leaves) and
holds O(log n) hashes, never the log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

from trustbus.bus import (
    HEADER_KEY,
    HEADER_MSG_ID,
    HEADER_SIG,
    BusError,
    Checkpoint,
    Keyring,
    KeyringError,
    StoredMessage,
    VerificationError,
    decode_checkpoint,
    decode_envelope,
    decode_signed_grant,
    open_envelope,
    subjects,
)
from trustbus.ledger._chain import chained_headers
from trustbus.ledger._errors import LedgerError
from trustbus.ledger._merkle import (
    MerkleError,
    ProofCollector,
    consistency_ranges,
    inclusion_ranges,
    message_leaf_hash,
    verify_consistency,
    verify_inclusion,
)

INCLUSION = "trustbus/inclusion-proof/v1"
CONSISTENCY = "trustbus/consistency-proof/v1"

Hash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Hex = Annotated[str, msgspec.Meta(pattern="^(?:[0-9a-f]{2})*$")]
Header = tuple[str, str]


class ProofError(LedgerError):
    """A proof cannot be made, or a proof file does not check.

    Attributes:
        reason: a stable code: ``malformed``, ``admin_key``, ``untrusted_key``, ``bad_checkpoint``,
            ``mismatch``, ``not_included``, ``not_consistent`` (checking); ``no_checkpoint``,
            ``no_message``, ``log_mismatch`` (making).
        detail: what exactly.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ProofMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A stored message as a proof carries it: the leaf's fields (headers: the chained ones, sorted)."""

    seq: int
    subject: str
    headers: list[Header]
    body: Hex


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A checkpoint message as stored: its subject, its signature headers (sorted) and its body."""

    subject: str
    headers: list[Header]
    body: Hex


class KeyringEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One keyring revision: the entry's key and the admin-signed grant stored under it (docs/WIRE.md)."""

    key_id: str
    grant: Hex


class InclusionProof(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="format", tag=INCLUSION
):
    """The proof that ``message`` is leaf ``seq - 1`` of the tree the checkpoint signs."""

    tenant: str
    admin_key: str
    keyring: list[KeyringEntry]
    checkpoint: SignedCheckpoint
    tree_size: int
    root: Hash
    message: ProofMessage
    path: list[Hash]


class ConsistencyProof(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="format", tag=CONSISTENCY
):
    """The proof that the tree ``old`` signs is a prefix of the tree ``new`` signs."""

    tenant: str
    admin_key: str
    keyring: list[KeyringEntry]
    old: SignedCheckpoint
    old_size: int
    old_root: Hash
    new: SignedCheckpoint
    new_size: int
    new_root: Hash
    path: list[Hash]


ProofFile = InclusionProof | ConsistencyProof

_decoder = msgspec.json.Decoder(ProofFile)
_encoder = msgspec.json.Encoder()


def encode_proof(proof: ProofFile) -> bytes:
    """The proof file's bytes: compact JSON and a newline."""
    return _encoder.encode(proof) + b"\n"


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


# -- making proofs -----------------------------------------------------------------


@dataclass(frozen=True)
class TreeCheckpoint:
    """A verified checkpoint stating a tree head, and the message that carried it."""

    message: StoredMessage
    checkpoint: Checkpoint
    key_id: str


def tree_checkpoints(messages: Iterable[StoredMessage], keyring: Keyring, tenant: str) -> list[TreeCheckpoint]:
    """The checkpoints among ``messages`` signed by a ledger key that state a tree head, in stream order."""
    subject = subjects.checkpoint(tenant)
    found: list[TreeCheckpoint] = []
    for m in messages:
        if m.subject != subject:
            continue
        try:
            opened = open_envelope(m.body, m.headers, keyring=keyring, received_ns=m.stored_ns)
            checkpoint = decode_checkpoint(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
        if opened.grant.role == "ledger" and checkpoint.tree_root is not None and checkpoint.tree_size is not None:
            found.append(TreeCheckpoint(m, checkpoint, m.headers[HEADER_KEY]))
    return found


def _signed(message: StoredMessage) -> SignedCheckpoint:
    return SignedCheckpoint(
        subject=message.subject,
        headers=[(n, v) for n, v in chained_headers(message.headers)],
        body=message.body.hex(),
    )


def _entries(revisions: Sequence[tuple[str, bytes]], key_ids: set[str]) -> list[KeyringEntry]:
    return [KeyringEntry(key_id=k, grant=v.hex()) for k, v in revisions if k in key_ids]


def _collect(messages: Iterable[StoredMessage], ranges: list[tuple[int, int]], size: int, root: bytes,
             keep: int | None = None) -> tuple[list[bytes], StoredMessage | None]:  # fmt: skip
    """The roots of ``ranges`` over leaves 1..``size``, after checking the log gives ``root``; and message ``keep``."""
    collector = ProofCollector(ranges)
    whole = ProofCollector([(0, size)])
    kept: StoredMessage | None = None
    for m in messages:
        if m.seq != collector.seen + 1:
            raise ProofError("log_mismatch", f"sequence {m.seq} stands where {collector.seen + 1} should")
        h = message_leaf_hash(m.seq, m.subject, m.headers, m.body)
        collector.add(h)
        whole.add(h)
        if m.seq == keep:
            kept = m
        if m.seq >= size:
            break
    try:
        (computed,) = whole.proof()
        proof = collector.proof()
    except MerkleError as exc:
        raise ProofError("log_mismatch", f"the log ends before sequence {size}") from exc
    if computed != root:
        raise ProofError("log_mismatch", f"the log's tree of {size} is not the one its checkpoint signed")
    return proof, kept


def prove_inclusion(
    messages: Callable[[], Iterable[StoredMessage]],
    keyring: Keyring,
    revisions: Sequence[tuple[str, bytes]],
    tenant: str,
    seq: int,
) -> InclusionProof:
    """The inclusion proof of the message at ``seq`` under the latest checkpoint whose tree covers it.

    Args:
        messages: gives the stream from sequence 1, in order (called twice).
        keyring: the tenant's keyring (anchored on the admin key).
        revisions: every keyring revision, as ``(entry key, signed grant bytes)``.
        tenant: the tenant.
        seq: the sequence to prove.

    Raises:
        ProofError: no checkpoint covers ``seq``, or the log does not match the checkpoint.
    """
    covering = [c for c in tree_checkpoints(messages(), keyring, tenant) if (c.checkpoint.tree_size or 0) >= seq]
    if seq < 1 or not covering:
        raise ProofError("no_checkpoint", f"no checkpoint with a tree head covers sequence {seq}")
    cp = covering[-1]
    size, root = cp.checkpoint.tree_size or 0, cp.checkpoint.tree_root or b""
    path, kept = _collect(messages(), inclusion_ranges(seq - 1, size), size, root, keep=seq)
    if kept is None:
        raise ProofError("no_message", f"sequence {seq} is not in the log")
    return InclusionProof(
        tenant=tenant,
        admin_key=keyring.admin_key_id,
        keyring=_entries(revisions, {cp.key_id}),
        checkpoint=_signed(cp.message),
        tree_size=size,
        root=root.hex(),
        message=ProofMessage(
            seq=kept.seq,
            subject=kept.subject,
            headers=[(n, v) for n, v in chained_headers(kept.headers)],
            body=kept.body.hex(),
        ),
        path=[h.hex() for h in path],
    )


def prove_consistency(
    messages: Callable[[], Iterable[StoredMessage]],
    keyring: Keyring,
    revisions: Sequence[tuple[str, bytes]],
    tenant: str,
    old: int,
    new: int,
) -> ConsistencyProof:
    """The proof that the log the checkpoint of tree size ``old`` signs is a prefix of the one of ``new``.

    Raises:
        ProofError: no checkpoint states a tree of that size, or the log does not match.
    """
    by_size = {c.checkpoint.tree_size: c for c in tree_checkpoints(messages(), keyring, tenant)}
    missing = [s for s in (old, new) if s not in by_size]
    if missing:
        raise ProofError("no_checkpoint", f"no checkpoint states a tree of {missing[0]} leaves")
    if old > new:
        raise ProofError("no_checkpoint", f"the old tree ({old}) is larger than the new one ({new})")
    a, b = by_size[old], by_size[new]
    path, _ = _collect(messages(), consistency_ranges(old, new), new, b.checkpoint.tree_root or b"")
    old_root = a.checkpoint.tree_root or b""
    try:  # the older checkpoint must agree too: make no proof that does not check
        verify_consistency(old, new, old_root, b.checkpoint.tree_root or b"", path)
    except MerkleError as exc:
        raise ProofError("log_mismatch", f"the checkpoint of {old} does not sign a prefix of the log: {exc}") from exc
    return ConsistencyProof(
        tenant=tenant,
        admin_key=keyring.admin_key_id,
        keyring=_entries(revisions, {a.key_id, b.key_id}),
        old=_signed(a.message),
        old_size=old,
        old_root=old_root.hex(),
        new=_signed(b.message),
        new_size=new,
        new_root=(b.checkpoint.tree_root or b"").hex(),
        path=[h.hex() for h in path],
    )


# -- checking proofs ---------------------------------------------------------------


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
    try:
        proof = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProofError("malformed", f"not a proof file: {exc}") from exc
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
