r"""A Merkle tree over the tenant stream, hashed as RFC 9162 (Certificate Transparency 2.0) §2.1 says. Pure.

Leaf ``i`` (from 0) is the message at stream sequence ``i + 1``; its bytes are
the same encoding the hash chain covers::

    leaf(seq)    = msgpack([seq, subject, headers, body])        (see ledger._chain)
    leaf hash    = SHA-256(0x00 || leaf)
    node hash    = SHA-256(0x01 || left || right)
    MTH({})      = SHA-256()                                      (the empty tree)
    MTH(D[0:n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n

Inclusion proofs (``PATH``) and consistency proofs (``PROOF``/``SUBPROOF``)
are generated as RFC 9162 §2.1.3.1 and §2.1.4.1 define them and verified by
the algorithms of §2.1.3.2 and §2.1.4.2, step by step.

Generation needs only the leaf hashes in order, read once: a proof is the list
of the roots of certain ranges of leaves (:func:`inclusion_ranges`,
:func:`consistency_ranges`), disjoint and in a known order, so each is folded
with a :class:`TreeBuilder` (O(log n) memory) as the leaves stream past
(:class:`ProofCollector`). The ledger service keeps a :class:`TreeBuilder`
as it tails the stream; its state (the frontier) is what a restart resumes from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from trustbus.ledger._chain import chained_headers

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_encoder = msgspec.msgpack.Encoder()


class MerkleError(ValueError):
    """A proof does not verify, or a proof cannot be made for these sizes."""


def leaf_bytes(seq: int, subject: str, headers: Mapping[str, str] | None, body: bytes) -> bytes:
    """The bytes of the leaf for one stored message: what the chain hashes too."""
    return _encoder.encode([seq, subject, chained_headers(headers), body])


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf)."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def message_leaf_hash(seq: int, subject: str, headers: Mapping[str, str] | None, body: bytes) -> bytes:
    """The leaf hash of one stored message."""
    return leaf_hash(leaf_bytes(seq, subject, headers, body))


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class TreeBuilder:
    """The Merkle tree head of a growing list of leaves, in O(log n) memory.

    It keeps the frontier: the roots of the perfect subtrees the leaves so far
    split into, largest (leftmost) first, one per set bit of the size. The
    root folds them right to left, which is exactly ``MTH`` of RFC 9162.

    Args:
        size: leaves already folded into ``frontier`` (a restart).
        frontier: their perfect-subtree roots, leftmost first (as :attr:`frontier` gave them).
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        if len(frontier) != bin(size).count("1") or any(len(h) != 32 for h in frontier):
            raise MerkleError(f"a frontier of {len(frontier)} hashes cannot be a tree of {size} leaves")
        self.size = size
        self._frontier = list(frontier)

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, leftmost (largest) first; with :attr:`size`, all a restart needs."""
        return tuple(self._frontier)

    def append(self, leaf_hash_: bytes) -> None:
        """Add the next leaf, given its leaf hash."""
        node = leaf_hash_
        size = self.size
        while size & 1:  # merge with the equal-sized subtree on the left
            node = node_hash(self._frontier.pop(), node)
            size >>= 1
        self._frontier.append(node)
        self.size += 1

    def root(self) -> bytes:
        """MTH of the leaves so far (SHA-256 of nothing for none)."""
        if not self._frontier:
            return EMPTY_ROOT
        node = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            node = node_hash(left, node)
        return node


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH of the given leaf hashes."""
    builder = TreeBuilder()
    for h in leaf_hashes:
        builder.append(h)
    return builder.root()


# -- which subtrees a proof is made of -------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[start, end)`` whose roots form PATH(index, D[size]), in proof order (leaf to root)."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf {index} is not in a tree of {size} leaves")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:  # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])  or  PATH(m-k, D[k:n]) : MTH(D[0:k])
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form PROOF(old, D[new]), in proof order.

    RFC 9162 defines PROOF for 0 < old < new; for old == new the proof is
    empty (the roots must be equal).
    """
    if not 0 < old <= new:
        raise MerkleError(f"no consistency proof from a tree of {old} leaves to one of {new}")
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, new, old, True
    while m != end - start:  # SUBPROOF(m, D[start:end], whole)
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        ranges.append((start, end))  # SUBPROOF(m, D[m], false) = {MTH(D[0:m])}
    ranges.reverse()
    return ranges


class ProofCollector:
    """Folds the leaves of given disjoint ranges as leaf hashes stream past, in O(log n) memory.

    Args:
        ranges: leaf ranges ``[start, end)``, in the order the proof lists them.
    """

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self._ranges = list(ranges)
        self._order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
        self._results: list[bytes | None] = [None] * len(ranges)
        self._next = 0  # position in _order of the range being folded
        self._builder = TreeBuilder()
        self.seen = 0

    def add(self, leaf_hash_: bytes) -> None:
        """The leaf hash of leaf number :attr:`seen` (leaves must come in order, from 0)."""
        index = self.seen
        self.seen += 1
        if self._next >= len(self._order):
            return
        which = self._order[self._next]
        start, end = self._ranges[which]
        if start <= index < end:
            self._builder.append(leaf_hash_)
            if index == end - 1:
                self._results[which] = self._builder.root()
                self._builder = TreeBuilder()
                self._next += 1

    def proof(self) -> list[bytes]:
        """The roots of the ranges, in proof order; MerkleError if some leaves never came."""
        if any(r is None for r in self._results):
            raise MerkleError(f"the proof needs leaves beyond the {self.seen} given")
        return [r for r in self._results if r is not None]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]) over a list of leaf hashes (size: all of them by default)."""
    size = len(leaf_hashes) if size is None else size
    collector = ProofCollector(inclusion_ranges(index, size))
    for h in leaf_hashes[:size]:
        collector.add(h)
    return collector.proof()


def consistency_proof(leaf_hashes: Sequence[bytes], old: int, new: int | None = None) -> list[bytes]:
    """PROOF(old, D[new]) over a list of leaf hashes (new: all of them by default)."""
    new = len(leaf_hashes) if new is None else new
    collector = ProofCollector(consistency_ranges(old, new))
    for h in leaf_hashes[:new]:
        collector.add(h)
    return collector.proof()


# -- verification (RFC 9162 §2.1.3.2, §2.1.4.2) -----------------------------------


def root_from_inclusion(index: int, size: int, leaf_hash_: bytes, path: Sequence[bytes]) -> bytes:
    """The root the audit ``path`` leads to from leaf ``index`` of a tree of ``size``; MerkleError if malformed."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_hash_
    for p in path:
        if sn == 0:
            raise MerkleError("the audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError("the audit path is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf_hash_: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Check that leaf ``index`` with ``leaf_hash_`` is in the tree of ``size`` leaves with ``root``.

    Raises:
        MerkleError: it is not (or the proof is malformed).
    """
    if root_from_inclusion(index, size, leaf_hash_, path) != root:
        raise MerkleError(f"the audit path of leaf {index} does not lead to the root of the tree of {size}")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> None:
    """Check that the tree of ``old`` leaves with ``old_root`` is a prefix of the one of ``new`` with ``new_root``.

    Raises:
        MerkleError: it is not (or the proof is malformed).
    """
    if not 0 < old <= new:
        raise MerkleError(f"no consistency proof from a tree of {old} leaves to one of {new}")
    if old == new:
        if path:
            raise MerkleError("a proof between trees of equal size must be empty")
        if old_root != new_root:
            raise MerkleError(f"two different roots for the tree of {old}")
        return
    if not path:  # step 1
        raise MerkleError("empty consistency proof")
    proof = list(path)
    if old & (old - 1) == 0:  # step 2: old is a power of two
        proof.insert(0, old_root)
    fn, sn = old - 1, new - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]  # step 5
    for c in proof[1:]:  # step 6
        if sn == 0:
            raise MerkleError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise MerkleError("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise MerkleError(f"the proof does not lead to the root of the tree of {old}")
    if sr != new_root:
        raise MerkleError(f"the proof does not lead to the root of the tree of {new}")
