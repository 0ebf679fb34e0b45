"""Suspending a sender whose traffic keeps being refused, by a decision an operator can lift.

Pure: no NATS. A partition's coordinator counts the messages it refused from
each sender before deciding them (verification failures, recorded in aggregate
by :class:`bus._rejections.RejectionLog`, ``wrong_outbox`` and ``correlation_full``); a sender with
``policy.limits.suspension.rejections`` of them within ``window_s`` is suspended in that partition by a decision on
the partition's log: a :class:`~bus.Decision` of kind ``suspension`` and
verdict ``hold`` about the synthetic envelope id :func:`suspension_id`. The
coordinator's state is the fold of that log, so a suspension survives
restarts and every coordinator of the partition sees it.

While the latest suspension of a sender is held (or was denied), everything
on its outbox in the partition is refused unverified, as ``suspended``, in
aggregate (its effect records are still verified and recorded, so the taint of
its tools' results still follows it). An operator lifts it like any hold, with a signed approval
(``trustbus approve <suspension id> --as <operator>``): the decision becomes
``accept`` and the sender's traffic is verified and mediated again. A denial
keeps it suspended for good (revoke the key, or grant a new one, to go on).
The rejection count is kept in memory only: after a restart a sender starts
again from zero towards its threshold (a suspension already recorded stays).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Mapping

import msgspec

from trustbus.agents._decision import SUSPENSION_KIND, CoordinatorState
from trustbus.agents._policy import Policy
from trustbus.bus import Decision, Envelope, new_envelope, subjects

SUSPENDED = "suspended"  # the reason code of what a suspended sender sends
THRESHOLD_REASON = "rejection_threshold"


def suspension_id(sender: str, partition: int, episode: int) -> str:
    """The id a sender's ``episode``-th suspension in ``partition`` is decided under (at most 64 characters)."""
    name = f"suspension-{sender}-p{partition}-{episode}"
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(sender.encode()).hexdigest()[:20]
    return f"suspension-{digest}-p{partition}-{episode}"


def suspension_correlation(sender: str, partition: int, partitions: int) -> str:
    """A correlation id of ``partition`` for a sender's suspensions, so an approval of one lands there."""
    for attempt in itertools.count():
        candidate = suspension_id(sender, partition, 0) + f"-{attempt}"
        if subjects.partition_of(candidate, partitions) == partition:
            return candidate
    raise AssertionError("unreachable")


class Suspensions:
    """Which senders are suspended in one partition (read from the state), and who is due to be.

    Args:
        state: the partition's coordinator state (the fold of its decision log).
        policy: the policy (its ``limits.suspension``; None turns suspension off).
        partition: the partition.
        partitions: the tenant's partition count.
        tenant: the tenant.
    """

    def __init__(
        self, state: CoordinatorState, policy: Policy, *, partition: int, partitions: int, tenant: str
    ) -> None:
        """Count nothing yet."""
        self._state = state
        self._rule = policy.limits.suspension
        self._partition = partition
        self._partitions = partitions
        self._tenant = tenant
        self._episodes: dict[str, int] = {}
        self._refused: dict[str, deque[tuple[int, int]]] = {}  # sender -> (at_ns, count), oldest first
        self._due: dict[str, int] = {}  # sender -> the last refused sequence seen when it crossed the threshold

    def current(self, sender: str) -> Decision | None:
        """The decision about ``sender``'s latest suspension in this partition, if it was ever suspended."""
        episode = self._episodes.get(sender, 0)
        while suspension_id(sender, self._partition, episode + 1) in self._state.suspensions:
            episode += 1
        self._episodes[sender] = episode
        if episode == 0:
            return None
        return self._state.suspensions[suspension_id(sender, self._partition, episode)]

    def suspended(self, sender: str) -> bool:
        """Whether ``sender``'s traffic in this partition is refused unverified."""
        decision = self.current(sender)
        return decision is not None and decision.verdict != "accept"

    def refused(self, sender: str, counts: Mapping[str, int], *, last_seq: int, at_ns: int) -> None:
        """Count messages refused from ``sender`` (by reason); mark it due once over the threshold."""
        if self._rule is None:
            return
        count = sum(n for reason, n in counts.items() if reason != SUSPENDED)
        if count == 0 or self.suspended(sender):
            return
        window = self._refused.setdefault(sender, deque())
        window.append((at_ns, count))
        horizon = at_ns - int(self._rule.window_s * 1e9)
        while window and window[0][0] < horizon:
            window.popleft()
        if sum(n for _, n in window) >= self._rule.rejections:
            self._due[sender] = last_seq

    def due(self) -> list[tuple[str, int]]:
        """Senders to suspend now, with the sequence of a message that took them over; forgets them."""
        due, self._due = list(self._due.items()), {}
        for sender, _ in due:
            self._refused.pop(sender, None)
        return [(s, seq) for s, seq in due if not self.suspended(s)]

    def postpone(self, sender: str, seq: int) -> None:
        """A suspension :meth:`due` returned could not be recorded: due again next time."""
        self._due[sender] = seq

    def decision(self, sender: str, *, source_seq: int, now_ns: int) -> tuple[Envelope, Decision] | None:
        """The decision suspending ``sender`` and the synthetic envelope it is about; None if suspended already."""
        if self.suspended(sender):
            return None
        episode = self._episodes.get(sender, 0) + 1
        envelope_id = suspension_id(sender, self._partition, episode)
        correlation = suspension_correlation(sender, self._partition, self._partitions)
        cause = new_envelope(tenant=self._tenant, kind="event", sender=sender, to=(), correlation_id=correlation)
        cause = msgspec.structs.replace(cause, id=envelope_id)
        return cause, Decision(
            envelope_id=envelope_id,
            source_seq=source_seq,
            sender=sender,
            kind=SUSPENSION_KIND,
            correlation_id=correlation,
            causation_id=None,
            verdict="hold",
            reasons=(THRESHOLD_REASON,),
            deliver_to=(),
            dropped=(),
            hop=0,
            declared_taint=(),
            effective_taint=(),
            decided_ns=now_ns,
        )
