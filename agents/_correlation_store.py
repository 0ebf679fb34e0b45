"""Bounded coordinator state: the least recently used correlations are stored in a KV bucket, and loaded back.

A partition's :class:`~agents._decision.CoordinatorState` keeps at most
``limits.correlations_in_memory`` correlations in memory (more only for the
span of one batch, which must see every correlation it touches). What a
decision needs lives in its own correlation (the envelope names it), so a
correlation not in memory is loaded with one get from ``tb_state_<T>``, key
``c<p>.<hash>`` (:func:`correlation_key`), a value the coordinator signed
(:func:`agents._signed_value.state_value`) naming the key, the partition, the
correlation and the log sequence it covers (every decision of the correlation
up to that sequence is folded into it).

Why a missing key means "nothing was ever decided in it": a coordinator starts
from an empty state and folds in every decision of its log (or a snapshot,
whose correlations were all stored first), and a correlation leaves memory only
once a copy covering everything it holds is stored (a write that fails keeps it
in memory). Copies only move forward: a write is a compare-and-set on the
key's revision, and a copy another coordinator stored that covers at least as
much is kept instead of this one. The bucket's keys expire (``max_age``, 30
days), but only long after the correlation itself has expired by the log's
clock (``limits.correlation_idle_s``, at most 14 days), when a decision would
treat it as empty anyway (:meth:`agents._decision.CoordinatorState.live`).

A value that does not verify (not signed by a coordinator key, copied from
another key, unreadable) is foreign: it is logged and the correlation is
rebuilt from the decision log (:meth:`agents._decision_log.DecisionLog.resident`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable

import msgspec

from trustbus.agents._decision import CoordinatorState, Correlation, TokenBucket
from trustbus.agents._signed_value import open_state_value, state_value
from trustbus.bus import (
    MAX_MSG_SIZE,
    Bucket,
    Bus,
    Conflict,
    Decision,
    Entry,
    Identity,
    Keyring,
    TransportError,
    subjects,
)

log = logging.getLogger("trustbus.coordinator")

DEFAULT_CAPACITY = 10_000
MAX_STATE_BYTES = MAX_MSG_SIZE - 8192  # room for the signed envelope around it
REQUESTS_AT_ONCE = 64  # gets or writes of correlations in flight together
CHANGED_AT_MOST = 256  # changed correlations left unstored between batches: a snapshot carries (or stores) these
CARRIED_BYTES = 512 * 1024  # changed correlations a snapshot carries in its own value, at most (encoded)
RETRY_S = 30.0  # after a write failed (the bucket unreachable, or missing in a tenant not provisioned again)


class StoredCorrelation(msgspec.Struct, frozen=True, kw_only=True, tag="correlation", forbid_unknown_fields=True):
    """The payload of a stored correlation: where it belongs, how far it goes, and its state."""

    key: str
    partition: int
    correlation: str
    covered: int
    decided: list[Decision]
    spent: int
    hops: dict[str, int]
    seen_taint: dict[str, list[str]]
    record_ids: dict[str, str]
    records: list[str]


class CarriedCorrelation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A changed correlation carried in a snapshot (complete through the snapshot's sequence) instead of stored
    under its own key, and the revision of its last copy there (0: none)."""  # noqa: D205, D209

    revision: int
    state: StoredCorrelation


class StoredSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot", forbid_unknown_fields=True):
    """The payload of a partition's snapshot: what the partition keeps, complete through ``covered``.

    ``carried``: encoded :class:`CarriedCorrelation` values, each a correlation
    changed since it was last stored under its own key (pre-encoded, so their
    size is known before the snapshot is).
    """

    key: str
    partition: int
    covered: int
    buckets: dict[str, tuple[float, int]]
    holds: list[Decision]
    suspensions: list[Decision]
    carried: list[msgspec.Raw] = []


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(StoredCorrelation)
_CARRIED_DECODER = msgspec.msgpack.Decoder(CarriedCorrelation)
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(StoredSnapshot)


class ForeignState(ValueError):
    """A stored correlation state that does not verify; ``revision``: where it is stored."""

    def __init__(self, why: str, revision: int) -> None:
        """``why`` it is foreign."""
        super().__init__(why)
        self.revision = revision


def correlation_key(partition: int, correlation_id: str) -> str:
    """The state bucket's key for ``correlation_id`` (any string of up to 64 characters: hashed to a key)."""
    return f"c{partition:d}.{hashlib.sha256(correlation_id.encode()).hexdigest()[:40]}"


def correlation_store(bus: Bus, partition: int, *, capacity: int = DEFAULT_CAPACITY) -> CorrelationStore:
    """The store of ``partition``'s correlations in ``bus``'s tenant, signed with its (coordinator) key."""
    return CorrelationStore(
        bus.bucket(subjects.state_bucket(bus.tenant)),
        identity=bus.identity,
        name=bus.name,
        tenant=bus.tenant,
        keyring=bus.keyring.keyring,
        partition=partition,
        capacity=capacity,
        clock=bus.clock,
    )


def snapshot_key(partition: int) -> str:
    """The state bucket's key for ``partition``'s snapshot."""
    return f"partition-{partition:d}"


class CorrelationStore:
    """Loads and stores one partition's correlations for a coordinator.

    Args:
        bucket: the tenant's state bucket.
        identity: the coordinator's key (signs what it stores).
        name: the coordinator's name.
        tenant: the tenant.
        keyring: verifies what it loads (a coordinator key, as of the store time).
        partition: the partition.
        capacity: correlations kept in memory between batches.
        clock: the signed values' ``ts``.
        changed_at_most: changed correlations left unstored between batches (:meth:`store_changed`).
    """

    def __init__(
        self,
        bucket: Bucket,
        *,
        identity: Identity,
        name: str,
        tenant: str,
        keyring: Keyring,
        partition: int,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], int],
        changed_at_most: int = CHANGED_AT_MOST,
    ) -> None:
        """Nothing is read or written until asked."""
        self.bucket = bucket
        self._identity = identity
        self._name = name
        self._tenant = tenant
        self._keyring = keyring
        self.partition = partition
        self.capacity = capacity
        self.changed_at_most = changed_at_most
        self._clock = clock
        self.loads = 0  # correlations looked up in the bucket (not in memory)
        self.writes = 0  # correlations stored
        self.snapshot_covered = 0  # the log sequence of the last snapshot stored or restored
        self.carried = 0  # correlations the restored snapshot carried
        self._snapshot_revision = 0
        self._retry_at = 0.0  # no write before this (time.monotonic) after one failed

    async def load(self, state: CoordinatorState, correlation_ids: Iterable[str]) -> dict[str, int]:
        """Bring each of ``correlation_ids`` into memory (most recently used last).

        Returns the foreign ones (correlation id -> the revision of the value
        that failed verification): the caller rebuilds those from the log.
        """
        wanted = list(dict.fromkeys(correlation_ids))
        missing = {correlation_key(self.partition, cid): cid for cid in wanted if cid not in state.correlations}
        entries = await self.bucket.get_many(list(missing)) if missing else {}  # a batch's correlations together
        self.loads += len(missing)
        loaded = {cid: self._loaded(cid, key, entries.get(key)) for key, cid in missing.items()}
        foreign: dict[str, int] = {}
        for correlation_id in wanted:
            resident = state.correlations.pop(correlation_id, None) or loaded[correlation_id]
            if isinstance(resident, ForeignState):
                log.error(
                    "foreign correlation state; rebuilding it from the decision log",
                    extra={"partition": self.partition, "correlation_id": correlation_id, "error": str(resident)},
                )
                foreign[correlation_id] = resident.revision
                continue
            state.correlations[correlation_id] = resident
        return foreign

    async def trim(self, state: CoordinatorState) -> None:
        """Store and drop the least recently used correlations beyond the capacity.

        A correlation whose write fails stays in memory (dropping it would lose
        its budget and taint): after a transport failure the next trim tries
        again; one too large to store (:data:`MAX_STATE_BYTES`) moves to the most
        recently used end, so it does not stop the others from being stored.
        """
        excess = len(state.correlations) - self.capacity
        if excess <= 0 or time.monotonic() < self._retry_at:
            return
        victims = list(itertools.islice(state.correlations.items(), excess))  # not a copy of all: every batch
        for start in range(0, len(victims), REQUESTS_AT_ONCE):
            chunk = victims[start : start + REQUESTS_AT_ONCE]
            stored = await asyncio.gather(*(self._store(state, cid, c) for cid, c in chunk))
            for (correlation_id, _), done in zip(chunk, stored, strict=True):
                kept = state.correlations.pop(correlation_id)
                if not done:
                    state.correlations[correlation_id] = kept
            if time.monotonic() < self._retry_at:
                return

    async def store_changed(self, state: CoordinatorState) -> None:
        """Store the correlations changed longest ago beyond ``changed_at_most`` (:attr:`CoordinatorState.changed`).

        A snapshot first stores every changed correlation, and the coordinator
        mediates nothing meanwhile: storing the excess a little at a time,
        between batches, bounds that pause by ``changed_at_most`` writes. A
        correlation whose write fails is named again, at the end.
        """
        excess = len(state.changed) - self.changed_at_most
        if excess <= 0 or time.monotonic() < self._retry_at:
            return
        oldest = list(itertools.islice(state.changed, excess))
        for correlation_id in oldest:
            del state.changed[correlation_id]
        due = [(cid, c) for cid in oldest if (c := state.correlations.get(cid)) is not None and c.dirty]
        for start in range(0, len(due), REQUESTS_AT_ONCE):
            chunk = due[start : start + REQUESTS_AT_ONCE]
            stored = await asyncio.gather(*(self._store(state, cid, c) for cid, c in chunk))
            for (correlation_id, _), done in zip(chunk, stored, strict=True):
                if not done:
                    state.changed[correlation_id] = None

    async def snapshot(self, state: CoordinatorState) -> bool:
        """Store a snapshot of the partition at ``state.last_seq`` and every correlation changed since it was last
        stored, carried in the snapshot or under its own key; whether it was.

        Every correlation it covers is then stored or carried, so a coordinator
        that restores it reads from the log only the decisions after it. Carried
        (most recently used first, up to :data:`CARRIED_BYTES`), the changed
        correlations cost one signed write for all, not one each: the
        coordinator mediates nothing meanwhile. They stay changed in memory, to
        be stored under their own keys later, as before.
        """  # noqa: D205
        if state.last_seq <= self.snapshot_covered or time.monotonic() < self._retry_at:
            return False
        key, covered = snapshot_key(self.partition), state.last_seq
        snapshot = StoredSnapshot(
            key=key,
            partition=self.partition,
            covered=covered,
            buckets={sender: (b.tokens, b.at_ns) for sender, b in state.buckets.items()},
            holds=list(state.holds.values()),
            suspensions=list(state.suspensions.values()),
        )
        room = min(CARRIED_BYTES, MAX_STATE_BYTES - len(_ENCODER.encode(snapshot)))
        carried, left = self._carried(state, room)
        if not await self._store_all(state, left):
            return False
        payload = _ENCODER.encode(msgspec.structs.replace(snapshot, carried=carried))
        value = state_value(self._identity, self._name, payload, tenant=self._tenant, now_ns=self._clock())
        try:
            for _ in range(3):
                try:
                    self._snapshot_revision = await self.bucket.put(key, value, revision=self._snapshot_revision)
                    self.snapshot_covered = covered
                    return True
                except Conflict:
                    entry = await self.bucket.get(key)
                    self._snapshot_revision = 0 if entry is None else entry.revision
                    theirs = None if entry is None else self._open_snapshot(entry)
                    if theirs is not None and theirs.covered >= covered:  # another coordinator's, as new
                        self.snapshot_covered = theirs.covered
                        return True
        except TransportError as exc:
            log.warning("snapshot not stored", extra={"partition": self.partition, "error": str(exc)})
            self._retry_at = time.monotonic() + RETRY_S
        return False

    def _carried(self, state: CoordinatorState, room: int) -> tuple[list[msgspec.Raw], list[tuple[str, Correlation]]]:
        """The changed correlations a snapshot carries (encoded, within ``room`` bytes), and those left to store."""
        carried: list[msgspec.Raw] = []
        left: list[tuple[str, Correlation]] = []
        for correlation_id, correlation in reversed(state.correlations.items()):
            if not correlation.dirty:
                continue
            encoded = _ENCODER.encode(
                CarriedCorrelation(
                    revision=correlation.revision, state=self._stored(state, correlation_id, correlation)
                )
            )
            if len(encoded) <= room:
                room -= len(encoded)
                carried.append(msgspec.Raw(encoded))
            else:
                left.append((correlation_id, correlation))
        return carried, left

    async def _store_all(self, state: CoordinatorState, correlations: list[tuple[str, Correlation]]) -> bool:
        """Store ``correlations``, some at once; whether every one was."""
        for start in range(0, len(correlations), REQUESTS_AT_ONCE):
            chunk = correlations[start : start + REQUESTS_AT_ONCE]
            if not all(await asyncio.gather(*(self._store(state, cid, c) for cid, c in chunk))):
                return False
        return True

    async def restore(self, state: CoordinatorState) -> bool:
        """Start ``state`` (empty) from the partition's snapshot; whether there was a valid one.

        Without one the caller folds in the whole log. A snapshot that does not verify is logged and ignored.
        """
        entry = await self.bucket.get(snapshot_key(self.partition))
        self._snapshot_revision = 0 if entry is None else entry.revision
        snapshot = None if entry is None else self._open_snapshot(entry)
        if snapshot is None:
            return False
        state.last_seq = snapshot.covered
        state.buckets = {sender: TokenBucket(tokens, at_ns) for sender, (tokens, at_ns) in snapshot.buckets.items()}
        state.holds = {d.envelope_id: d for d in snapshot.holds}
        state.suspensions = {d.envelope_id: d for d in snapshot.suspensions}
        for raw in reversed(snapshot.carried):  # carried most recently used first
            carried = _CARRIED_DECODER.decode(raw)
            correlation = _resident(carried.state, revision=carried.revision)
            correlation.dirty = True  # not under its own key as of the snapshot
            state.correlations[carried.state.correlation] = correlation
            state.changed[carried.state.correlation] = None
        self.snapshot_covered = snapshot.covered
        self.carried = len(snapshot.carried)
        return True

    def _open_snapshot(self, entry: Entry) -> StoredSnapshot | None:
        """The snapshot in ``entry``, or None (logged) if there is none or it is foreign."""
        if entry.deleted:
            return None
        key = snapshot_key(self.partition)
        try:
            snapshot = _SNAPSHOT_DECODER.decode(
                open_state_value(entry.value, keyring=self._keyring, stored_ns=entry.stored_ns)
            )
            if (snapshot.key, snapshot.partition) != (key, self.partition):
                raise ValueError(f"the snapshot of {snapshot.key}, not of {key}")
            for raw in snapshot.carried:
                stored = _CARRIED_DECODER.decode(raw).state
                expected = correlation_key(self.partition, stored.correlation)
                if (stored.key, stored.partition) != (expected, self.partition):
                    raise ValueError(f"it carries the state of {stored.correlation} at {stored.key}")
        except (ValueError, msgspec.DecodeError) as exc:
            log.error("foreign snapshot ignored", extra={"partition": self.partition, "error": str(exc)})
            return None
        return snapshot

    def _loaded(self, correlation_id: str, key: str, entry: Entry | None) -> Correlation | ForeignState:
        """The state of ``correlation_id`` stored as ``entry`` at ``key`` (empty if none), or why it is foreign."""
        if entry is None or entry.deleted:
            return Correlation(revision=0 if entry is None else entry.revision)
        try:
            stored = self._open(entry.value, key=key, correlation_id=correlation_id, stored_ns=entry.stored_ns)
        except ValueError as exc:
            return ForeignState(str(exc), entry.revision)
        return _resident(stored, revision=entry.revision)

    def _open(self, value: bytes, *, key: str, correlation_id: str, stored_ns: int) -> StoredCorrelation:
        payload = open_state_value(value, keyring=self._keyring, stored_ns=stored_ns)
        try:
            stored = _DECODER.decode(payload)
        except msgspec.DecodeError as exc:
            raise ValueError(f"a coordinator's state value that holds no correlation: {exc}") from exc
        if (stored.key, stored.partition, stored.correlation) != (key, self.partition, correlation_id):
            raise ValueError(f"the state of {stored.correlation} at {stored.key}, not of {correlation_id} at {key}")
        return stored

    def _stored(self, state: CoordinatorState, correlation_id: str, correlation: Correlation) -> StoredCorrelation:
        """``correlation`` as stored: complete through ``state.last_seq``."""
        return StoredCorrelation(
            key=correlation_key(self.partition, correlation_id),
            partition=self.partition,
            correlation=correlation_id,
            covered=state.last_seq,
            decided=list(correlation.decided.values()),
            spent=correlation.spent,
            hops=correlation.hops,
            seen_taint={agent: sorted(taint) for agent, taint in correlation.seen_taint.items()},
            record_ids=correlation.record_ids,
            records=sorted(correlation.records),
        )

    async def _store(self, state: CoordinatorState, correlation_id: str, correlation: Correlation) -> bool:
        """Store ``correlation`` as complete through ``state.last_seq``, unless a copy at least as new is there."""
        if not correlation.dirty:
            return True
        stored = self._stored(state, correlation_id, correlation)
        key, covered = stored.key, stored.covered
        payload = _ENCODER.encode(stored)
        if len(payload) > MAX_STATE_BYTES:
            log.warning(
                "correlation too large to store; kept in memory",
                extra={"partition": self.partition, "correlation_id": correlation_id, "bytes": len(payload)},
            )
            return False
        value = state_value(self._identity, self._name, payload, tenant=self._tenant, now_ns=self._clock())
        revision = correlation.revision
        try:
            for _ in range(3):
                try:
                    correlation.revision = await self.bucket.put(key, value, revision=revision)
                    correlation.covered = covered
                    correlation.dirty = False
                    self.writes += 1
                    return True
                except Conflict:
                    entry = await self.bucket.get(key)
                    revision = 0 if entry is None else entry.revision
                    if entry is None or entry.deleted:
                        continue
                    try:
                        theirs = self._open(
                            entry.value, key=key, correlation_id=correlation_id, stored_ns=entry.stored_ns
                        )
                    except ValueError:
                        continue  # foreign: ours replaces it
                    if theirs.covered >= covered:  # another coordinator's copy holds all of ours
                        correlation.revision, correlation.dirty = entry.revision, False
                        return True
        except TransportError as exc:
            log.warning(
                "correlation state not stored; kept in memory",
                extra={"partition": self.partition, "correlation_id": correlation_id, "error": str(exc)},
            )
            self._retry_at = time.monotonic() + RETRY_S
            return False
        log.warning("correlation state kept changing; kept in memory", extra={"correlation_id": correlation_id})
        return False


def _resident(stored: StoredCorrelation, *, revision: int) -> Correlation:
    """A stored (or carried) correlation back in memory; ``revision``: its last copy's in the bucket."""
    return Correlation(
        decided={d.envelope_id: d for d in stored.decided},
        spent=stored.spent,
        hops=dict(stored.hops),
        seen_taint={agent: frozenset(taint) for agent, taint in stored.seen_taint.items()},
        record_ids=dict(stored.record_ids),
        records=set(stored.records),
        last_ns=max((d.decided_ns for d in stored.decided), default=0),
        covered=stored.covered,
        revision=revision,
    )
