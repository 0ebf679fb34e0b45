"""The decision log (``tb.<T>.decision.<partition>``): read back into a :class:`CoordinatorState`, appended to.

Decisions are appended with compare-and-set on the log's last sequence
(:meth:`bus.SubjectLog.append`): a partition's decision subject is a single,
totally ordered log. A coordinator whose state is behind gets
:class:`~bus.Conflict`, reads the decisions it missed (:meth:`DecisionLog.catch_up`)
and decides again; so two coordinators never decide one envelope twice or spend
one budget twice. :meth:`DecisionLog.record` (one envelope) and
:meth:`DecisionLog.record_group` (a batch) are that loop, signed by any
:class:`Signer`, so it runs on any :class:`~bus.SubjectLog` (the in-memory
ones of :mod:`bus.testing` included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

import msgspec

from trustbus.agents import _metrics as metrics
from trustbus.agents._decision import CoordinatorState, Deferral, Undo
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
    decode_decision,
    encode_decision,
    new_envelope,
    new_id,
    open_envelope,
)

log = logging.getLogger("trustbus.coordinator")

# Fewer decisions than this are appended one by one: an atomic commit costs a few ms of its own.
ATOMIC_MIN = 8
CONFLICT_LOGGED = "decision append conflicted, caught up"
"""The message of the warning logged on each conflict; its fields are that conflict's :class:`Conflicts`."""

Record = tuple[Decision, Envelope, Sealed]
"""A decision, the signed decision envelope that records it, and that envelope sealed."""


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
    """``decision`` about ``cause``, recorded in a decision envelope signed as the coordinator ``bus``."""
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
    return decision, record, bus.seal(record)


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

    def __init__(self, log: SubjectLog, keyring: Keyring, policy: Policy) -> None:
        """Nothing is read until :meth:`catch_up`. ``log``: one partition's decisions
        (:func:`bus.subjects.decision`), or all of them (:func:`bus.subjects.all_decisions`)."""  # noqa: D205, D209
        self.log = log
        self._keyring = keyring
        self._policy = policy
        self.state = CoordinatorState()
        self.decision_ids: dict[str, str] = {}  # envelope id -> id of the record of its last decision
        self._records: set[str] = set()  # ids of the decision records applied
        self.conflicts = Conflicts()  # totals since this log was created

    async def catch_up(self) -> None:
        """Apply every decision appended after the last one applied."""
        async for record in self.log.read(after=self.state.last_seq):
            self.apply_recorded(record.body, record.headers, record.seq, record.stored_ns)

    def apply_recorded(self, body: bytes, headers: dict[str, str], seq: int, stored_ns: int) -> None:
        """Verify one stored decision envelope and fold it in."""
        try:
            opened = open_envelope(body, headers, keyring=self._keyring, received_ns=stored_ns, at_store=True)
            if opened.grant.role != "coordinator":
                raise VerificationError(f"decision signed by a {opened.grant.role} key")
            if opened.envelope.id in self._records:
                raise VerificationError(f"decision record {opened.envelope.id} stored again")
            decision = decode_decision(opened.envelope.payload)
        except (VerificationError, msgspec.DecodeError, ValueError) as exc:
            log.error("unusable decision record skipped", extra={"stream_seq": seq, "error": str(exc)})
            self.state.last_seq = max(self.state.last_seq, seq)
            return
        self.state.apply(decision, self._policy, seq=seq)
        self.decision_ids[decision.envelope_id] = opened.envelope.id
        self._records.add(opened.envelope.id)

    async def record(
        self, cause: Envelope, make: Callable[[], Decision | Deferral | None], *, by: Signer
    ) -> Decision | Deferral | None:
        """Append what ``make()`` decides about ``cause``, deciding again on a fresh state until no one else got
        there first; what it decided last (None or a deferral: nothing appended)."""  # noqa: D205, D209
        while True:
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
            expected = self.state.last_seq
            undo: Undo = []
            fresh: list[tuple[Envelope, Decision]] = []
            for item in items:
                if item.envelope.id in self.state.decided:
                    continue
                decision = await decide(item)
                if decision is None:
                    continue
                self.state.apply(decision, self._policy, seq=expected, undo=undo)
                fresh.append((item.envelope, decision))
            if not fresh:
                return set()
            try:
                await self.append_applied(
                    [decision_record(by, cause, decision) for cause, decision in fresh], after=expected
                )
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
        decided, began = len(self.state.decided), time.perf_counter()
        await self.catch_up()
        cost = Conflicts(1, len(self.state.decided) - decided, time.perf_counter() - began, discarded)
        total = self.conflicts
        total.conflicts += 1
        total.caught_up += cost.caught_up
        total.catch_up_s += cost.catch_up_s
        total.discarded += discarded
        log.warning(CONFLICT_LOGGED, extra={"subject": self.log.subject, **asdict(cost)})

    async def append(self, record: Record) -> None:
        """Append a decision right after the last one applied, and apply it.

        Raises:
            Conflict: another record was appended first (:meth:`catch_up`, decide again).
        """
        decision, envelope, sealed = record
        seq = await self._store(sealed, after=self.state.last_seq)
        self.state.apply(decision, self._policy, seq=seq)
        self.decision_ids[decision.envelope_id] = envelope.id
        _decided(decision)

    async def append_applied(self, records: Sequence[Record], *, after: int) -> None:
        """Store decisions the caller applied to the state provisionally (at ``after``), in order.

        Few are stored one by one, more as one atomic batch (all or none). This
        sets their record ids and the state's last sequence, or raises
        :class:`~bus.Conflict` (the caller then undoes what it applied).
        """
        if len(records) < ATOMIC_MIN:
            last = after
            for decision, envelope, sealed in records:
                last = await self._store(sealed, after=last)
                self.decision_ids[decision.envelope_id] = envelope.id
        else:
            batch = [(sealed.body, dict(sealed.headers)) for _, _, sealed in records]
            last = await self.log.append_batch(batch, after=after, batch_id=new_id())
            for decision, envelope, _ in records:
                self.decision_ids[decision.envelope_id] = envelope.id
        self.state.last_seq = last
        for decision, _, _ in records:
            _decided(decision)

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
