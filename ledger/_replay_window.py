"""The replay check over a stream read in order, remembering only the ids that can still be replayed.

An id is remembered per subject (the replay check is per subject: a delivery
is the sender's envelope again, on another subject) for twice the skew window
of sender time before the store time of the message being checked, as
:class:`bus.SeenIds` prunes. Older ids cannot come back unnoticed where the
skew is checked: a copy stored later fails the skew check itself. Subjects
whose ids have all expired are dropped (an effect record's subject names its
idempotency key, so subjects keep coming), so memory follows the traffic of
the last window, never the length of the stream.
"""

from __future__ import annotations

from trustbus.bus import Envelope, Opened, Replayed, SeenIds, StoredMessage, VerificationError, decode_envelope

# open_envelope checks these after the replay check: an envelope failing them may still be a replay.
_CHECKED_AFTER_REPLAY = frozenset({"not_mediated", "bad_countersignature"})
SWEEP_EVERY = 4096  # messages between sweeps of expired subjects


class ReplayWindow:
    """Ids accepted recently, per subject, with the sequence each was accepted at.

    Args:
        window_ns: the skew window (ids are kept for twice as long, by sender time); None: ids are
            kept for the whole run (a run held in memory anyway, such as a bundle).
    """

    def __init__(self, window_ns: int | None) -> None:
        self._window_ns = window_ns
        self._seen: dict[str, SeenIds] = {}
        self._until_sweep = SWEEP_EVERY

    def remember(self, subject: str, seq: int, envelope: Envelope) -> None:
        """Take note of an envelope accepted at ``seq`` on ``subject``."""
        self._seen.setdefault(subject, self._new()).add(envelope, seq)

    def seen_for(self, message: StoredMessage) -> SeenIds:
        """The ids to check ``message`` against (pruned to its store time); accepted ones must be remembered."""
        if self._window_ns is not None:
            self._until_sweep -= 1
            if self._until_sweep <= 0:
                self._sweep(message.stored_ns)
        seen = self._seen.get(message.subject)
        if seen is None:
            seen = self._seen[message.subject] = self._new()
        if self._window_ns is not None:
            seen.prune(message.stored_ns)
        return seen

    def check(self, message: StoredMessage, checked: Opened | VerificationError) -> Opened | VerificationError:
        """The replay check on an outcome of the other checks, giving what :func:`bus.open_envelope` would have."""
        seen = self.seen_for(message)
        if isinstance(checked, VerificationError) and checked.reason not in _CHECKED_AFTER_REPLAY:
            return checked
        envelope = checked.envelope if isinstance(checked, Opened) else decode_envelope(message.body)
        earlier = seen.sequence_of(envelope.id)
        if earlier is not None and earlier != message.seq:
            return Replayed(f"id {envelope.id} already accepted at stream sequence {earlier}")
        if isinstance(checked, Opened):
            seen.add(envelope, message.seq)
        return checked

    def _new(self) -> SeenIds:
        return SeenIds() if self._window_ns is None else SeenIds(window_ns=self._window_ns)

    def _sweep(self, now_ns: int) -> None:
        self._until_sweep = SWEEP_EVERY
        for subject, seen in list(self._seen.items()):
            seen.prune(now_ns)
            if not len(seen):
                del self._seen[subject]

    def __len__(self) -> int:
        """Ids remembered, over every subject."""
        return sum(len(s) for s in self._seen.values())
