"""Outbox messages no coordinator reads: recorded as rejections by the ledger service, which sees every message.

An agent may publish to ``tb.<T>.out.<agent>.*`` (any token: the server's
permissions cannot count partitions), but a tenant of N partitions has
coordinators reading ``tb.<T>.out.<agent>.0`` to ``.<N-1>`` only. A message on
``tb.<T>.out.alice.99`` (or ``.007``, ``.x``, or with more tokens) would be
stored and never read. The ledger service reads every message in order, so it
notices: each batch's strays are recorded as one
:class:`~bus._rejections.RejectionSummary` per agent, reason
``unknown_partition``, signed by the ledger key; a failed publish keeps them
for the next batch, and the summary's duplicate id makes recording the same
strays again (after a restart) a no-op within the stream's duplicate window.
"""

from __future__ import annotations

import hashlib
import logging

from trustbus.bus import (
    HEADER_MSG_ID,
    Bus,
    StoredMessage,
    TransportError,
    encode_rejection_summary,
    new_envelope,
    subject_owner,
    subjects,
    summarise,
    summary_msg_id,
)

log = logging.getLogger("trustbus.ledger")

UNKNOWN_PARTITION = "unknown_partition"
MAX_ITEMS = 512


def stray_partition(tenant: str, subject: str, partitions: int) -> bool:
    """Whether ``subject`` is an outbox subject of ``tenant`` outside its ``partitions`` (so never read)."""
    parsed = subjects.parse(subject)
    if parsed is None or parsed.tenant != tenant or parsed.channel != "outbox" or parsed.depth < 1:
        return False
    return not parsed.well_formed or parsed.partition is None or parsed.partition >= partitions


class StrayRecorder:
    """Collects the strays of a batch (:meth:`observe`) and records them per agent (:meth:`flush`)."""

    def __init__(self, bus: Bus) -> None:
        """Record as ``bus``'s key (role ``ledger``)."""
        self._bus = bus
        self._pending: list[StoredMessage] = []

    def observe(self, message: StoredMessage) -> None:
        """Note ``message`` if no coordinator reads its subject."""
        if stray_partition(self._bus.tenant, message.subject, self._bus.partitions):
            self._pending.append(message)

    async def flush(self) -> None:
        """Record what was noted, one summary per agent (at most MAX_ITEMS each); keep it on failure."""
        by_owner: dict[str, list[StoredMessage]] = {}
        for message in self._pending:
            by_owner.setdefault(subject_owner(message.subject), []).append(message)
        kept: list[StoredMessage] = []
        for owner, messages in by_owner.items():
            for start in range(0, len(messages), MAX_ITEMS):
                chunk = messages[start : start + MAX_ITEMS]
                try:
                    await self._record(owner, chunk)
                except TransportError as exc:
                    log.warning("strays not recorded; will retry", extra={"owner": owner, "error": str(exc)})
                    kept.extend(chunk)
        self._pending = kept

    async def _record(self, owner: str, messages: list[StoredMessage]) -> None:
        partitions = self._bus.partitions
        items = [
            (
                m.seq,
                m.subject,
                UNKNOWN_PARTITION,
                f"{m.subject} is outside the tenant's {partitions} partition(s): no coordinator reads it",
                hashlib.sha256(m.body).digest(),
                len(m.body),
            )
            for m in messages
        ]
        summary = summarise(owner, items, sample_body=messages[0].body, sample_headers=messages[0].headers)
        envelope = new_envelope(
            tenant=self._bus.tenant,
            kind="event",
            sender=self._bus.name,
            to=("topic:quarantine",),
            content_type="application/msgpack",
            payload=encode_rejection_summary(summary),
            now_ns=self._bus.clock(),
        )
        msg_id = summary_msg_id(self._bus.stream, [m.seq for m in messages])
        await self._bus.publish(
            subjects.quarantine(self._bus.tenant), self._bus.seal(envelope), headers={HEADER_MSG_ID: msg_id}
        )
        log.info("strays recorded", extra={"owner": owner, "count": len(messages)})
