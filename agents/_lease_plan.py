"""Which partitions a coordinator process should hold, decided from the leases it read: no I/O, no clock.

:class:`~agents._partitions.Partitions` reads the member and partition keys,
renews what :func:`still_held` says is still its own, asks :func:`plan_leases`
what to hand back and what to try to take, and writes the leases.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

LEASE_S = 6.0


@dataclass(frozen=True)
class Lease:
    """A lease key as last written: its revision (0: never written), holder and age."""

    revision: int
    name: str | None  # None: free (never written, or handed back)
    instance: str | None
    age_s: float
    foreign: bool = False  # the last value is no holder's (an empty message the server stored there, say)

    @property
    def free(self) -> bool:
        """Nobody holds it, or its holder stopped renewing it."""
        return self.name is None or self.age_s > LEASE_S


@dataclass(frozen=True)
class LeasePlan:
    """One round's decision.

    Attributes:
        share: how many partitions this process should hold: its fair share among the live members.
        hand_back: partitions it holds beyond its share, to stop and hand back.
        take: partitions it may take, in its order of preference: try each until it holds its share.
    """

    share: int
    hand_back: tuple[int, ...]
    take: tuple[int, ...]


def still_held(lease: Lease, *, instance: str, revision: int | None) -> bool:
    """Whether the lease of a partition this process holds, last written by it at ``revision``, is still its own.

    A foreign value written over it changes nobody's hold: it is still ours (and is written over).
    """
    if lease.foreign and revision is not None:
        return True
    return lease.instance == instance and lease.revision == revision


def plan_leases(
    leases: Mapping[int, Lease], *, members: Iterable[Lease], held: Collection[int], name: str, instance: str
) -> LeasePlan:
    """What process ``name`` (this run of it: ``instance``) holding ``held`` should hand back and try to take.

    Args:
        leases: every partition's lease, as read this round.
        members: every coordinator's member key, as read this round (this process's own included); a
            foreign one (no coordinator's signed record naming its owner) counts as no one.
        held: the partitions this process holds after renewing its leases.
        name: this process's name in the leases.
        instance: this run of it.
    """
    live = sum(member.name is not None and not member.foreign and member.age_s <= LEASE_S for member in members)
    share = math.ceil(len(leases) / max(live, 1))
    hand_back = tuple(sorted(held, reverse=True)[: max(0, len(held) - share)])
    take = tuple(
        partition
        for partition in sorted(leases, key=lambda p: _preference(name, p))
        if partition not in held
        and (leases[partition].free or _predecessor(leases[partition], name=name, instance=instance))
    )
    return LeasePlan(share=share, hand_back=hand_back, take=take)


def _predecessor(lease: Lease, *, name: str, instance: str) -> bool:
    """A lease of this process's name from another instance: a previous run of it, now dead."""
    return lease.name == name and lease.instance != instance


def _preference(name: str, partition: int) -> bytes:
    """Rendezvous order: processes starting together try different partitions first."""
    return hashlib.sha256(f"{name}:{partition}".encode()).digest()
