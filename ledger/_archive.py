"""Retention: old history moved out of the live stream into sealed, signed archive segments, without a break.

An archive is a directory of **segments**, each an audit bundle (:mod:`ledger._bundle`, the same files) of a
run of the stream, named ``<first_seq>-<last_seq>`` (twelve digits each) so they sort in stream order. A
segment's ``end.checkpoint`` is a ledger key's signed chain head at its last sequence; every segment but the
first starts with a ``start.checkpoint`` stating the head it chains from: the previous segment's signed head.
So the segments chain from sequence 1, and the live stream chains from the last of them: verifying reads
across both (:mod:`ledger._archive_verify`).

:func:`archive` appends segments after the last one (the first starts at sequence 1); it reads the stream and
never changes it. :func:`purge_archived` then removes from the live stream what the archive holds, and only
below what is still needed there (:func:`consumer_needs`; the coordinator's snapshots, ``agents.retention_needs``):
a purge that would cut into what a reader needs is refused, naming the reader.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from trustbus.bus import Identity, Refused, TenantStream
from trustbus.ledger._bundle import (
    BundleEntry,
    KeyringRevision,
    check_ledger_signer,
    keyring_of,
    read_keyring_revisions,
    signed_bundle,
    write_bundle,
)
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._errors import ArchiveError

SEGMENT_MESSAGES = 100_000  # at most, per segment: what one segment's verification holds in memory


@dataclass(frozen=True)
class Segment:
    """One segment of an archive, as its manifest says (verified only by :func:`ledger.verify_archive`)."""

    path: Path
    first_seq: int
    last_seq: int
    head: bytes  # the chain hash at last_seq

    @property
    def name(self) -> str:
        """The segment's directory name."""
        return self.path.name


@dataclass(frozen=True)
class Need:
    """Something still needs the live stream from ``from_seq`` on: purging at or above it is refused."""

    from_seq: int
    who: str


def segment_name(first_seq: int, last_seq: int) -> str:
    """The directory name of the segment of ``first_seq``-``last_seq``."""
    return f"{first_seq:012d}-{last_seq:012d}"


def segments(directory: Path) -> list[Segment]:
    """The segments of the archive in ``directory``, in order (none if it does not exist); ArchiveError if a
    manifest is unreadable."""  # noqa: D205, D209
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            found.append(
                Segment(path, int(manifest["first_seq"]), int(manifest["last_seq"]), bytes.fromhex(manifest["head"]))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"archive segment {path.name} has no readable manifest: {exc}") from exc
    return found


def archived_through(directory: Path) -> int:
    """The last sequence the archive in ``directory`` holds (0: none)."""
    found = segments(directory)
    return found[-1].last_seq if found else 0


async def archive(
    reader: TenantStream,
    directory: Path,
    *,
    signer: Identity,
    signer_name: str,
    through: int,
    segment_messages: int = SEGMENT_MESSAGES,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[Segment]:
    """Write the stream's messages after the archive's last sequence through ``through`` as new segments.

    Each segment is signed by ``signer`` (a ``ledger`` key of ``signer_name``) and written whole or not at
    all (to a hidden directory, then renamed). ``progress(done, total)`` is told as messages are read.
    Returns the segments written (none if the archive already reaches ``through``).

    Raises:
        ArchiveError: the stream no longer holds the sequences after the archive's last (purged unarchived).
        BundleError: ``signer`` is not a ``ledger`` key of ``signer_name``.
    """
    tenant = reader.tenant
    existing = segments(directory)
    start = existing[-1].last_seq + 1 if existing else 1
    previous = existing[-1].head if existing else GENESIS
    first_live, last_live = await reader.span()
    through = min(through, last_live)
    if through < start:
        return []
    if first_live > start:
        raise ArchiveError(
            f"{reader.stream} starts at sequence {first_live}: {start}-{first_live - 1} are in no segment of "
            f"{directory} (another archive holds them, or they were purged unarchived)"
        )
    revisions = await read_keyring_revisions(reader)
    admin_key = await reader.admin_key()
    check_ledger_signer(keyring_of(tenant, admin_key, revisions), tenant, signer, signer_name, what="an archive")
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    written: list[Segment] = []
    entries: list[BundleEntry] = []

    async def write(entries: list[BundleEntry], previous: bytes) -> Segment:
        made = (directory, entries, previous, revisions, admin_key, signer, signer_name, tenant)
        return await asyncio.to_thread(_write, *made)

    head = previous
    expected = start
    async for batch in reader.batches(last=through, from_seq=start):
        for m in batch:
            if m.seq != expected:
                raise ArchiveError(f"reading {reader.stream}: got sequence {m.seq}, expected {expected}")
            expected += 1
            head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
            entries.append(BundleEntry(m.seq, m.subject, m.stored_ns, m.headers, m.body, head))
            if len(entries) >= segment_messages:
                written.append(await write(entries, previous))
                previous, entries = head, []
        progress(expected - start, through - start + 1)
    if entries:
        written.append(await write(entries, previous))
    return written


def _write(
    directory: Path,
    entries: list[BundleEntry],
    previous: bytes,
    revisions: list[KeyringRevision],
    admin_key: str,
    signer: Identity,
    signer_name: str,
    tenant: str,
) -> Segment:
    first, last, head = entries[0].seq, entries[-1].seq, entries[-1].chain
    bundle = signed_bundle(
        tenant,
        admin_key,
        entries,
        revisions,
        first=first,
        head=head,
        previous=previous,
        signer=signer,
        name=signer_name,
    )
    final = directory / segment_name(first, last)
    hidden = directory / f".{final.name}.{os.getpid()}"
    shutil.rmtree(hidden, ignore_errors=True)
    write_bundle(hidden, bundle)
    hidden.rename(final)
    return Segment(final, first, last, head)


async def consumer_needs(reader: TenantStream) -> list[Need]:
    """What the stream's durable consumers still need: each with messages not yet settled, from the first."""
    needed = await reader.still_needed()
    return [Need(seq, f"consumer {name} has not settled what it reads from {seq}") for name, seq in needed.items()]


async def purge_archived(reader: TenantStream, directory: Path, *, through: int, needs: Iterable[Need] = ()) -> int:
    """Remove the live stream's messages through ``through``; the new first sequence.

    Refused (ArchiveError, nothing purged) unless the archive in ``directory`` holds every sequence through
    ``through`` and nothing in ``needs`` needs one of them.
    """
    held = archived_through(directory)
    if through > held:
        raise ArchiveError(f"refused: purging through {through} would remove what no segment holds (the archive "
                           f"in {directory} ends at {held}); archive first")  # fmt: skip
    blocking = sorted((need for need in needs if need.from_seq <= through), key=lambda need: need.from_seq)
    if blocking:
        first = blocking[0]
        raise ArchiveError(
            f"refused: purging through {through} would cut what is still needed from sequence {first.from_seq}: "
            f"{first.who}" + (f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else "")
        )
    first_live, _ = await reader.span()
    if through >= first_live:
        try:
            await reader.purge_before(through + 1)
        except Refused as exc:
            raise ArchiveError(
                f"the server refused the purge ({exc}): the archive is written and the live stream keeps its "
                "history. A tenant stream denies purges unless it was made with `trustbus init --purgeable` "
                "(nats-server cannot lift deny_purge later), and only the admin may purge"
            ) from exc
    return max(first_live, through + 1)
