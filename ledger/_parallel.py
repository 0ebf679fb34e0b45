"""Signature checks on every core, and a whole run of messages projected into a directory.

PyNaCl (cffi) releases the GIL while libsodium verifies a signature, and
that is nearly all the cost of :func:`bus.open_envelope`, so a thread pool
verifies on every core without copying messages to other processes. What is
sequential — the chain, the replay check — stays in the
:class:`~ledger._projector.Projector`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trustbus.bus import Keyring, Limits, Opened, StoredMessage, VerificationError, open_envelope, subjects
from trustbus.ledger._projector import Position, Projector
from trustbus.ledger._rows import KeyRow, Rows
from trustbus.ledger._segments import SegmentStore

CHUNK = 1024


def _open_chunk(
    messages: Sequence[StoredMessage], keyring: Keyring, tenant: str, limits: Limits
) -> list[Opened | VerificationError]:
    outcomes: list[Opened | VerificationError] = []
    for m in messages:
        try:
            outcomes.append(
                open_envelope(
                    m.body,
                    m.headers,
                    keyring=keyring,
                    received_ns=m.stored_ns,
                    limits=limits,
                    stream_seq=m.seq,
                    recipient=subjects.mediated_recipient(tenant, m.subject),
                    at_store=subjects.judged_at_store(tenant, m.subject),
                )
            )
        except VerificationError as exc:
            outcomes.append(exc)
    return outcomes


def open_all(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    tenant: str,
    *,
    limits: Limits = Limits(),
    workers: int | None = None,
) -> list[Opened | VerificationError]:
    """Every check of :func:`bus.open_envelope` but the replay check, for every message, on ``workers`` threads.

    Args:
        messages: stored messages.
        keyring: the tenant's keyring (only read).
        tenant: the tenant.
        limits: size and skew limits.
        workers: threads (default: one per core).

    Returns:
        Per message, in order: the opened envelope, or why it failed. Feed them to
        :meth:`~ledger._projector.Projector.apply`, which adds the replay check.
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(messages) <= CHUNK:
        return _open_chunk(messages, keyring, tenant, limits)
    chunks = [messages[i : i + CHUNK] for i in range(0, len(messages), CHUNK)]
    with ThreadPoolExecutor(workers, thread_name_prefix="ledger-verify") as pool:
        parts = pool.map(lambda chunk: _open_chunk(chunk, keyring, tenant, limits), chunks)
        return [outcome for part in parts for outcome in part]


def project_messages(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    tenant: str,
    data_dir: Path,
    *,
    outcomes: Sequence[Opened | VerificationError] | None = None,
    limits: Limits = Limits(),
    slice_size: int = 20_000,
    after: Position | None = None,
) -> Position:
    """Project a run of messages into a new projection directory (e.g. for an export).

    The messages are projected a slice at a time; each slice is committed (one
    segment per table) on a writer thread while the next is projected.

    Args:
        messages: the stream from sequence 1 (or from after ``after``), in order.
        keyring: the tenant's keyring.
        tenant: the tenant.
        data_dir: an empty or new directory.
        outcomes: the messages' signature checks, if already made (see :func:`open_all`).
        limits: size and skew limits.
        slice_size: messages per commit.
        after: the position before the first message (a partial bundle's); default: the stream's start.

    Returns:
        The position after the last message.
    """
    checked = open_all(messages, keyring, tenant, limits=limits) if outcomes is None else outcomes
    projector = Projector(tenant, keyring, position=after, limits=limits)
    keys = [KeyRow.of(g) for g in keyring.grants()]
    store = SegmentStore.open(data_dir, tenant)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-write") as writer:
            commits = []
            for start in range(0, len(messages), slice_size):
                rows = Rows()
                for message, outcome in zip(
                    messages[start : start + slice_size], checked[start : start + slice_size], strict=True
                ):
                    projector.apply(message, checked=outcome, into=rows)
                commits.append(writer.submit(store.commit, rows, projector.position, since_checkpoint=0, keys=keys))
            for commit in commits:
                commit.result()
    finally:
        store.close()
    return projector.position
