"""Rejections recorded in aggregate: one signed summary per sender per window, not one record per message.

A consumer that refuses many messages from one publisher (a flood of forged
signatures, a suspended sender) would write a full
:class:`~bus.QuarantineRecord` of about 2 KB for each, and wait for each to be
stored. A :class:`RejectionLog` instead collects what it refused, per owner of
the subject (the outbox's agent, whom the server alone let publish there), and
publishes one :class:`RejectionSummary` per owner when ``max_items`` are
waiting, when the oldest has waited ``window_s``, or when the consumer goes
idle. Only once the summary is stored are the messages terminated, so a crash
in between means a redelivery and a summary again, never a refusal without a
record.

Each refused message stays individually checkable: the summary lists its
stream sequence, its subject and the SHA-256 of its body (the raw 32 bytes),
about 45 bytes a message, so a verifier excuses exactly the message that was
refused, and the projection counts each one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from trustbus.bus._envelope import decode_envelope, new_envelope
from trustbus.bus._errors import TransportError, VerificationError
from trustbus.bus._metrics import QUARANTINES
from trustbus.bus._payload import check_msgpack
from trustbus.bus._quarantine import QuarantineRecord, decode_quarantine_record
from trustbus.bus._seal import HEADER_KEY, HEADER_MSG_ID, Sealed
from trustbus.bus._subjects import parse, quarantine

if TYPE_CHECKING:  # nats-py is loaded by the adapter that hands messages in, not by the decoders here
    from nats.aio.msg import Msg

log = logging.getLogger("trustbus.bus")

MAX_ITEMS = 512
WINDOW_S = 0.25
SAMPLE_BYTES = 512
MAX_DETAILS = 64  # distinct details kept per summary (a flood's are mostly one), each cut to DETAIL_CHARS
DETAIL_CHARS = 200


class RejectedItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One refused message: its stream sequence, subject, reason and detail (indexes into the summary's tables),
    body size and body SHA-256 (32 raw bytes)."""  # noqa: D205, D209

    seq: int
    subject: int
    reason: int
    size: int
    sha256: bytes
    detail: int = 0


class RejectionSample(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The first refused message of a summary, described in full (its body cut to 512 bytes)."""

    seq: int
    reason: str
    detail: str
    claimed_sender: str | None
    claimed_id: str | None
    key_id: str | None
    body: bytes


class RejectionSummary(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Messages from one publisher refused within one window: the payload of a quarantine event.

    Attributes:
        owner: whose subjects they arrived on (an outbox's or effect subject's agent), not who they claimed to be.
        subjects: the subjects they arrived on (``items`` index it).
        reasons: the reason codes (``items`` index it).
        counts: refused messages per reason.
        items: every refused message, in the order refused.
        sample: the first of them, in full.
    """

    v: int = 1
    owner: str
    subjects: tuple[str, ...]
    reasons: tuple[str, ...]
    counts: dict[str, int]
    items: tuple[RejectedItem, ...]
    sample: RejectionSample
    details: tuple[str, ...] = ("",)

    def rejected(self) -> list[tuple[int, str, str, int, bytes]]:
        """Every refused message as (seq, subject, reason, body size, body SHA-256)."""
        return [(i.seq, self.subjects[i.subject], self.reasons[i.reason], i.size, i.sha256) for i in self.items]

    def detail_of(self, item: RejectedItem) -> str:
        """Why ``item`` was refused, in words (empty past the summary's first MAX_DETAILS distinct details)."""
        return self.details[item.detail] if 0 <= item.detail < len(self.details) else ""


_encoder = msgspec.msgpack.Encoder()
_summary_decoder = msgspec.msgpack.Decoder(RejectionSummary)


def encode_rejection_summary(summary: RejectionSummary) -> bytes:
    """The msgpack payload of a summary's quarantine event."""
    return _encoder.encode(summary)


def decode_rejection_summary(payload: bytes) -> RejectionSummary:
    """Parse a summary (raises a ValueError for anything else, a QuarantineRecord included; bounded)."""
    check_msgpack(payload)
    return _summary_decoder.decode(payload)


def decode_quarantine_payload(payload: bytes) -> QuarantineRecord | RejectionSummary:
    """Parse the payload of any quarantine event: one record, or a summary of many."""
    try:
        return decode_quarantine_record(payload)
    except msgspec.DecodeError:  # not a single record (a payload over the bounds is refused as such)
        return decode_rejection_summary(payload)


def subject_owner(subject: str) -> str:
    """Who a refused message is counted against: the agent an outbox or effect subject names, else the subject."""
    parsed = parse(subject)
    if parsed is not None and parsed.channel in ("outbox", "effect") and parsed.depth >= 2 and parsed.owner:
        return parsed.owner
    return subject


@dataclass
class _Pending:
    msgs: list[Msg] = field(default_factory=list)
    items: list[tuple[int, str, str, str, bytes, int]] = field(default_factory=list)  # seq, subject, reason, ...
    seqs: set[int] = field(default_factory=set)
    since: float = 0.0


class RejectionLog:
    """Collects refused messages per owner and records each owner's as one signed summary.

    Args:
        tenant: the tenant.
        stream: its stream (for the summaries' duplicate ids).
        sender: who signs the summaries.
        seal: signs an envelope.
        publish: stores a sealed envelope on a subject (with extra headers), raising TransportError if not stored.
        recorded: called with (owner, counts by reason, last sequence) after each summary is stored.
        max_items: refused messages per summary.
        window_s: longest a refused message waits for its summary while more keep coming.
        clock: the signer's clock (the summaries' ``ts``), unix ns.
    """

    def __init__(
        self,
        *,
        tenant: str,
        stream: str,
        sender: str,
        seal: Callable[..., Sealed],
        publish: Callable[..., Awaitable[object]],
        recorded: Callable[[str, Mapping[str, int], int], None] = lambda owner, counts, last_seq: None,
        max_items: int = MAX_ITEMS,
        window_s: float = WINDOW_S,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Collect nothing yet; see :meth:`add` and :meth:`flush`."""
        self._tenant = tenant
        self._stream = stream
        self._sender = sender
        self._seal = seal
        self._publish = publish
        self.recorded = recorded
        self._max_items = max_items
        self._window_s = window_s
        self._pending: dict[str, _Pending] = {}
        self._clock = clock

    def add(self, msg: Msg, *, reason: str, detail: str) -> None:
        """Refuse ``msg`` (a message from a consumer, not yet settled): recorded at the next flush, then terminated."""
        seq = msg.metadata.sequence.stream
        owner = subject_owner(msg.subject)
        pending = self._pending.setdefault(owner, _Pending(since=time.monotonic()))
        if not pending.msgs:
            pending.since = time.monotonic()
        pending.msgs.append(msg)
        if seq in pending.seqs:
            return  # redelivered while waiting: one entry, both copies terminated
        pending.seqs.add(seq)
        pending.items.append((seq, msg.subject, reason, detail, hashlib.sha256(msg.data).digest(), len(msg.data)))

    @property
    def waiting(self) -> int:
        """Refused messages not yet recorded."""
        return sum(len(p.items) for p in self._pending.values())

    async def flush(self, *, due_only: bool = False) -> None:
        """Record what is waiting (with ``due_only``, only owners with a full or old enough window)."""
        now = time.monotonic()
        for owner in list(self._pending):
            pending = self._pending[owner]
            if not pending.items:
                continue
            if due_only and len(pending.items) < self._max_items and now - pending.since < self._window_s:
                continue
            while pending.items:
                await self._record(owner, pending)

    async def _record(self, owner: str, pending: _Pending) -> None:
        items, rest = pending.items[: self._max_items], pending.items[self._max_items :]
        covered = {item[0] for item in items}
        msgs = [m for m in pending.msgs if m.metadata.sequence.stream in covered]
        summary = summarise(owner, items, sample_body=msgs[0].data, sample_headers=msgs[0].headers or {})
        envelope = new_envelope(
            tenant=self._tenant,
            kind="event",
            sender=self._sender,
            to=("topic:quarantine",),
            content_type="application/msgpack",
            payload=encode_rejection_summary(summary),
            now_ns=self._clock(),
        )
        msg_id = summary_msg_id(self._stream, [i[0] for i in items])
        try:
            await self._publish(quarantine(self._tenant), self._seal(envelope), headers={HEADER_MSG_ID: msg_id})
        except TransportError:
            log.exception("rejection summary not stored; its messages are left for redelivery")
            pending.items, pending.msgs, pending.seqs = [], [], set()
            return
        pending.items = rest
        pending.msgs = [m for m in pending.msgs if m.metadata.sequence.stream not in covered]
        pending.seqs -= covered
        pending.since = time.monotonic()
        log.info("rejections recorded", extra={"owner": owner, "count": len(items), "counts": summary.counts})
        for reason, count in summary.counts.items():
            QUARANTINES.labels(reason).inc(count)
        import nats.errors

        for msg in msgs:
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
        self.recorded(owner, summary.counts, max(covered))


def summary_msg_id(stream: str, seqs: list[int]) -> str:
    """The duplicate id of a summary listing ``seqs``: recording the same messages again is a no-op."""
    digest = hashlib.sha256(b"".join(seq.to_bytes(8, "big") for seq in seqs)).hexdigest()[:32]
    return f"rejections:{stream}:{digest}"


def summarise(
    owner: str,
    items: list[tuple[int, str, str, str, bytes, int]],
    *,
    sample_body: bytes,
    sample_headers: Mapping[str, str],
) -> RejectionSummary:
    """A summary of ``items`` (seq, subject, reason, detail, body SHA-256, body size), the first one's body given."""
    subject_index: dict[str, int] = {}
    reason_index: dict[str, int] = {}
    detail_index: dict[str, int] = {"": 0}
    counts: dict[str, int] = {}
    rows = []
    for seq, subject, reason, detail, digest, size in items:
        s = subject_index.setdefault(subject, len(subject_index))
        r = reason_index.setdefault(reason, len(reason_index))
        cut = detail[:DETAIL_CHARS]
        d = (
            detail_index.get(cut, 0)
            if len(detail_index) > MAX_DETAILS
            else detail_index.setdefault(cut, len(detail_index))
        )
        counts[reason] = counts.get(reason, 0) + 1
        rows.append(RejectedItem(seq, s, r, size, digest, d))
    seq, _, reason, detail, _, _ = items[0]
    try:
        claimed = decode_envelope(sample_body) if len(sample_body) <= 4 * 64 * 1024 else None
    except VerificationError:
        claimed = None
    return RejectionSummary(
        owner=owner,
        subjects=tuple(subject_index),
        reasons=tuple(reason_index),
        counts=counts,
        items=tuple(rows),
        details=tuple(detail_index),
        sample=RejectionSample(
            seq=seq,
            reason=reason,
            detail=detail[:500],
            claimed_sender=claimed.sender if claimed else None,
            claimed_id=claimed.id if claimed else None,
            key_id=sample_headers.get(HEADER_KEY, "")[:128] or None,
            body=sample_body[:SAMPLE_BYTES],
        ),
    )
