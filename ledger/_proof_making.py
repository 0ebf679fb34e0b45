"""Making proof files from a log: pure, the messages come from the caller.

:func:`prove_inclusion` and :func:`prove_consistency` read the messages twice
in order (once for the checkpoints, once for the leaves) and hold O(log n)
hashes, never the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from trustbus.bus import (
    HEADER_KEY,
    Checkpoint,
    Keyring,
    StoredMessage,
    VerificationError,
    decode_checkpoint,
    open_envelope,
    subjects,
)
from trustbus.ledger._chain import chained_headers
from trustbus.ledger._merkle import (
    MerkleError,
    ProofCollector,
    consistency_ranges,
    inclusion_ranges,
    message_leaf_hash,
    verify_consistency,
)
from trustbus.ledger._proofs import (
    ConsistencyProof,
    InclusionProof,
    KeyringEntry,
    ProofError,
    ProofMessage,
    SignedCheckpoint,
)


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
