"""Forwarding an accepted envelope: the sender's bytes, countersigned for each recipient, into its inbox or topic.

A forward carries ``Nats-Msg-Id = <envelope id>:<recipient>``, so forwarding
again (a redelivery after a crash between the decision and the ack) is dropped
by the stream's duplicate window. A forward only ever follows the record of the
decision that accepted its envelope, and an envelope is accepted once: the
forwards of a decision this process has just recorded are its first, and a
re-forward within the window of this process's first attempt is dropped by the
window. Only a re-forward of a decision recorded elsewhere (by a process that
died, or another coordinator), once the window may have passed, reads the
recipient's subject from the decision's source onward and sends only missing
forwards: a backlog decided for the first time costs no read, however old.
Each recipient agent's inbox consumer is created on its first forward, if the
coordinator has not created it yet.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from trustbus.agents import _metrics as metrics
from trustbus.bus import (
    DUPLICATE_WINDOW_S,
    HEADER_KEY,
    HEADER_MSG_ID,
    HEADER_SIG,
    HEADER_TRACEPARENT,
    Bus,
    ConsumerSettings,
    Decision,
    Envelope,
    countersign,
    subjects,
)

# Re-forwards younger than this rely on the duplicate window; older ones check the inbox first.
_DEDUP_SAFE_NS = int(DUPLICATE_WINDOW_S * 1e9 * 0.75)
# First forwards this process remembers (within the window): past this many, the oldest re-forward the check.
REMEMBERED_MAX = 65_536

# A short ack_wait brings a crashed agent's message back within seconds; a live
# handler keeps it with in-progress beats (see bus.Delivery.process).
INBOX_SETTINGS = ConsumerSettings(ack_wait_s=4.0, fetch_timeout_s=1.0)


class Forwarder:
    """The forwards of one coordinator process.

    Args:
        bus: the coordinator's connection (its identity countersigns).
        inboxes: agents whose inbox consumer exists, shared by the partitions of one process.
    """

    def __init__(
        self, bus: Bus, inboxes: set[str] | None = None, *, monotonic_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        """Nothing is created until a forward needs it (or :meth:`ensure_inbox`)."""
        self._bus = bus
        self._inboxes = inboxes if inboxes is not None else set()
        self._monotonic_ns = monotonic_ns
        self._first: OrderedDict[str, int] = OrderedDict()  # decision record id -> when this process first forwarded

    async def ensure_inbox(self, agent: str) -> None:
        """Create ``agent``'s inbox consumer unless this process already did."""
        if agent in self._inboxes:
            return
        inbox = subjects.inbox(self._bus.tenant, agent)
        await self._bus.ensure_consumer(subjects.inbox_consumer(agent), inbox, settings=INBOX_SETTINGS)
        self._inboxes.add(agent)

    async def start(
        self,
        envelope: Envelope,
        body: bytes,
        headers: Mapping[str, str],
        source_seq: int,
        decision: Decision,
        decision_id: str,
        *,
        recorded_now: bool = False,
    ) -> list[Awaitable[object]]:
        """Publish the countersigned forwards of ``envelope`` (``body`` decoded), accepted by ``decision`` (recorded
        as ``decision_id``, by this process just now if ``recorded_now``: nothing of it can have been forwarded yet);
        returns their acks to await. A forward's ``traceparent`` header is the one signed in ``body``, whatever
        header its sender set: the unsigned header never says other than the signed bytes."""  # noqa: D205, D209
        if decision.verdict != "accept":
            return []
        bus = self._bus
        recheck = self._may_have_passed_the_window(decision, decision_id, recorded_now=recorded_now)
        acks: list[Awaitable[object]] = []
        for recipient in decision.deliver_to:
            subject = self._subject_for(recipient)
            msg_id = f"{decision.envelope_id}:{recipient}"
            if recheck and await bus.log(subject).find(msg_id, after=source_seq) is not None:
                continue  # already in the recipient's subject
            if not recipient.startswith(subjects.TOPIC_PREFIX) and bus.keyring.keyring.has_owner(recipient):
                # An inbox consumer for a name that owns no key would let a sender make the server keep
                # one consumer per name it invents; the forward is stored all the same, and the agent's
                # consumer is made once it has a key (here, at the next forward, or at a coordinator's start).
                await self.ensure_inbox(recipient)
            forwarded = {
                HEADER_SIG: headers.get(HEADER_SIG, ""),
                HEADER_KEY: headers.get(HEADER_KEY, ""),
                HEADER_MSG_ID: msg_id,
                **({} if envelope.trace is None else {HEADER_TRACEPARENT: envelope.trace[0]}),
                **countersign(
                    body,
                    recipient=recipient,
                    decision_id=decision_id,
                    effective_taint=decision.effective_taint,
                    coordinator=bus.identity,
                ),
            }
            acks.append(await bus.forward(subject, body, forwarded))
        if recorded_now and acks:
            metrics.forwarded(decision)
        return acks

    def _may_have_passed_the_window(self, decision: Decision, decision_id: str, *, recorded_now: bool) -> bool:
        """Whether an earlier forward of this decision may be older than the duplicate window covers."""
        now = self._monotonic_ns()
        while self._first and now - next(iter(self._first.values())) > _DEDUP_SAFE_NS:
            self._first.popitem(last=False)
        if recorded_now:
            self._first[decision_id] = now
            if len(self._first) > REMEMBERED_MAX:
                self._first.popitem(last=False)
            return False
        if decision_id in self._first:
            return False  # this process's first attempt is within the window: the window drops a copy
        return self._bus.clock() - decision.decided_ns > _DEDUP_SAFE_NS

    def _subject_for(self, recipient: str) -> str:
        if recipient.startswith(subjects.TOPIC_PREFIX):
            return subjects.topic(self._bus.tenant, recipient.removeprefix(subjects.TOPIC_PREFIX))
        return subjects.inbox(self._bus.tenant, recipient)
