"""Fair intake: a partition's traffic read sender by sender and handed to the coordinator round-robin.

One consumer over every outbox of a partition delivers in stream order, so a
sender that publishes 20,000 forged envelopes puts every other sender's next
envelope behind them. Here each key owner of the tenant has its own durable
pull consumer per partition, ``coordinator-<p>-<owner>``, on everything it may
publish there (its outbox ``tb.<T>.out.<owner>.<p>`` and its effect records
``tb.<T>.effect.<owner>.<p>.*``); the partition's own consumer
``coordinator-<p>`` keeps the operators' approvals. A reader task per consumer
fetches and verifies, and holds at most one verified batch for the
coordinator, which the fetches made while it waits are added to (up to
``batch`` messages: what arrived while the coordinator was busy is mediated in
one batch at its next turn, not one small batch per turn); the coordinator
takes one batch from each reader that has one, in turn (within a turn, in
stream order). A flooding sender therefore costs the others at most one of its
batches per turn (``SENDER_SETTINGS.batch`` messages), whatever its backlog.

What fails verification is recorded in aggregate, one
:class:`~bus._rejections.RejectionSummary` per sender per window, and counted
towards the sender's suspension (:mod:`agents._suspension`); a suspended
sender's outbox messages are refused unverified. Owners granted a key later get
their consumers at once (the keyring is followed, and checked every 50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from trustbus.agents._suspension import SUSPENDED, Suspensions
from trustbus.bus import (
    Bus,
    ConsumerSettings,
    Delivery,
    RejectionLog,
    TransportError,
    cancel_and_wait,
    subject_owner,
    subjects,
)

log = logging.getLogger("trustbus.coordinator")

# Small batches: a sender's turn is short, so a flood delays others by little.
SENDER_SETTINGS = ConsumerSettings(max_ack_pending=2048, max_deliver=10, ack_wait_s=10.0, batch=64)
APPROVAL_SETTINGS = ConsumerSettings(max_ack_pending=256, max_deliver=10, ack_wait_s=10.0, batch=64)
REFRESH_S = 0.05  # how often the keyring (in memory, followed) is checked for new owners


def sender_consumer(partition: int, owner: str) -> str:
    """The durable consumer of ``owner``'s subjects in ``partition`` (hashed if the name would be too long)."""
    name = f"coordinator-{partition:d}-{owner}"
    if len(name) <= 64:
        return name
    return f"coordinator-{partition:d}-{hashlib.sha256(owner.encode()).hexdigest()[:32]}"


def sender_subjects(tenant: str, partition: int, owner: str) -> list[str]:
    """What ``owner`` may publish in ``partition``: its outbox and its effect records."""
    return [subjects.outbox(tenant, owner, partition), _effects(tenant, partition, owner)]


def _effects(tenant: str, partition: int, owner: str) -> str:
    return f"{subjects.effect(tenant, owner)}.{partition:d}.*"


@dataclass
class _Reader:
    name: str
    batch: int  # messages at most in what it holds for the coordinator
    held: list[Delivery] = field(default_factory=list)  # verified, in stream order, not yet taken
    taken: asyncio.Event = field(default_factory=asyncio.Event)  # set when the coordinator takes ``held``
    task: asyncio.Task[None] | None = None
    # Read back at start within the replay window (None: everything the consumer reads). An outbox envelope
    # settled before is decided, and the coordinator refuses a copy of it at another sequence by its decision.
    read_back_settled: list[str] | None = None

    async def hold(self, batch: list[Delivery]) -> None:
        """Add a fetched batch to what waits for the coordinator, once there is room for all of it."""
        while self.held and len(self.held) + len(batch) > self.batch:
            self.taken.clear()
            await self.taken.wait()
        self.held.extend(batch)

    def take(self) -> list[Delivery]:
        """What waits for the coordinator, handed over."""
        held, self.held = self.held, []
        self.taken.set()
        return held


class Intake:
    """The round-robin source of a partition's verified batches.

    Args:
        bus: the coordinator's connection.
        partition: the partition.
        approvals: the partition's own consumer (approvals), already created.
        suspensions: who is suspended, and the count towards it.
    """

    def __init__(self, bus: Bus, partition: int, *, approvals: str, suspensions: Suspensions) -> None:
        """Nothing is read until :meth:`batches`."""
        self.bus = bus
        self.partition = partition
        self._approvals = approvals
        self.suspensions = suspensions
        self._readers: dict[str, _Reader] = {}
        self._ready = asyncio.Event()
        self._grants = 0  # grants seen by the last ensure_consumers
        self._outboxes = f"tb.{bus.tenant}.out."

    async def ensure_consumers(self) -> None:
        """Create the consumer of every key owner that has none yet (idempotent)."""
        grants = self.bus.keyring.keyring.grants()
        if len(grants) == self._grants:
            return
        for owner in sorted({g.owner for g in grants}):
            name = sender_consumer(self.partition, owner)
            if name in self._readers:
                continue
            await self.bus.ensure_consumer(
                name, sender_subjects(self.bus.tenant, self.partition, owner), settings=SENDER_SETTINGS
            )
            effects = [_effects(self.bus.tenant, self.partition, owner)]
            self._readers[name] = _Reader(name, SENDER_SETTINGS.batch, read_back_settled=effects)
        self._grants = len(grants)

    async def batches(self, stop: asyncio.Event) -> AsyncIterator[list[Delivery]]:
        """Verified batches, one reader's at a time in turn, until ``stop`` is set."""
        approvals = _Reader(self._approvals, APPROVAL_SETTINGS.batch)
        refreshed = time.monotonic()
        try:
            self._start(approvals, APPROVAL_SETTINGS, stop)
            while not stop.is_set():
                for reader in self._readers.values():
                    if reader.task is None:
                        self._start(reader, SENDER_SETTINGS, stop)
                readers = [approvals, *self._readers.values()]
                self._ready.clear()
                # An empty batch when nothing is waiting: the coordinator's turn to record suspensions.
                for batch in self._round(readers) or [[]]:
                    yield batch
                if not self._ready.is_set() and not any(r.held for r in readers):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._ready.wait(), REFRESH_S)
                if time.monotonic() - refreshed >= REFRESH_S:
                    refreshed = time.monotonic()
                    try:
                        await self.ensure_consumers()
                    except TransportError as exc:
                        log.warning("cannot create a sender's consumer; trying again", extra={"error": str(exc)})
        finally:
            tasks = [r.task for r in (approvals, *self._readers.values()) if r.task is not None]
            for reader in self._readers.values():
                reader.task = None
            await cancel_and_wait(*tasks)

    def _round(self, readers: list[_Reader]) -> list[list[Delivery]]:
        """One batch from each reader that has one, in stream order of their first messages.

        Within a round the stream's order between senders holds (what was stored first is decided
        first, as with one consumer); across rounds no sender gets more than one batch per turn.
        """
        batches = [r.take() for r in readers if r.held]
        return sorted(batches, key=lambda batch: batch[0].stream_seq if batch else 0)

    def _start(self, reader: _Reader, settings: ConsumerSettings, stop: asyncio.Event) -> None:
        reader.task = asyncio.create_task(self._read(reader, settings, stop), name=f"intake:{reader.name}")

    async def _read(self, reader: _Reader, settings: ConsumerSettings, stop: asyncio.Event) -> None:
        rejections = RejectionLog(
            tenant=self.bus.tenant,
            stream=self.bus.stream,
            sender=self.bus.name,
            seal=self.bus.seal,
            publish=self.bus.publish,
            recorded=self._recorded,
            clock=self.bus.clock,
        )
        while not stop.is_set():
            try:
                batches = self.bus.consume_batches(
                    reader.name,
                    settings=settings,
                    stop=stop,
                    rejections=rejections,
                    screen=self._screen,
                    read_back_settled=reader.read_back_settled,
                )
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        await reader.hold(batch)
                        self._ready.set()
                return
            except TransportError as exc:  # its consumer is away (a cluster electing): read it again shortly
                log.warning("cannot read a sender's consumer", extra={"consumer": reader.name, "error": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REFRESH_S)

    def _screen(self, subject: str) -> tuple[str, str] | None:
        """Refuse a suspended sender's outbox messages unverified. Its effect records are still verified and
        recorded: the taint of what its tools returned must follow it once the suspension is lifted."""  # noqa: D205, D209
        owner = subject_owner(subject)
        if subject.startswith(self._outboxes) and self.suspensions.suspended(owner):
            return SUSPENDED, f"{owner} is suspended in partition {self.partition}"
        return None

    def _recorded(self, owner: str, counts: Mapping[str, int], last_seq: int) -> None:
        if "." in owner:  # a subject, not an agent's (an approval): nobody to suspend
            return
        self.suspensions.refused(owner, counts, last_seq=last_seq, at_ns=self.bus.clock())
        self._ready.set()  # wake the coordinator: it may have a suspension to record
