"""What an envelope's ``causation_id`` may name, and whom a reply may go to. Pure: no I/O.

The coordinator has decided every envelope of a correlation (its decisions are
the fold of the partition's log), so it can check a sender's claim about what
caused an envelope instead of trusting it:

- ``unknown_cause``: the ``causation_id`` names no envelope the coordinator has
  decided in this correlation (an invented id, or one from another conversation).
- ``unsolicited_reply``: a ``reply`` must answer an envelope that was delivered to
  the replier, and goes only to that envelope's sender. A reply with no cause, or
  to an envelope the replier was never given, is refused; any other recipient is
  dropped.

No state is added for this: the decisions the coordinator already keeps about
the correlation say who sent each envelope and to whom it was delivered. The
coordinator keeps or stores whole correlations (agents._correlation_store),
never single envelopes, so an answer to an old envelope finds its cause.
"""

from __future__ import annotations

from collections.abc import Mapping

from trustbus.bus import Decision, Envelope

UNKNOWN_CAUSE = "unknown_cause"
UNSOLICITED_REPLY = "unsolicited_reply"


def cause_problem(envelope: Envelope, decided: Mapping[str, Decision]) -> str | None:
    """Why ``envelope``'s cause does not stand (a reason code), or None.

    Args:
        envelope: the envelope being decided.
        decided: the coordinator's decisions so far, by envelope id.
    """
    if envelope.causation_id is None:
        return UNSOLICITED_REPLY if envelope.kind == "reply" else None
    cause = decided.get(envelope.causation_id)
    if cause is None or cause.correlation_id != envelope.correlation_id:
        return UNKNOWN_CAUSE
    if envelope.kind == "reply" and not delivered_to(cause, envelope.sender):
        return UNSOLICITED_REPLY
    return None


def delivered_to(cause: Decision, agent: str) -> bool:
    """Whether the coordinator delivered the envelope ``cause`` decided about to ``agent``."""
    return cause.verdict == "accept" and agent in cause.deliver_to


def reply_may_reach(envelope: Envelope, recipient: str, decided: Mapping[str, Decision]) -> bool:
    """Whether a reply may go to ``recipient``: only the sender of the envelope it answers."""
    cause = decided.get(envelope.causation_id or "")
    return cause is not None and recipient == cause.sender
