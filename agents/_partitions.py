"""Which coordinator process mediates which partition: leases in the tenant's coordinator bucket.

A tenant's correlations are spread over a fixed number of partitions
(:func:`bus.subjects.partition_of`); each partition has its own outbox
subjects, effect records, approvals, durable consumer and decision log, so the
coordinator that holds it holds every budget, hop and taint of its correlations.

Holding a partition is a lease: the key ``partition-<p>`` of the KV bucket
``tb_coord_<T>`` names the holder, and the holder rewrites it every
``RENEW_S`` with compare-and-set on its revision. Every value there is signed
by the writing coordinator's key for its key (:mod:`agents._signed_value`);
anything else, a deletion included, is foreign: held by no one we know. A lease not renewed for
``LEASE_S`` (by the server's clock of its last write, against the server's
clock of this process's own member write of the round: no host clock is
read, so a stepped clock neither frees live leases nor keeps dead ones) is free. Every process
also rewrites ``member-<name>`` each round; the live ones share the partitions,
each taking free or expired leases up to ``ceil(partitions / live)`` and
handing back what it holds beyond that. A process that stops hands its leases
back at once (or, the server being unreachable, leaves them to expire); one
that dies loses them after ``LEASE_S``. A restarted process
(same name, new instance) takes its predecessor's leases at once.

Leases only say who *should* work a partition. What happens is decided by the
partition's decision log, appended with compare-and-set: two holders at once
(a lease lost but not yet noticed) cost a conflict and a catch-up, never a
double decision or a budget spent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict

from trustbus.agents._coordinator import Coordinator, consumer_name
from trustbus.agents._intake import sender_consumer
from trustbus.agents._lease_plan import LEASE_S, Lease, plan_leases, still_held
from trustbus.agents._policy import Policy
from trustbus.agents._signed_value import holder_value, open_holder, signer
from trustbus.bus import (
    Bus,
    Conflict,
    Decision,
    NotFound,
    Timeout,
    TransportError,
    cancel_and_wait,
    subjects,
    unless_stopped,
)

log = logging.getLogger("trustbus.coordinator")

RENEW_S = 1.0
HAND_BACK_TIMEOUT_S = 1.0  # per write at stop; a lease not handed back expires after LEASE_S anyway
WRITE_TIMEOUT_S = 5.0


class Partitions:
    """Runs a :class:`Coordinator` for each partition this process holds, and keeps the leases."""

    def __init__(self, bus: Bus, policy: Policy) -> None:
        """``bus``: connected with a coordinator key; its ``name`` is this process's name in the leases."""
        self.bus = bus
        self.policy = policy
        self.instance = uuid.uuid4().hex
        self._bucket = bus.bucket(subjects.coordinator_bucket(bus.tenant))
        self._held: dict[int, tuple[Coordinator, asyncio.Event, asyncio.Task[None]]] = {}
        self._revisions: dict[int, int] = {}
        self._server_now_ns = 0  # the server's clock at this round's member write
        self._inboxes: set[str] = set()
        self._round_at: float | None = None  # monotonic time the last lease round ended well

    @property
    def held(self) -> list[int]:
        """The partitions this process mediates now."""
        return sorted(self._held)

    def consumers(self) -> list[str]:
        """The durable consumers of the partitions this process mediates: approvals', and each key owner's."""
        owners = sorted({grant.owner for grant in self.bus.keyring.keyring.grants()})
        return [
            name
            for partition in self.held
            for name in (consumer_name(partition), *(sender_consumer(partition, owner) for owner in owners))
        ]

    def cached(self) -> dict[int, int]:
        """How many correlations each partition this process mediates keeps in memory now."""
        return {partition: len(coordinator.state.correlations) for partition, (coordinator, _, _) in self._held.items()}

    def holds(self) -> list[Decision]:
        """The decisions still held for an operator in the partitions this process mediates."""
        return [d for coordinator, _, _ in self._held.values() for d in coordinator.state.held()]

    def unready(self) -> str | None:
        """Why this process does not mediate its partitions now, or None (for ``/readyz``; read from any thread).

        Its last lease round must have ended well within ``LEASE_S``: its leases renewed,
        and each partition it took started (its consumers open, its state read back to
        the end of its decision log). Holding no partition (others hold them all) is ready.
        """
        if self._round_at is None:
            return "taking partitions"
        age = time.monotonic() - self._round_at
        return f"leases not renewed for {age:.0f} s" if age > LEASE_S else None

    async def run(self, stop: asyncio.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Keep the leases and mediate until ``stop`` is set; then stop every partition and hand the leases back."""
        try:
            await self.rebalance()
            ready()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RENEW_S)
                if stop.is_set():
                    break
                try:
                    await unless_stopped(self.rebalance(), stop)  # a lease write may wait on a lost server
                except TransportError as exc:  # the server is away (a cluster electing): try next round
                    log.warning("cannot keep the leases this round", extra={"error": str(exc)})
        finally:
            await self._hand_back_all()

    async def rebalance(self) -> None:
        """One round: announce this process, renew its leases, take or hand back partitions to its share."""
        for partition, (_, _, task) in list(self._held.items()):
            if task.done():  # its mediation loop ended (an error it could not handle): let another try
                log.error("partition stopped; handing it back", extra={"partition": partition})
                await self._release(partition)
        await self._write(f"member-{self.bus.name}", self.instance, expected=None)
        self._server_now_ns = await self._stored_at(f"member-{self.bus.name}")
        members = await self._members()
        leases = {p: await self._read(f"partition-{p}") for p in range(self.bus.partitions)}
        for partition in self.held:
            if not await self._renew(partition, leases[partition]):
                log.warning("lease lost; partition stopped", extra={"partition": partition})
                await self._stop(partition)
        plan = plan_leases(leases, members=members, held=self.held, name=self.bus.name, instance=self.instance)
        for partition in plan.hand_back:
            log.info("handing a partition back", extra={"partition": partition, "share": plan.share})
            await self._release(partition)
        for partition in plan.take:
            if len(self._held) >= plan.share:
                break
            revision = await self._write(f"partition-{partition}", self.instance, expected=leases[partition].revision)
            if revision is None:
                continue  # another process took it first
            self._revisions[partition] = revision
            try:
                await self._start(partition)
            except TransportError as exc:
                log.warning(
                    "cannot start a partition; handing it back", extra={"partition": partition, "error": str(exc)}
                )
                del self._revisions[partition]
                await self._write(f"partition-{partition}", None, expected=revision)
        self._round_at = time.monotonic()

    async def _renew(self, partition: int, lease: Lease) -> bool:
        if not still_held(lease, instance=self.instance, revision=self._revisions.get(partition)):
            return False
        revision = await self._write(f"partition-{partition}", self.instance, expected=lease.revision)
        if revision is None:
            return False
        self._revisions[partition] = revision
        return True

    async def _start(self, partition: int) -> None:
        coordinator = Coordinator(self.bus, self.policy, partition, inboxes=self._inboxes)
        await coordinator.start()
        stop = asyncio.Event()
        self._held[partition] = (coordinator, stop, asyncio.create_task(coordinator.run(stop)))
        log.info("partition taken", extra={"partition": partition, "instance": self.instance})

    async def _stop(self, partition: int, *, finish: bool = True) -> None:
        """Finish the batch in hand (or, with ``finish=False``, drop it: it is not acked, so it comes back) and stop
        mediating ``partition``."""  # noqa: D205, D209
        coordinator, stop, task = self._held.pop(partition)
        stop.set()
        try:
            if not finish:
                await cancel_and_wait(task)  # ends it; what it ended with is read below
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this process is being cancelled, not just the partition
        except Exception:
            log.exception("partition ended with an error", extra={"partition": partition})
        log.info("partition stopped", extra={"partition": partition, **asdict(coordinator.log.conflicts)})

    async def _release(self, partition: int) -> None:
        """Stop ``partition`` and hand its lease back (if still ours) so another process takes it at once."""
        await self._stop(partition)
        revision = self._revisions.pop(partition, None)
        if revision is not None:
            with contextlib.suppress(TransportError):
                await self._write(f"partition-{partition}", None, expected=revision)

    async def _hand_back_all(self) -> None:
        """Stop every partition, then hand the leases back and leave, briefly: with the server unreachable a
        stopping process must not wait on it, and what it holds frees itself after ``LEASE_S``."""  # noqa: D205, D209
        connected = self.bus.connected
        for partition in self.held:
            await self._stop(partition, finish=connected)
        revisions, self._revisions = self._revisions, {}
        if not connected:
            log.warning("server unreachable at stop; the leases expire in %.0f s", LEASE_S)
            return
        writes: list[tuple[str, int | None]] = [(f"partition-{p}", rev) for p, rev in revisions.items()]
        writes.append((f"member-{self.bus.name}", None))
        for key, expected in writes:
            try:
                await self._write(key, None, expected=expected, timeout_s=HAND_BACK_TIMEOUT_S)
            except TransportError as exc:
                log.warning("cannot hand back at stop; it expires", extra={"key": key, "error": str(exc)})

    async def _members(self) -> list[Lease]:
        """The member key of every coordinator key owner (this process included)."""
        owners = {g.owner for g in self.bus.keyring.keyring.grants() if g.role == "coordinator"}
        owners.add(self.bus.name)
        members = []
        for owner in owners:
            member = await self._read(f"member-{owner}")
            if member.name is not None and member.name != owner:  # another's record on this key: no one's
                member = Lease(revision=member.revision, name="?", instance=None, age_s=member.age_s, foreign=True)
            members.append(member)
        return members

    async def _stored_at(self, key: str) -> int:
        """When the server stored ``key``'s last value (unix ns): its clock, read through what it wrote."""
        entry = await self._bucket.get(key)
        if entry is None:
            raise NotFound(f"{key} of {self._bucket.name} is gone")
        return entry.stored_ns

    async def _read(self, key: str) -> Lease:
        entry = await self._bucket.get(key)
        if entry is None:
            return Lease(revision=0, name=None, instance=None, age_s=math.inf)
        age = (self._server_now_ns - entry.stored_ns) / 1e9
        keyring = await self.bus.keyring.knowing(signer(entry.value))
        try:
            holder = open_holder(entry.value, keyring=keyring, key=key, stored_ns=entry.stored_ns)
        except ValueError as exc:
            # Held by no one we know of, from when it was stored: free once that is LEASE_S old.
            detail = f"{key} holds no coordinator's lease: {exc}"
            await self.bus.record_foreign_value(
                self._bucket.subject(key), entry.revision, entry.value, entry.headers, detail=detail
            )
            return Lease(revision=entry.revision, name="?", instance=None, age_s=age, foreign=True)
        if holder.instance is None:  # handed back
            return Lease(revision=entry.revision, name=None, instance=None, age_s=age)
        return Lease(revision=entry.revision, name=holder.name, instance=holder.instance, age_s=age)

    async def _write(
        self, key: str, instance: str | None, *, expected: int | None, timeout_s: float = WRITE_TIMEOUT_S
    ) -> int | None:
        """Write that this process (``instance``; None: hands it back) holds ``key``, signed, if its revision is
        still ``expected``; its new revision, or None if someone else wrote it first. ``expected=None`` writes
        unconditionally."""  # noqa: D205, D209
        bus = self.bus
        value = holder_value(bus.identity, bus.name, key, instance, tenant=bus.tenant, now_ns=bus.clock())
        try:
            async with asyncio.timeout(timeout_s):
                return await self._bucket.put(key, value, revision=expected)
        except Conflict:
            return None
        except TimeoutError as exc:
            raise Timeout(f"write {key} of {self._bucket.name}: no answer in {timeout_s} s") from exc
