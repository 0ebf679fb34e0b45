"""Verifying the live stream in memory bounded by the traffic of a skew window, not by the stream's length.

The stream is read twice. First only its checkpoint and quarantine subjects
(:func:`~ledger._judging.collect_anchors`): which sequences verified
quarantine records excuse (:mod:`ledger._excuses`), and which sequences
checkpoints state a head of. Then everything, a chunk at a time
(:class:`StreamVerifier`): signatures checked on every core (a thread pool:
libsodium releases the GIL), then, in order, the one
:class:`~ledger._judging.Judge` that :func:`ledger.verify_messages` uses too.
What is held: one or two chunks, the replay window, the excuses and the chain
and tree heads at checkpointed sequences (a few per thousand messages), and
O(log n) tree hashes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from trustbus.bus import Keyring, Limits, Opened, StoredMessage, TenantStream, VerificationError, subjects
from trustbus.ledger._judging import Anchors, Judge, collect_anchors
from trustbus.ledger._parallel import CHUNK, _open_chunk
from trustbus.ledger._report import Break, VerifyReport

__all__ = ["Anchors", "StreamVerifier", "collect_anchors", "verify_live"]

FEED = 8192  # messages verified per step


class StreamVerifier:
    """Verifies a stream fed in order, chunk by chunk, with the one judge; :meth:`finish` gives the report.

    Args:
        keyring: the tenant's keyring (only read).
        tenant: the tenant.
        anchors: from :func:`~ledger._judging.collect_anchors` over the same stream.
        check_from: messages are judged from this sequence on (the chain and tree always from the first).
        limits: size and skew limits.
        workers: threads checking signatures (default: one per core).
        watch: sequences whose chain hash to keep in ``report.watched``.
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
        watch: Collection[int] = (),
    ) -> None:
        self.keyring = keyring
        self.tenant = tenant
        self.limits = limits
        self.check_from = check_from
        self.judge = Judge(keyring, tenant, anchors, check_from=check_from, window_ns=limits.skew_ns, watch=watch)
        self._workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ledger-verify")

    @property
    def report(self) -> VerifyReport:
        """What the judge found so far."""
        return self.judge.report

    @property
    def remembered(self) -> int:
        """Ids the replay check holds now (bounded by the traffic of the window)."""
        return self.judge.remembered

    def _open(self, messages: Sequence[StoredMessage]) -> list[Opened | VerificationError]:
        if len(messages) <= CHUNK or self._workers == 1:
            return _open_chunk(messages, self.keyring, self.tenant, self.limits)
        parts = [messages[i : i + CHUNK] for i in range(0, len(messages), CHUNK)]
        done = self._pool.map(lambda part: _open_chunk(part, self.keyring, self.tenant, self.limits), parts)
        return [outcome for part in done for outcome in part]

    def feed(self, messages: Sequence[StoredMessage]) -> None:
        """Verify the next messages of the stream, in order."""
        self.judge.feed(messages, self._open([m for m in messages if m.seq >= self.check_from]))

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
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as reader:
        keyring = await reader.keyring()
        first, last = await reader.span()
        anchors = Anchors()
        only = (subjects.quarantine(tenant), subjects.checkpoint(tenant))
        async for batch in reader.batches(last=last, only=only):
            collect_anchors(batch, keyring, tenant, into=anchors)
        verifier = StreamVerifier(keyring, tenant, anchors, check_from=from_seq, limits=limits, workers=workers)
        pending: asyncio.Future[None] | None = None
        chunk: list[StoredMessage] = []
        try:
            async for batch in reader.batches(last=last):
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
    if first > 1:  # the chain starts at 1: what was purged is in an archive, verified with it
        report.breaks = [b for b in report.breaks if (b.seq, b.reason) != (1, "missing")]
        detail = f"the stream starts at {first}: 1-{first - 1} were purged; verify with their archive (--archive)"
        report.breaks.insert(0, Break(1, "missing", detail))
    return report
