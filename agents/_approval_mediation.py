"""Operators' answers in the coordinator's path: the approval or denial of a held decision.

An operator signs an :class:`bus.Approval` naming a held envelope (or tool call,
or memory write) and publishes it on its correlation's partition approval
subject (``trustbus approve``/``deny``, the console). The coordinator of the
partition checks who signed it and records the answer as a second decision
about the held envelope (:func:`agents._decision.decide_approval`); what the
answer releases is the coordinator's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustbus.agents._decision import decide_approval
from trustbus.bus import Approval, Decision, Delivery

if TYPE_CHECKING:
    from trustbus.agents._coordinator import Coordinator


class ApprovalMediation:
    """Records operators' answers to the holds of one coordinator's partition."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def mediate(self, delivery: Delivery) -> tuple[Decision, bool] | None:
        """Record the answer ``delivery`` carries; the decision it made and whether this call recorded it (False:
        recorded before a crash, or by another coordinator), or None if ``delivery`` was quarantined."""  # noqa: D205, D209
        coordinator, approval = self._coordinator, delivery.envelope
        if delivery.opened.grant.role != "operator":
            await delivery.reject("not_operator", f"approval signed by a {delivery.opened.grant.role} key")
            return None
        if coordinator.bus.partition(approval.correlation_id) != coordinator.partition:
            detail = f"approval of correlation {approval.correlation_id} on {delivery.subject}"
            await delivery.reject("wrong_outbox", detail)
            return None
        try:
            request = Approval.decode(approval.payload)
        except ValueError as exc:
            await delivery.reject("bad_approval", str(exc))
            return None

        def make() -> Decision | None:
            held = coordinator.state.decision(approval.correlation_id, request.envelope_id)
            if held is None or held.verdict != "hold":
                return None
            approve = request.verdict == "approve"
            return decide_approval(held, approval, approve=approve, received_ns=delivery.stored_ns)

        released = await coordinator.record(approval, make)
        decision = coordinator.state.decision(approval.correlation_id, request.envelope_id)
        if decision is None or decision.approval_id != approval.id:
            state = "unknown" if decision is None else f"{decision.verdict} ({', '.join(decision.reasons)})"
            await delivery.reject("not_held", f"envelope {request.envelope_id} is not held: {state}")
            return None
        return decision, released is not None
