"""The Merkle tree (RFC 9162 §2.1): roots, inclusion and consistency proofs, and the checked-in vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustbus.ledger._merkle import (
    EMPTY_ROOT,
    MerkleError,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_bytes,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parents[1] / "fixtures" / "ledger_vectors" / "merkle"


# The definitions of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 written out recursively, to check the iterative code.
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    return [*path(m, d[:k]), mth(d[k:])] if m < k else [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = _k(len(d))
    return [*subproof(m, d[:k], b), mth(d[k:])] if m <= k else [*subproof(m - k, d[k:], False), mth(d[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


@given(st.integers(1, 300), st.data())
def test_inclusion_proofs_round_trip_and_a_changed_leaf_or_node_is_refused(n: int, data: st.DataObject) -> None:
    d = _leaves(n)
    m = data.draw(st.integers(0, n - 1))
    root = root_of(d)
    assert root == mth(d)
    proof = inclusion_proof(d, m)
    assert proof == path(m, d)
    verify_inclusion(m, n, d[m], proof, root)
    with pytest.raises(MerkleError):
        verify_inclusion(m, n, _flip(d[m]), proof, root)
    for i in range(len(proof)):
        with pytest.raises(MerkleError):
            verify_inclusion(m, n, d[m], [*proof[:i], _flip(proof[i]), *proof[i + 1 :]], root)
    if n > 1:
        with pytest.raises(MerkleError):
            verify_inclusion((m + 1) % n, n, d[m], proof, root)  # another position


@given(st.integers(1, 300), st.data())
def test_consistency_proofs_round_trip_and_a_rewritten_history_is_refused(n: int, data: st.DataObject) -> None:
    d = _leaves(n)
    old = data.draw(st.integers(1, n))
    proof = consistency_proof(d, old)
    assert proof == subproof(old, d, True)
    verify_consistency(old, n, mth(d[:old]), mth(d), proof)
    rewritten = list(d)
    rewritten[data.draw(st.integers(0, old - 1))] = leaf_hash(b"rewritten")
    with pytest.raises(MerkleError):
        verify_consistency(old, n, mth(d[:old]), mth(rewritten), proof)
    with pytest.raises(MerkleError):
        verify_consistency(old, n, mth(rewritten[:old]), mth(d), proof)
    for i in range(len(proof)):
        with pytest.raises(MerkleError):
            verify_consistency(old, n, mth(d[:old]), mth(d), [*proof[:i], _flip(proof[i]), *proof[i + 1 :]])


@given(st.integers(0, 200), st.integers(0, 200))
def test_the_tree_resumes_from_its_frontier(before: int, after: int) -> None:
    d = _leaves(before + after)
    first = TreeBuilder()
    for h in d[:before]:
        first.append(h)
    resumed = TreeBuilder(first.size, first.frontier)
    for h in d[before:]:
        resumed.append(h)
    assert resumed.root() == mth(d) and len(resumed.frontier) <= max(1, (before + after).bit_length())


def test_a_frontier_that_does_not_fit_its_size_is_refused() -> None:
    with pytest.raises(MerkleError):
        TreeBuilder(3, (leaf_hash(b"a"),))


def test_an_empty_tree_has_the_hash_of_nothing() -> None:
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_the_vectors_hold() -> None:
    """Every vector: leaf bytes and hashes, roots, inclusion and consistency proofs (tests/fixtures/...)."""
    for name in ("rfc6962.json", "trustbus.json"):
        vectors = json.loads((VECTORS / name).read_text())
        hashes = []
        for leaf in vectors["leaves"]:
            raw = (
                bytes.fromhex(leaf["input"])
                if "input" in leaf
                else leaf_bytes(leaf["seq"], leaf["subject"], dict(leaf["headers"]), bytes.fromhex(leaf["body"]))
            )
            assert raw.hex() == leaf.get("leaf", raw.hex()), name
            assert leaf_hash(raw).hex() == leaf["leaf_hash"], name
            hashes.append(leaf_hash(raw))
        for size, root in vectors["roots"].items():
            assert root_of(hashes[: int(size)]).hex() == root == mth(hashes[: int(size)]).hex(), (name, size)
        for case in vectors["inclusion"]:
            proof = [bytes.fromhex(h) for h in case["path"]]
            assert inclusion_proof(hashes, case["index"], case["size"]) == proof, (name, case)
            verify_inclusion(case["index"], case["size"], hashes[case["index"]], proof, bytes.fromhex(case["root"]))
        for case in vectors["consistency"]:
            proof = [bytes.fromhex(h) for h in case["path"]]
            assert consistency_proof(hashes, case["old"], case["new"]) == proof, (name, case)
            verify_consistency(
                case["old"], case["new"], bytes.fromhex(case["old_root"]), bytes.fromhex(case["new_root"]), proof
            )


def test_node_hashing_is_domain_separated_from_leaf_hashing() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest() != leaf_hash(a + b)
