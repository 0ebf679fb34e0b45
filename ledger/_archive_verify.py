"""Reading across an archive and the live stream: one run from sequence 1, verified by the one judge.

The segments (:mod:`ledger._archive`) are fed to a :class:`~ledger._streaming.StreamVerifier` in order, then
the live stream from the sequence after the archive's last. So the chain, the replay window, the excuses and
the checkpoints are judged across the boundaries exactly as in one stream. Besides what the judge checks,
each segment must start where the previous ended, its start checkpoint must state the head computed so far
(the previous segment's), and its end checkpoint (a ledger key's signature) must state the head its messages
compute to: a segment whose bytes were changed fails there, named. A break inside a segment names it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from trustbus.bus import Keyring, Limits, StoredMessage, TenantStream, subjects
from trustbus.ledger._anchors import CheckpointFile, open_checkpoint_file
from trustbus.ledger._archive import Segment, segments
from trustbus.ledger._bundle import Bundle, read_bundle, read_stream
from trustbus.ledger._errors import ArchiveError, BundleError
from trustbus.ledger._judging import Anchors, collect_anchors
from trustbus.ledger._report import Break, VerifyReport
from trustbus.ledger._streaming import FEED, StreamVerifier


def _segments(directory: Path) -> list[Segment]:
    found = segments(directory)
    if not found:
        raise ArchiveError(f"{directory} holds no archive segment")
    return found


def _read(segment: Segment) -> Bundle:
    try:
        return read_bundle(segment.path)
    except BundleError as exc:
        raise ArchiveError(f"archive segment {segment.name}: {exc}") from exc


async def verify_archive(
    directory: Path,
    *,
    reader: TenantStream | None = None,
    admin_key: str | None = None,
    limits: Limits = Limits(),
    workers: int | None = None,
    progress: Callable[[int], None] = lambda seq: None,
) -> VerifyReport:
    """Verify the archive in ``directory`` and, with ``reader``, the live stream after it, as one run.

    Without ``reader`` the keyring is the last segment's, anchored on ``admin_key`` (default: its manifest's).
    ``progress(seq)`` is told the last sequence judged as it goes.

    Raises:
        ArchiveError: the directory holds no segment, or one is unreadable.
    """
    found = _segments(directory)
    tenant = str((await asyncio.to_thread(_read, found[0])).manifest["tenant"])
    if reader is not None:
        keyring = await reader.keyring()
    else:
        keyring = (await asyncio.to_thread(_read, found[-1])).keyring(admin_key=admin_key)
    anchors = Anchors()
    for segment in found:
        bundle = await asyncio.to_thread(_read, segment)
        collect_anchors([e.message() for e in bundle.entries], keyring, tenant, into=anchors)
    live: tuple[int, int] | None = None
    after = found[-1].last_seq + 1
    if reader is not None:
        first_live, last_live = await reader.span()
        live = (max(after, first_live), last_live)
        only = (subjects.quarantine(tenant), subjects.checkpoint(tenant))
        async for batch in reader.batches(last=last_live, from_seq=live[0], only=only):
            collect_anchors(batch, keyring, tenant, into=anchors)
    watch = {s.last_seq for s in found} | {s.first_seq - 1 for s in found}
    verifier = StreamVerifier(keyring, tenant, anchors, limits=limits, workers=workers, watch=watch)
    problems: list[Break] = []
    expected = 1
    for segment in found:
        bundle = await asyncio.to_thread(_read, segment)
        if segment.first_seq != expected:
            problems.append(Break(expected, "archive", f"segment {segment.name} starts at {segment.first_seq}, "
                                                       f"not {expected}"))  # fmt: skip
        if segment.first_seq > 1:
            _check_head(problems, bundle.start, "start", segment, segment.first_seq - 1, verifier, keyring, tenant)
        before = len(verifier.report.breaks)
        await asyncio.to_thread(verifier.feed, [e.message() for e in bundle.entries])
        report = verifier.report
        report.breaks[before:] = [
            Break(b.seq, b.reason, f"in archive segment {segment.name}: {b.detail}") for b in report.breaks[before:]
        ]
        if report.last_seq != segment.last_seq or report.head != segment.head:
            problems.append(Break(segment.last_seq, "archive", f"segment {segment.name}: its manifest states "
                                                                "another last sequence or head"))  # fmt: skip
        _check_head(problems, bundle.end, "end", segment, segment.last_seq, verifier, keyring, tenant)
        expected = segment.last_seq + 1
        progress(report.last_seq)
    if reader is not None and live is not None:
        chunk: list[StoredMessage] = []
        async for batch in reader.batches(last=live[1], from_seq=live[0]):
            chunk.extend(batch)
            if len(chunk) >= FEED:
                await asyncio.to_thread(verifier.feed, chunk)
                progress(chunk[-1].seq)
                chunk = []
        if chunk:
            await asyncio.to_thread(verifier.feed, chunk)
    report = verifier.finish()
    report.breaks.extend(problems)
    report.admin_key_pinned = None if reader is not None else admin_key is not None
    return report


def _check_head(
    problems: list[Break],
    checkpoint: CheckpointFile | None,
    which: str,
    segment: Segment,
    seq: int,
    verifier: StreamVerifier,
    keyring: Keyring,
    tenant: str,
) -> None:
    """A segment's start or end checkpoint must hold and state the head computed at ``seq``."""
    source = f"archive segment {segment.name} {which} checkpoint"
    problem = None
    if checkpoint is None:
        problem = "is missing"
    else:
        try:
            signed = open_checkpoint_file(checkpoint, keyring, tenant)
        except BundleError as exc:
            problem = f"does not hold: {exc}"
        else:
            if signed.through_seq != seq:
                problem = f"states sequence {signed.through_seq}, not {seq}"
            elif verifier.report.watched.get(seq) != signed.head:
                problem = f"states another chain head at {seq} than the messages compute"
    report = verifier.report
    report.anchors.append({"source": source, "seq": seq, "holds": problem is None})
    if problem is not None:
        problems.append(Break(seq if which == "end" else seq + 1, "archive", f"{source} {problem}"))
    elif which == "end":
        report.signed_through = max(report.signed_through, seq)


async def load_across(
    directory: Path, reader: TenantStream | None = None, *, admin_key: str | None = None
) -> tuple[list[StoredMessage], Keyring, str]:
    """(messages, keyring, tenant): every message of the archive in ``directory`` and, with ``reader``, of the live
    stream after it, in order (to replay across both); the keyring as :func:`verify_archive` takes it."""  # noqa: D205, D209
    found = _segments(directory)
    messages: list[StoredMessage] = []
    bundle = None
    for segment in found:
        bundle = await asyncio.to_thread(_read, segment)
        messages.extend(e.message() for e in bundle.entries)
    assert bundle is not None
    if reader is None:
        return messages, bundle.keyring(admin_key=admin_key), str(bundle.manifest["tenant"])
    first_live, _ = await reader.span()
    messages += await read_stream(reader, from_seq=max(found[-1].last_seq + 1, first_live))
    return messages, await reader.keyring(), reader.tenant
