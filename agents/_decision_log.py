"""The decision log (``tb.<T>.decision.<partition>``): read back into a :class:`CoordinatorState`, appended to.

Decisions are appended with compare-and-set on the log's last sequence
(:meth:`bus.SubjectLog.append`): a partition's decision subject is a single,
totally ordered log. A coordinator whose state is behind gets
:class:`~bus.Conflict`, reads the decisions it missed (:meth:`DecisionLog.catch_up`)
and decides again; so two coordinators never decide one envelope twice or spend
one budget twice. :meth:`DecisionLog.record` (one envelope) and
:meth:`DecisionLog.record_group` (a batch, its decisions in one record:
:func:`group_records`) are that loop, signed by any :class:`Signer`, so it
runs on any :class:`~bus.SubjectLog` (the in-memory ones of
:mod:`bus.testing` included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

import msgspec

from trustbus.agents import _metrics as metrics
from trustbus.agents._correlation_store import CorrelationStore
from trustbus.agents._decision import CoordinatorState, Correlation, Deferral, Undo
from trustbus.agents._policy import Policy
from trustbus.bus import (
    HEADER_MSG_ID,
    Conflict,
    Decision,
    Envelope,
    Keyring,
    Sealed,
    SubjectLog,
    VerificationError,
    encode_decision,
    encode_decision_group,
    new_envelope,
    open_envelope,
    recorded_decisions,
)
from trustbus.bus import decision_id as id_of_decision

log = logging.getLogger("trustbus.coordinator")

GROUP_RECORD_BYTES = 128 * 1024
"""The most decisions one group record's payload holds (encoded), well under what a receiver reads
(:class:`~bus.Limits`' ``max_bytes``); a larger group is recorded in several."""
LOAD_AHEAD = 1000  # decisions read before their correlations are loaded together (and, at start, trimmed)
CONFLICT_LOGGED = "decision append conflicted, caught up"
"""The message of the warning logged on each conflict; its fields are that conflict's :class:`Conflicts`."""


@dataclass(frozen=True, slots=True)
class Record:
    """Decisions, the signed decision envelope that records them, and that envelope sealed.

    One decision is recorded on its own (the envelope's payload is the
    decision, its correlation the decided envelope's); a group's are recorded
    together (``grouped``), each named by the record's id and its position.
    """

    decisions: tuple[Decision, ...]
    envelope: Envelope
    sealed: Sealed
    grouped: bool = False

    @property
    def ids(self) -> list[str]:
        """The id of each decision, in order."""
        return [id_of_decision(self.envelope.id, i, grouped=self.grouped) for i in range(len(self.decisions))]


class Pending(Protocol):
    """Something to decide: it carries its envelope (a :class:`~bus.Delivery` does)."""

    @property
    def envelope(self) -> Envelope:
        """The envelope to decide."""


P = TypeVar("P", bound=Pending)


class Signer(Protocol):
    """Who signs decision records: a coordinator's tenant, name, clock and key (a :class:`~bus.Bus` is one)."""

    @property
    def tenant(self) -> str:
        """The tenant the records belong to."""

    @property
    def name(self) -> str:
        """The coordinator's name, the records' sender."""

    @property
    def clock(self) -> Callable[[], int]:
        """The ``ts`` of each record (unix ns)."""

    def seal(self, envelope: Envelope) -> Sealed:
        """Sign ``envelope`` with the coordinator's key."""


def decision_record(bus: Signer, cause: Envelope, decision: Decision) -> Record:
    """``decision`` about ``cause``, recorded on its own in a decision envelope signed as the coordinator ``bus``."""
    record = new_envelope(
        tenant=bus.tenant,
        kind="decision",
        sender=bus.name,
        to=(),
        correlation_id=cause.correlation_id,
        causation_id=cause.id,
        hop=decision.hop,
        taint=decision.effective_taint,
        content_type="application/msgpack",
        payload=encode_decision(decision),
        now_ns=bus.clock(),
    )
    return Record((decision,), record, bus.seal(record))


def group_records(bus: Signer, decisions: Sequence[Decision]) -> list[Record]:
    """``decisions`` (made in this order) recorded together, in as few envelopes as :data:`GROUP_RECORD_BYTES`
    allows, signed as the coordinator ``bus``.

    A group record is the coordinator's own: its correlation is its own id, it
    has no cause and no hop, and it carries the taint of every decision in it.
    """  # noqa: D205
    records: list[Record] = []
    chunk: list[Decision] = []
    encoded: list[bytes] = []
    size = 0
    for decision in decisions:
        item = encode_decision(decision)
        if chunk and size + len(item) > GROUP_RECORD_BYTES:
            records.append(_group_record(bus, chunk, encoded))
            chunk, encoded, size = [], [], 0
        chunk.append(decision)
        encoded.append(item)
        size += len(item)
    if chunk:
        records.append(_group_record(bus, chunk, encoded))
    return records


def _group_record(bus: Signer, decisions: list[Decision], encoded: list[bytes]) -> Record:
    record = new_envelope(
        tenant=bus.tenant,
        kind="decision",
        sender=bus.name,
        to=(),
        taint=(label for decision in decisions for label in decision.effective_taint),
        content_type="application/msgpack",
        payload=encode_decision_group(encoded),
        now_ns=bus.clock(),
    )
    return Record(tuple(decisions), record, bus.seal(record), grouped=True)


@dataclass(slots=True)
class Conflicts:
    """What appends that found another coordinator's decision first cost: counted, nothing more."""

    conflicts: int = 0
    caught_up: int = 0  # decisions the catch-ups after them read
    catch_up_s: float = 0.0
    discarded: int = 0  # decisions made, then made again on the caught-up state


class DecisionLog:
    """Follows the decision log; ``state`` is the fold of every decision read or appended so far.

    Only decisions signed by a key with the ``coordinator`` role (as it stood
    when the record was stored) are applied; anything else on the subject is
    logged and skipped. A decision is judged by its store time, not by the
    ``ts`` its coordinator's clock gave it, so a coordinator whose clock was
    stepped never loses what it decided; a second copy of one record (the same
    record id at another sequence) is skipped as a replay.
    """

    def __init__(
        self, log: SubjectLog, keyring: Keyring, policy: Policy, *, store: CorrelationStore | None = None
    ) -> None:
        """Nothing is read until :meth:`catch_up`. ``log``: one partition's decisions
        (:func:`bus.subjects.decision`), or all of them (:func:`bus.subjects.all_decisions`).
        ``store``: where correlations beyond its capacity go (None: all stay in memory)."""  # noqa: D205, D209
        self.log = log
        self._keyring = keyring
        self._policy = policy
        self.store = store
        self.state = CoordinatorState()
        self.conflicts = Conflicts()  # totals since this log was created
        self.folded = 0  # decisions folded into the state (read or appended) since this log was created

    @property
    def decision_ids(self) -> dict[str, str]:
        """Envelope id -> id of its last decision, of every correlation in memory (for tests)."""
        return {k: r for c in self.state.correlations.values() for k, r in c.record_ids.items()}

    def decision_id(self, decision: Decision) -> str:
        """The id of ``decision`` (whose correlation is in memory), as its record names it."""
        return self.state.correlation(decision.correlation_id).record_ids[decision.envelope_id]

    async def restore(self) -> None:
        """Fold in the whole log, starting from the partition's snapshot if the store has a valid one."""
        if self.store is not None and await self.store.restore(self.state):
            log.info(
                "state restored from a snapshot",
                extra={
                    "partition": self.store.partition,
                    "covered": self.state.last_seq,
                    "carried": self.store.carried,
                },
            )
        elif self.store is not None:
            log.warning(
                "no valid snapshot; rebuilding the state from the whole decision log",
                extra={"partition": self.store.partition},
            )
        await self.catch_up(trim=True)

    async def snapshot(self) -> bool:
        """Store the changed correlations and a snapshot of the partition (if there is a store); whether it was."""
        return self.store is not None and await self.store.snapshot(self.state)

    async def catch_up(self, *, trim: bool = False) -> int:
        """Apply every decision appended after the last one applied; how many decisions were read.

        ``trim``: keep the correlations in memory within the store's capacity
        as it goes (only where nothing holds on to one: at start).
        """
        pending: list[tuple[Decision | None, str, int]] = []  # None: an unusable record, skipped
        read = 0
        async for record in self.log.read(after=self.state.last_seq):
            opened = self._open(record.body, record.headers, record.seq, record.stored_ns)
            if opened is None:
                pending.append((None, "", record.seq))
            else:
                pending.extend((decision, decision_id, record.seq) for decision_id, decision in opened)
                read += len(opened)
            if len(pending) >= LOAD_AHEAD:
                await self._apply_all(pending, trim=trim)
        await self._apply_all(pending, trim=trim)
        return read

    async def _apply_all(self, pending: list[tuple[Decision | None, str, int]], *, trim: bool) -> None:
        """Load the correlations of ``pending`` decisions together, fold the decisions in, in order; empty it."""
        await self.resident(decision.correlation_id for decision, _, _ in pending if decision is not None)
        for decision, decision_id, seq in pending:
            if decision is None:
                self.state.last_seq = max(self.state.last_seq, seq)
            else:
                self._apply(decision, decision_id, seq)
        pending.clear()
        if trim:
            await self.trim()

    def _open(
        self, body: bytes, headers: dict[str, str], seq: int, stored_ns: int
    ) -> list[tuple[str, Decision]] | None:
        """The decisions in one stored decision envelope with their ids; None (logged) if it is unusable."""
        try:
            opened = open_envelope(body, headers, keyring=self._keyring, received_ns=stored_ns, at_store=True)
            if opened.grant.role != "coordinator":
                raise VerificationError(f"decision signed by a {opened.grant.role} key")
            return recorded_decisions(opened.envelope)
        except (VerificationError, msgspec.DecodeError, ValueError) as exc:
            log.error("unusable decision record skipped", extra={"stream_seq": seq, "error": str(exc)})
            return None

    def _apply(self, decision: Decision, decision_id: str, seq: int) -> None:
        """Fold in a verified decision, unless a copy of its record was folded in before (a replay)."""
        correlation = self.state.correlation(decision.correlation_id)
        if seq > correlation.covered and decision_id in correlation.records:
            log.error(
                "unusable decision record skipped",
                extra={"stream_seq": seq, "error": f"decision {decision_id} stored again"},
            )
            self.state.last_seq = max(self.state.last_seq, seq)
            return
        self.state.apply(decision, self._policy, seq=seq, record_id=decision_id)
        self.folded += 1

    async def resident(self, correlation_ids: Iterable[str]) -> None:
        """Bring these correlations into memory (from the store), before deciding about them."""
        if self.store is None:
            return
        for correlation_id, revision in (await self.store.load(self.state, correlation_ids)).items():
            rebuilt = await self._rebuild(correlation_id)
            rebuilt.revision, rebuilt.dirty = revision, True  # the foreign value is replaced at its next write
            self.state.correlations[correlation_id] = rebuilt
            self.state.changed.setdefault(correlation_id)

    async def _rebuild(self, correlation_id: str) -> Correlation:
        """``correlation_id``'s state, folded from every decision about it in the log up to the last one applied."""
        state = CoordinatorState()
        async for record in self.log.read(after=0):
            if record.seq > self.state.last_seq:
                break
            for decision_id, decision in self._open(record.body, record.headers, record.seq, record.stored_ns) or ():
                if decision.correlation_id == correlation_id:
                    state.apply(decision, self._policy, seq=record.seq, record_id=decision_id)
        return state.correlation(correlation_id) if correlation_id in state.correlations else Correlation()

    async def trim(self) -> None:
        """Store and drop the least recently used correlations beyond the store's capacity, and store the
        correlations changed longest ago beyond the store's ``changed_at_most`` (if there is a store)."""  # noqa: D205, D209
        if self.store is not None:
            await self.store.trim(self.state)
            await self.store.store_changed(self.state)

    async def record(
        self, cause: Envelope, make: Callable[[], Decision | Deferral | None], *, by: Signer
    ) -> Decision | Deferral | None:
        """Append what ``make()`` decides about ``cause``, deciding again on a fresh state until no one else got
        there first; what it decided last (None or a deferral: nothing appended)."""  # noqa: D205, D209
        while True:
            await self.resident([cause.correlation_id])
            result = make()
            if result is None or isinstance(result, Deferral):
                return result
            try:
                await self.append(decision_record(by, cause, result))
            except Conflict:
                await self._catch_up_after_conflict(discarded=1)
                continue
            return result

    async def record_group(
        self,
        items: Sequence[P],
        decide: Callable[[P], Awaitable[Decision | None]],
        *,
        by: Signer,
    ) -> set[str]:
        """Decide the undecided ``items`` in order and append their decisions together, all again on a conflict.

        ``decide(item)`` is called for each item whose envelope the state has no
        decision about; it sees the state with the decisions about the items
        before it applied (provisionally), and returns the decision, or None for
        nothing to append (refused, deferred). On a :class:`~bus.Conflict` the
        provisional decisions are taken back out, the log is caught up, and every
        item still undecided is decided again. Returns the ids of the envelopes
        whose decisions this call appended.
        """
        while True:
            await self.resident(item.envelope.correlation_id for item in items)
            expected = self.state.last_seq
            undo: Undo = []
            fresh: list[tuple[Envelope, Decision]] = []
            for item in items:
                if self.state.decided_about(item.envelope):
                    continue
                decision = await decide(item)
                if decision is None:
                    continue
                self.state.apply(decision, self._policy, seq=expected, undo=undo)
                fresh.append((item.envelope, decision))
            if not fresh:
                return set()
            records = (
                [decision_record(by, *fresh[0])]
                if len(fresh) == 1
                else group_records(by, [decision for _, decision in fresh])
            )
            try:
                await self.append_applied(records, after=expected)
            except Conflict:
                CoordinatorState.rollback(undo)
                await self._catch_up_after_conflict(discarded=len(fresh))
                continue
            except BaseException:
                CoordinatorState.rollback(undo)
                raise
            return {envelope.id for envelope, _ in fresh}

    async def _catch_up_after_conflict(self, *, discarded: int) -> None:
        """Catch up after an append another coordinator's got ahead of, counting it and logging its cost."""
        began = time.perf_counter()
        caught_up = await self.catch_up()
        cost = Conflicts(1, caught_up, time.perf_counter() - began, discarded)
        total = self.conflicts
        total.conflicts += 1
        total.caught_up += cost.caught_up
        total.catch_up_s += cost.catch_up_s
        total.discarded += discarded
        log.warning(CONFLICT_LOGGED, extra={"subject": self.log.subject, **asdict(cost)})

    async def append(self, record: Record) -> None:
        """Append a record right after the last decision applied, and apply its decisions.

        Raises:
            Conflict: another record was appended first (:meth:`catch_up`, decide again).
        """
        seq = await self._store(record.sealed, after=self.state.last_seq)
        for decision, decision_id in zip(record.decisions, record.ids, strict=True):
            self.state.apply(decision, self._policy, seq=seq, record_id=decision_id)
            self.folded += 1
            _decided(decision)

    async def append_applied(self, records: Sequence[Record], *, after: int) -> None:
        """Store records of decisions the caller applied to the state provisionally (at ``after``), in order.

        Each is its own compare-and-set append (a group's decisions are usually
        one record). This sets their decision ids and the state's last sequence,
        or raises :class:`~bus.Conflict` (the caller then undoes what it
        applied; records stored before the conflict are read back by the
        catch-up like anyone else's).
        """
        last = after
        for record in records:
            last = await self._store(record.sealed, after=last)
        for record in records:
            for decision, decision_id in zip(record.decisions, record.ids, strict=True):
                self.state.recorded(decision, decision_id)
                self.folded += 1
                _decided(decision)
        self.state.last_seq = last

    async def _store(self, sealed: Sealed, *, after: int) -> int:
        """Store one decision record if the last decision is still at ``after``; its sequence."""
        appended = await self.log.append(sealed.body, dict(sealed.headers), after=after)
        if appended.duplicate:  # an earlier attempt landed: read it back like anyone else's
            raise Conflict(f"decision record {sealed.headers.get(HEADER_MSG_ID)} was stored before")
        return appended.seq


def _decided(decision: Decision) -> None:
    metrics.decided(decision)
    log.info(
        "decided",
        extra={
            "envelope_id": decision.envelope_id,
            "sender": decision.sender,
            "verdict": decision.verdict,
            "reasons": list(decision.reasons),
        },
    )
