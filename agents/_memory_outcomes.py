"""What became of an agent's memory write: the coordinator's signed answer, stored where only the agent reads it.

After deciding a ``memory_write`` (and, if it accepted it, after applying it)
the coordinator stores its answer (:mod:`agents._answers`) under
``<agent>.written.<key>``: one key per memory key of the agent, which the
latest write to that key overwrites. That bounds the bucket without any
cleanup (an agent's answers are as many as its memory keys, whose values are
stored beside them anyway), and writes to different keys never overwrite each
other's answers; two writes to one key in flight at once expect the same
revision, so at most one of them is applied. The answer is the decision in the
log, except that an accepted write the coordinator could not apply because the
key had moved on is answered as refused, ``stale_revision`` (the decision
accepted it; the value was not written).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from trustbus.agents._answers import UntrustedAnswer, answer_of
from trustbus.bus import Decision, Opened

OUTCOME_TOKEN = "written"
STALE_REVISION = "stale_revision"

Status = Literal["accepted", "refused", "held"]


class MemoryOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the coordinator did with one memory write (``ctx.memory.outcome(envelope)``).

    Attributes:
        key: the memory key written.
        envelope_id: the ``memory_write`` envelope.
        status: ``accepted`` (stored), ``refused`` (not stored) or ``held`` (waiting for an operator).
        reason: why: ``memory_write`` or ``approved`` when accepted; when refused the reason code
            (``tainted_memory_write``, ``stale_revision``, ``foreign_namespace``, ``denied``, ``budget``...);
            when held, ``tainted_memory_write``.
        decision: the coordinator's decision as it answered it.
    """

    key: str
    envelope_id: str
    status: Status
    reason: str
    decision: Decision

    @property
    def accepted(self) -> bool:
        """Whether the value was stored."""
        return self.status == "accepted"


def outcome_key(agent: str, key: str) -> str:
    """The memory-bucket key (``<agent>.written.<key>``) of the answer about ``agent``'s last write to ``key``."""
    return f"{agent}.{OUTCOME_TOKEN}.{key}"


def not_applied(decision: Decision) -> Decision:
    """The answer about an accepted write that was not applied because its key had moved on."""
    return msgspec.structs.replace(decision, verdict="reject", reasons=(*decision.reasons, STALE_REVISION))


def outcome_of(decision: Decision, key: str) -> MemoryOutcome:
    """The outcome an answer states about the write of ``key``."""
    status: Status = {"accept": "accepted", "hold": "held"}.get(decision.verdict, "refused")  # type: ignore[assignment]
    return MemoryOutcome(
        key=key, envelope_id=decision.envelope_id, status=status, reason=decision.reasons[-1], decision=decision
    )


def check_outcome(opened: Opened, *, agent: str, envelope_id: str) -> Decision:
    """The decision a verified answer states, if it is the coordinator's answer about ``agent``'s write ``envelope_id``.

    Raises:
        UntrustedAnswer: not signed by a coordinator key, not addressed to ``agent``,
            or about another envelope than that memory write.
    """
    decision = answer_of(opened, agent=agent, about=envelope_id)
    if decision.kind != "memory_write" or not decision.reasons:
        raise UntrustedAnswer(f"a decision about {decision.sender}'s {decision.kind} {decision.envelope_id}")
    return decision
