"""Verifying the live stream in memory bounded by the traffic of a skew window, not by the stream's length.

The stream is read twice. First only its checkpoint and quarantine subjects
(:func:`collect_anchors`): which sequences verified quarantine records excuse
(bound to the rejected message's subject and body hash), and which sequences
verified checkpoints state a head of. Then everything, a chunk at a time
(:class:`StreamVerifier`): signatures checked on every core (a thread pool:
libsodium releases the GIL), then in order the sequence, the hash chain, the
Merkle tree, the replay check (:class:`~ledger._replay_window.ReplayWindow`),
excuses, checkpoints and signer roles, exactly as
:func:`ledger.verify_messages` judges them. What is held: one or two chunks,
the replay window, the excuses and the chain heads at checkpointed
sequences (both a few per thousand messages), and O(log n) tree hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec

from bus import (
    Keyring,
    KeyringStore,
    Limits,
    Opened,
    VerificationError,
    connect_nats,
    decode_checkpoint,
    decode_quarantine_record,
    open_envelope,
    subjects,
)
from ledger._bundle import _last_seq
from ledger._chain import GENESIS, chain_hash
from ledger._merkle import TreeBuilder, message_leaf_hash
from ledger._parallel import CHUNK, _open_chunk
from ledger._reading import stream_batches
from ledger._replay_window import ReplayWindow
from ledger._stored import StoredMessage
from ledger._verify import MAX_BREAKS, Break, VerifyReport, _check_signer

FEED = 8192  # messages verified per step


@dataclass
class Anchors:
    """What the checkpoint and quarantine subjects say about other sequences.

    Attributes:
        excused: per sequence, the (subject, body SHA-256 hex) pairs verified quarantine records name.
        checkpointed: sequences verified ledger checkpoints state a head of.
    """

    excused: dict[int, set[tuple[str, str]]] = field(default_factory=dict)
    checkpointed: set[int] = field(default_factory=set)


def collect_anchors(
    messages: Iterable[StoredMessage], keyring: Keyring, tenant: str, *, into: Anchors | None = None
) -> Anchors:
    """The anchors among ``messages`` (only checkpoint and quarantine messages matter; others are skipped).

    ``into``: add them to these (a stream read a batch at a time) and return them.
    """
    anchors = Anchors() if into is None else into
    quarantine, checkpoint = subjects.quarantine(tenant), subjects.checkpoint(tenant)
    for m in messages:
        if m.subject not in (quarantine, checkpoint):
            continue
        try:
            opened = open_envelope(m.body, m.headers, keyring=keyring, received_ns=m.stored_ns)
            if m.subject == quarantine:
                record = decode_quarantine_record(opened.envelope.payload)
                if record.stream_seq is not None:
                    anchors.excused.setdefault(record.stream_seq, set()).add((record.subject, record.body_sha256))
            elif opened.grant.role == "ledger":
                anchors.checkpointed.add(decode_checkpoint(opened.envelope.payload).through_seq)
        except (VerificationError, msgspec.DecodeError, ValueError):
            continue
    return anchors


class StreamVerifier:
    """Verifies a stream fed in order, chunk by chunk; :meth:`finish` gives the report.

    Args:
        keyring: the tenant's keyring (only read).
        tenant: the tenant.
        anchors: from :func:`collect_anchors` over the same stream.
        check_from: signatures are checked from this sequence on (the chain always from the first).
        limits: size and skew limits.
        workers: threads checking signatures (default: one per core).
    """

    def __init__(
        self,
        keyring: Keyring,
        tenant: str,
        anchors: Anchors,
        *,
        check_from: int = 1,
        limits: Limits = Limits(),
        workers: int | None = None,
    ) -> None:
        self.keyring = keyring
        self.tenant = tenant
        self.anchors = anchors
        self.check_from = check_from
        self.limits = limits
        self.report = VerifyReport(first_seq=check_from)
        self._chain = GENESIS
        self._expected = 1
        self._tree: TreeBuilder | None = TreeBuilder()
        self._heads: dict[int, tuple[bytes, bytes]] = {}  # at checkpointed sequences: (chain head, tree root)
        self._replay = ReplayWindow(limits.skew_ns)
        self._workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ledger-verify")
        self._checkpoint_subject = subjects.checkpoint(tenant)

    @property
    def remembered(self) -> int:
        """Ids the replay check holds now (bounded by the traffic of the window)."""
        return len(self._replay)

    def _broke(self, seq: int, reason: str, detail: str) -> None:
        if len(self.report.breaks) < MAX_BREAKS:
            self.report.breaks.append(Break(seq, reason, detail))

    def _open(self, messages: Sequence[StoredMessage]) -> list[Opened | VerificationError]:
        if len(messages) <= CHUNK or self._workers == 1:
            return _open_chunk(messages, self.keyring, self.tenant, self.limits)
        parts = [messages[i : i + CHUNK] for i in range(0, len(messages), CHUNK)]
        done = self._pool.map(lambda part: _open_chunk(part, self.keyring, self.tenant, self.limits), parts)
        return [outcome for part in done for outcome in part]

    def feed(self, messages: Sequence[StoredMessage]) -> None:
        """Verify the next messages of the stream, in order."""
        checked = iter(self._open([m for m in messages if m.seq >= self.check_from]))
        for m in messages:
            self._chained(m)
            if m.seq >= self.check_from:
                self._judged(m, next(checked))

    def _chained(self, m: StoredMessage) -> None:
        if m.seq != self._expected:
            self._broke(self._expected, "missing", f"sequence {self._expected} is missing (next found: {m.seq})")
            self._tree = None  # the tree covers 1..n with none missing
        self._expected = max(self._expected, m.seq) + 1
        self._chain = chain_hash(self._chain, m.seq, m.subject, m.headers, m.body)
        if self._tree is not None:
            self._tree.append(message_leaf_hash(m.seq, m.subject, m.headers, m.body))
        if m.seq in self.anchors.checkpointed:
            self._heads[m.seq] = (self._chain, self._tree.root() if self._tree is not None else b"")
        self.report.head = self._chain
        if m.seq >= self.check_from:
            self.report.count += 1
            self.report.last_seq = m.seq

    def _judged(self, m: StoredMessage, checked: Opened | VerificationError) -> None:
        outcome = self._replay.check(m, checked)
        if isinstance(outcome, VerificationError):
            binding = (m.subject, hashlib.sha256(m.body).hexdigest())
            if binding in self.anchors.excused.get(m.seq, ()):
                self.report.recorded_rejections += 1
            else:
                self._broke(m.seq, outcome.reason, outcome.detail)
            return
        self.report.verified += 1
        if m.subject == self._checkpoint_subject:
            problem = self._checkpoint_problem(outcome)
            if problem is not None:
                self._broke(m.seq, "checkpoint", problem)
            else:
                self.report.checkpoints += 1
        elif (
            problem := _check_signer(self.tenant, m.subject, outcome.envelope.sender, outcome.grant.role)
        ) is not None:
            self._broke(m.seq, "signer", problem)

    def _checkpoint_problem(self, opened: Opened) -> str | None:
        if opened.grant.role != "ledger":
            return f"checkpoint signed by a {opened.grant.role} key"
        try:
            checkpoint = decode_checkpoint(opened.envelope.payload)
        except (msgspec.DecodeError, ValueError) as exc:
            return f"unreadable checkpoint: {exc}"
        stated = self._heads.get(checkpoint.through_seq)
        if stated is None:
            return f"checkpoint through {checkpoint.through_seq} states a sequence not stored before it"
        head, root = stated
        if head != checkpoint.head:
            return f"checkpoint through {checkpoint.through_seq} states another chain head"
        if checkpoint.tree_root is not None and (
            checkpoint.tree_size != checkpoint.through_seq or checkpoint.tree_root != root
        ):
            return f"checkpoint through {checkpoint.through_seq} states another Merkle tree head"
        return None

    def finish(self) -> VerifyReport:
        """The report; the verifier's threads are released."""
        self._pool.shutdown()
        return self.report


async def verify_live(
    servers: Sequence[str],
    tenant: str,
    *,
    from_seq: int = 1,
    nkey_seed: str | None = None,
    limits: Limits = Limits(),
    workers: int | None = None,
) -> VerifyReport:
    """Verify the tenant's stream through its last sequence now, streaming (see the module's docstring).

    Args:
        servers: NATS URLs.
        tenant: the tenant.
        from_seq: check signatures from this sequence (the chain is computed from the first).
        nkey_seed: authenticate with this nkey seed.
        limits: size and skew limits.
        workers: threads checking signatures (default: one per core).
    """
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        async with await KeyringStore.open(js, tenant, follow=False) as store:
            keyring = store.keyring
        last = await _last_seq(js, tenant)
        anchors = Anchors()
        only = (subjects.quarantine(tenant), subjects.checkpoint(tenant))
        async for batch in stream_batches(js, tenant, last=last, only=only):
            collect_anchors(batch, keyring, tenant, into=anchors)
        verifier = StreamVerifier(keyring, tenant, anchors, check_from=from_seq, limits=limits, workers=workers)
        pending: asyncio.Future[None] | None = None
        chunk: list[StoredMessage] = []
        try:
            async for batch in stream_batches(js, tenant, last=last):
                chunk.extend(batch)
                if len(chunk) >= FEED:
                    if pending is not None:
                        await pending  # in order, and at most one chunk verified while the next is read
                    pending = asyncio.ensure_future(asyncio.to_thread(verifier.feed, chunk))
                    chunk = []
            if pending is not None:
                await pending
            if chunk:
                await asyncio.to_thread(verifier.feed, chunk)
        finally:
            report = verifier.finish()
    finally:
        await nc.close()
    return report
