"""When the ledger service states the chain, and the envelope it states it in. Pure: the clock is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from trustbus.bus import Checkpoint, Envelope, encode_checkpoint, new_envelope, subjects
from trustbus.ledger._projector import Position


@dataclass
class CheckpointSchedule:
    """Every ``every_n`` new messages, or every ``every_s`` seconds if anything new arrived.

    Checkpoints themselves do not count as new: a checkpoint lands in the
    stream too, and must not call for another one.

    Attributes:
        every_n: new messages that call for a checkpoint.
        every_s: seconds after which any new message calls for one.
        since: new messages since the last checkpoint.
        last_at: when the last checkpoint was published (monotonic seconds).
        retry_at: after a checkpoint could not be published, none is due before this.
    """

    every_n: int
    every_s: float
    since: int = 0
    last_at: float = 0.0
    retry_at: float = 0.0

    def observe(self, channel: str) -> None:
        """Count one projected message of ``channel`` (see :func:`ledger._projection.channel_of`)."""
        if channel != "checkpoint":
            self.since += 1

    def due(self, now: float) -> bool:
        """Whether a checkpoint should be published now."""
        if now < self.retry_at:
            return False
        return self.since >= self.every_n or (self.since > 0 and now - self.last_at >= self.every_s)

    def seconds_until_due(self, now: float) -> float | None:
        """How long until the time rule makes a checkpoint due (None: nothing new yet)."""
        return None if self.since == 0 else max(0.0, self.last_at + self.every_s - now, self.retry_at - now)

    def published(self, now: float) -> None:
        """A checkpoint was published at ``now``."""
        self.since = 0
        self.last_at = now
        self.retry_at = 0.0

    def failed(self, now: float, retry_s: float) -> None:
        """A checkpoint could not be published at ``now``: try again ``retry_s`` later, not before."""
        self.retry_at = now + retry_s


def checkpoint_envelope(tenant: str, sender: str, position: Position, *, now_ns: int | None = None) -> Envelope:
    """The ``checkpoint`` envelope stating ``position``: through its last sequence, its head and count.

    It states the Merkle tree head of sequences 1..``last_seq`` too, when the
    position knows the tree (a projection made before tree heads were does not).
    """
    stream = subjects.stream_name(tenant)
    tree = position.tree()
    checkpoint = Checkpoint(
        stream=stream,
        through_seq=position.last_seq,
        head=position.head,
        count=position.count,
        tree_size=None if tree is None else tree.size,
        tree_root=None if tree is None else tree.root(),
    )
    return new_envelope(
        tenant=tenant,
        kind="checkpoint",
        sender=sender,
        to=(),
        content_type="application/msgpack",
        payload=encode_checkpoint(checkpoint),
        idempotency_key=f"checkpoint:{stream}:{position.last_seq}",
        now_ns=now_ns,
    )
