"""A subject log: an append-only sequence of records on one stream subject, appended with compare-and-set.

Several writers (coordinators of one partition) may race to append. Each says
which sequence it last read (``after``); the server stores the record only if
no other record reached the subject since (``Nats-Expected-Last-Subject-
Sequence``), else the writer gets :class:`~bus.Conflict`, reads what it missed
and decides again. A batch of records is stored atomically (all or none, with
one expectation) through JetStream's atomic batch publish.

A log read ``in_batches`` reads a long run of records through an ephemeral
pull consumer (:func:`~bus._in_order.read_in_order`), a fetched batch per
request, instead of one get per record: catching up on a long decision log
then costs a round trip per thousand records. That needs the right to create
consumers on the stream, which only the coordinator has; agents and operators
read record by record. Each such read leaves a consumer on the server until it
lapses (30 s idle), so it is meant for rare long reads, such as the catch-up of
a coordinator that starts; a run of at most :data:`ONE_BY_ONE_MAX` stream
sequences is read record by record all the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from trustbus.bus._bucket import EXPECTED_LAST_SUBJECT_SEQ
from trustbus.bus._errors import Conflict, NotFound
from trustbus.bus._in_order import Start, read_in_order
from trustbus.bus._seal import HEADER_MSG_ID
from trustbus.bus._stored import StoredMessage, stored_message, unix_ns
from trustbus.bus._stores import Appended
from trustbus.bus._translate import NATS_ERRORS, api_error, translated

_BATCH_DUPLICATE = 10201  # a message id of the batch was stored before (or is in it twice)
# Read one by one when the stream holds at most this many messages past the position: a consumer costs more.
ONE_BY_ONE_MAX = 64


class NatsSubjectLog:
    """A :class:`~bus.SubjectLog` on NATS: the records on ``subject``.

    A wildcard ``subject`` reads several logs at once; appending needs a single subject.
    """

    def __init__(
        self,
        js: JetStreamContext,
        nc: Client,
        stream: str,
        subject: str,
        *,
        direct: bool = False,
        in_batches: bool = False,
    ) -> None:
        """A log of ``stream`` filtered to ``subject``.

        ``direct``: read with direct gets, as agents must. ``in_batches``: read
        long runs through ephemeral pull consumers (needs the right to create
        consumers on ``stream``).
        """
        self._js = js
        self._nc = nc
        self.stream = stream
        self.subject = subject
        self._direct = direct
        self._in_batches = in_batches

    async def append(self, body: bytes, headers: dict[str, str], *, after: int | None) -> Appended:
        """Store one record if the log's last record is still at sequence ``after`` (None: unconditionally).

        Raises:
            Conflict: another record was appended after ``after``.
        """
        if after is not None:
            headers = {**headers, EXPECTED_LAST_SUBJECT_SEQ: str(after)}
        try:
            ack = await self._js.publish(self.subject, body, headers=headers, timeout=5.0)
        except NATS_ERRORS as exc:
            raise translated(exc, f"append to {self.subject}") from exc
        return Appended(ack.seq, bool(ack.duplicate))

    async def append_batch(self, records: Sequence[tuple[bytes, dict[str, str]]], *, after: int, batch_id: str) -> int:
        """Store ``records`` atomically after sequence ``after``; the sequence of the last.

        ``batch_id`` must be new for each batch. A retry of a batch that landed
        raises :class:`Conflict`, like a lost race: its ``after`` no longer holds
        (the server keeps no record of batch ids once a batch is committed).
        """
        reply = b""
        try:
            for index, (body, record_headers) in enumerate(records, start=1):
                headers = {**record_headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
                if index == 1:
                    headers[EXPECTED_LAST_SUBJECT_SEQ] = str(after)
                if index == len(records):
                    headers["Nats-Batch-Commit"] = "1"
                if index in (1, len(records)):
                    reply = (await self._nc.request(self.subject, body, headers=headers, timeout=5.0)).data
                    _raise_for_batch_error(reply, self.subject)
                else:
                    await self._nc.publish(self.subject, body, headers=headers)
        except NATS_ERRORS as exc:
            raise translated(exc, f"append a batch to {self.subject}") from exc
        return int(json.loads(reply)["seq"])

    async def get(self, seq: int) -> StoredMessage:
        """The record stored at ``seq`` (any subject of the stream). Raises NotFound."""
        try:
            raw = await self._js.get_msg(self.stream, seq, direct=self._direct)
        except NATS_ERRORS as exc:
            raise translated(exc, f"read {self.stream} at {seq}") from exc
        return stored(raw)

    async def last(self) -> StoredMessage | None:
        """The last record on the log, or None if it is empty."""
        try:
            raw = await self._js.get_last_msg(self.stream, self.subject, direct=self._direct)
        except NATS_ERRORS as exc:
            error = translated(exc, f"read the last of {self.subject}")
            if isinstance(error, NotFound):
                return None
            raise error from exc
        return stored(raw)

    async def read(self, *, after: int = 0) -> AsyncIterator[StoredMessage]:
        """Every record stored after sequence ``after``, oldest first, up to the last one stored now."""
        position = after
        if self._in_batches:
            async for message in self._read_in_batches(after=after):
                yield message
                position = message.seq
        # What is left (all of it, unless read in batches): up to the last record, appended while reading included.
        async for message in self._read_one_by_one(after=position):
            yield message

    async def find(self, msg_id: str, *, after: int = 0) -> StoredMessage | None:
        """The first record stored after ``after`` whose ``Nats-Msg-Id`` is ``msg_id``, or None.

        The server keeps no index of message ids (only its duplicate window), so the log is read from ``after``.
        """
        async for message in self.read(after=after):
            if message.headers.get(HEADER_MSG_ID) == msg_id:
                return message
        return None

    async def _read_in_batches(self, *, after: int) -> AsyncIterator[StoredMessage]:
        """The records after ``after`` up to the last one stored now, through one consumer, if there are many."""
        last = await self.last()
        if last is None or last.seq - after <= ONE_BY_ONE_MAX:
            return
        start = Start(seq=after + 1)
        async for msgs in read_in_order(self._js, self.stream, [self.subject], start=start, last=last.seq):
            for msg in msgs:
                yield stored_message(msg)

    async def _read_one_by_one(self, *, after: int) -> AsyncIterator[StoredMessage]:
        """The records after ``after``, one get each, until there is no next one."""
        seq = after + 1
        while True:
            try:
                raw = await self._js.get_msg(self.stream, seq, subject=self.subject, next=True, direct=self._direct)
            except NATS_ERRORS as exc:
                error = translated(exc, f"read {self.subject} from {seq}")
                if isinstance(error, NotFound):
                    return
                raise error from exc
            message = stored(raw)
            yield message
            seq = message.seq + 1


def stored(raw: RawStreamMsg) -> StoredMessage:
    """A message got by sequence or subject, as stored."""
    return StoredMessage(raw.seq or 0, raw.subject or "", unix_ns(raw.time), dict(raw.headers or {}), raw.data or b"")


def _raise_for_batch_error(data: bytes, subject: str) -> None:
    """Raise for an error reply to an atomic batch message (an empty reply acknowledges a non-final one)."""
    if not data:
        return
    error = json.loads(data).get("error")
    if error is None:
        return
    if error.get("err_code") == _BATCH_DUPLICATE:
        raise Conflict(f"append a batch to {subject}: {error.get('description', error)}")
    raise api_error(error, f"append a batch to {subject}")
