"""In-memory stand-ins for a :class:`~bus.Bucket` and a :class:`~bus.SubjectLog`, for tests without a server.

They behave as :class:`~bus._bucket.NatsBucket` and
:class:`~bus._log.NatsSubjectLog` do on a real nats-server, and the contract
tests (``tests/integration/test_store_contract.py``) hold both to that:

- A :class:`MemoryStream` is one JetStream stream: one sequence over all its
  subjects, so records of several logs (and the keys of a bucket placed on the
  same stream) interleave, and :meth:`MemorySubjectLog.get` returns the message
  of any subject at a sequence.
- A compare-and-set names the last sequence stored *on the subject* (0: none
  yet, tombstones included). It is checked before ``Nats-Msg-Id``
  deduplication, as the server does: a resend whose expectation no longer
  holds is a :class:`~bus.Conflict`, one whose expectation holds is answered
  with the first copy's sequence and ``duplicate=True``.
- A bucket on a stream of its own keeps the last 64 revisions of each key,
  as :func:`~bus.provision` makes every bucket: older ones are gone from
  its history and from its stream.
- Message ids are remembered for the life of the stream (the server forgets
  them after its duplicate window: :meth:`MemoryStream.forget_ids` is that
  window passing).
- A batch is stored whole or not at all. The server does not remember batch
  ids: a batch is refused for a stale ``after`` or a message id it has seen,
  not for its batch id.
- Headers are stored as the adapters send them, the compare-and-set and batch
  headers included. Store times come from ``clock`` (unix ns) exactly, where
  the adapters' are rounded to microseconds.
- Every call first yields to the event loop, as a request to a server would,
  so concurrent tasks interleave; reads fetch one message per step and see
  what is stored while they run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from trustbus.bus._errors import Conflict, NotFound, Refused, TransportError, Unavailable
from trustbus.bus._stored import StoredMessage
from trustbus.bus._stores import Appended, Entry

__all__ = ["MemoryBucket", "MemoryStream", "MemorySubjectLog"]

_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_MSG_ID = "Nats-Msg-Id"
_OPERATION = "KV-Operation"
_KV_HISTORY = 64  # revisions kept per key in a provisioned bucket (bus._provision.KV_HISTORY)


@dataclass(frozen=True)
class _Failure:
    error: TransportError
    after_storing: bool


class MemoryStream:
    """One in-memory stream: every message of its buckets and logs, under one sequence."""

    def __init__(
        self, name: str = "TB_memory", *, clock: Callable[[], int] = time.time_ns, max_per_subject: int | None = None
    ) -> None:
        """``clock``: the store time of each message, in unix ns (the server's clock). ``max_per_subject``: keep
        only the last so many messages of each subject (None: all)."""  # noqa: D205, D209
        self.name = name
        self._clock = clock
        self._max_per_subject = max_per_subject
        self._messages: dict[int, StoredMessage] = {}  # by sequence, oldest first
        self._seq = 0
        self._ids: dict[str, int] = {}  # Nats-Msg-Id -> the sequence that first stored it
        self._failures: list[_Failure] = []

    @property
    def messages(self) -> list[StoredMessage]:
        """Every message stored, oldest first."""
        return list(self._messages.values())

    def bucket(self, name: str) -> MemoryBucket:
        """The bucket ``name`` on this stream."""
        return MemoryBucket(name, memory=self)

    def log(self, subject: str) -> MemorySubjectLog:
        """The records of this stream on ``subject`` (a wildcard subject reads several logs)."""
        return MemorySubjectLog(subject, memory=self)

    def forget_ids(self) -> None:
        """Forget every message id stored so far, as the server does once its duplicate window has passed."""
        self._ids.clear()

    def fail_next(self, error: TransportError | None = None, *, after_storing: bool = False) -> None:
        """Make the next call on this stream (by any of its buckets and logs) raise ``error``.

        ``error`` defaults to :class:`~bus.Unavailable`. With ``after_storing``, a
        write takes effect before the error is raised, as a publish whose
        acknowledgement was lost (a :class:`~bus.Timeout`, say). Calls queue up:
        each failure is used once, in order.
        """
        self._failures.append(_Failure(error or Unavailable(f"{self.name} is unavailable"), after_storing))

    async def _request(self, *, writing: bool = False) -> _Failure | None:
        """Travel to the server: let other tasks run, then fail if a failure is due (a write: the failure to
        raise once it is stored, if it is one that comes after storing)."""  # noqa: D205, D209
        await asyncio.sleep(0)
        if not self._failures:
            return None
        failure = self._failures.pop(0)
        if not (writing and failure.after_storing):
            raise failure.error
        return failure

    def _last_seq_on(self, subject: str) -> int:
        last = self._last(subject)
        return 0 if last is None else last.seq

    def _last(self, subject: str) -> StoredMessage | None:
        return next((m for m in reversed(self._messages.values()) if _matches(subject, m.subject)), None)

    def _next(self, seq: int, subject: str) -> StoredMessage | None:
        """The first message at ``seq`` or after on a subject matching ``subject``."""
        return next((m for m in self._messages.values() if m.seq >= seq and _matches(subject, m.subject)), None)

    def _at(self, seq: int) -> StoredMessage:
        if seq < 1:
            raise Refused(f"read {self.name} at {seq}: bad request")
        if seq not in self._messages:
            raise NotFound(f"read {self.name} at {seq}: no message found")
        return self._messages[seq]

    def _store(self, records: Sequence[tuple[str, bytes, dict[str, str]]]) -> list[StoredMessage]:
        stored = []
        for subject, body, headers in records:
            self._seq += 1
            message = StoredMessage(self._seq, subject, self._clock(), dict(headers), body)
            self._messages[message.seq] = message
            self._keep_last(subject)
            if (msg_id := headers.get(_MSG_ID)) is not None:
                self._ids.setdefault(msg_id, message.seq)
            stored.append(message)
        return stored

    def _keep_last(self, subject: str) -> None:
        if self._max_per_subject is None:
            return
        on_subject = [seq for seq, m in self._messages.items() if m.subject == subject]
        for seq in on_subject[: -self._max_per_subject]:
            del self._messages[seq]


class MemoryBucket:
    """A :class:`~bus.Bucket` in memory: key ``k`` is the subject ``$KV.<name>.k`` of its stream."""

    def __init__(self, name: str, *, memory: MemoryStream | None = None) -> None:
        """The bucket ``name``, on ``memory`` (default: a stream of its own, ``KV_<name>``, as provisioned on NATS)."""
        self.name = name
        self.memory = memory or MemoryStream(f"KV_{name}", max_per_subject=_KV_HISTORY)
        self.stream = self.memory.name
        self._prefix = f"$KV.{name}."

    def subject(self, key: str) -> str:
        """The subject that stores ``key``."""
        return self._prefix + key

    async def get(self, key: str) -> Entry | None:
        """The last revision of ``key`` (a tombstone if it was deleted), or None if it was never written."""
        await self.memory._request()
        last = self.memory._last(self.subject(key))
        return None if last is None else self._entry(last)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The last revision of each of ``keys`` that has one (a tombstone if it was deleted), in one request."""
        await self.memory._request()
        found = ((key, self.memory._last(self.subject(key))) for key in keys)
        return {key: self._entry(last) for key, last in found if last is not None}

    async def put(
        self, key: str, value: bytes, *, revision: int | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Store ``value`` as ``key``'s next revision (if its last is still ``revision``; 0: none); the revision."""
        return await self._write(key, value, revision=revision, headers=headers or {})

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Store a tombstone for ``key`` (if its last revision is still ``revision``); its revision."""
        return await self._write(key, b"", revision=revision, headers={_OPERATION: "DEL"})

    async def history(self, key: str = ">", *, after: int = 0) -> AsyncIterator[Entry]:
        """Every revision of ``key`` (or of every key matching it) stored after revision ``after``, oldest first."""
        seq = after + 1
        while True:
            await self.memory._request()
            message = self.memory._next(seq, self.subject(key))
            if message is None:
                return
            yield self._entry(message)
            seq = message.seq + 1

    async def _write(self, key: str, value: bytes, *, revision: int | None, headers: dict[str, str]) -> int:
        failure = await self.memory._request(writing=True)
        subject = self.subject(key)
        if revision is not None:
            if self.memory._last_seq_on(subject) != revision:
                raise Conflict(f"{key} of {self.name} is no longer at revision {revision}")
            headers = {**headers, _EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        if (msg_id := headers.get(_MSG_ID)) in self.memory._ids:
            seq = self.memory._ids[msg_id]
        else:
            [stored] = self.memory._store([(subject, value, headers)])
            seq = stored.seq
        if failure is not None:
            raise failure.error
        return seq

    def _entry(self, message: StoredMessage) -> Entry:
        return Entry(
            key=message.subject.removeprefix(self._prefix),
            revision=message.seq,
            value=message.body,
            stored_ns=message.stored_ns,
            deleted=message.headers.get(_OPERATION) in ("DEL", "PURGE"),
            headers=dict(message.headers),
        )


class MemorySubjectLog:
    """A :class:`~bus.SubjectLog` in memory: the records of one stream on ``subject``."""

    def __init__(self, subject: str, *, memory: MemoryStream | None = None) -> None:
        """The log of ``subject`` on ``memory`` (default: a stream of its own)."""
        self.memory = memory or MemoryStream()
        self.stream = self.memory.name
        self.subject = subject

    async def append(self, body: bytes, headers: dict[str, str], *, after: int | None) -> Appended:
        """Store one record if the log's last record is still at ``after`` (None: unconditionally), else
        :class:`~bus.Conflict`; a ``Nats-Msg-Id`` stored before is not stored again."""  # noqa: D205, D209
        failure = await self.memory._request(writing=True)
        if after is not None:
            last = self.memory._last_seq_on(self.subject)
            if last != after:
                raise Conflict(f"append to {self.subject}: wrong last sequence: {last}")
            headers = {**headers, _EXPECTED_LAST_SUBJECT_SEQ: str(after)}
        if (msg_id := headers.get(_MSG_ID)) in self.memory._ids:
            appended = Appended(self.memory._ids[msg_id], duplicate=True)
        else:
            [stored] = self.memory._store([(self.subject, body, headers)])
            appended = Appended(stored.seq)
        if failure is not None:
            raise failure.error
        return appended

    async def append_batch(self, records: Sequence[tuple[bytes, dict[str, str]]], *, after: int, batch_id: str) -> int:
        """Store ``records`` atomically after ``after`` (all or none); the sequence of the last."""
        if not records:
            raise ValueError("a batch needs at least one record")
        failure = await self.memory._request(writing=True)
        last = self.memory._last_seq_on(self.subject)
        if last != after:
            raise Conflict(f"append a batch to {self.subject}: wrong last sequence: {last}")
        ids = [h[_MSG_ID] for _, h in records if _MSG_ID in h]
        if len(set(ids)) < len(ids) or any(i in self.memory._ids for i in ids):
            raise Conflict(f"append a batch to {self.subject}: atomic publish batch contains duplicate message id")
        batch = []
        for index, (body, record_headers) in enumerate(records, start=1):
            headers = {**record_headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
            if index == 1:
                headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(after)
            if index == len(records):
                headers["Nats-Batch-Commit"] = "1"
            batch.append((self.subject, body, headers))
        stored = self.memory._store(batch)
        if failure is not None:
            raise failure.error
        return stored[-1].seq

    async def get(self, seq: int) -> StoredMessage:
        """The message stored at ``seq`` (any subject of the stream); :class:`~bus.NotFound` if none."""
        await self.memory._request()
        return self.memory._at(seq)

    async def last(self) -> StoredMessage | None:
        """The last record on the log, or None if it is empty."""
        await self.memory._request()
        return self.memory._last(self.subject)

    async def read(self, *, after: int = 0) -> AsyncIterator[StoredMessage]:
        """Every record stored after ``after``, oldest first, up to the last one stored now."""
        seq = after + 1
        while True:
            await self.memory._request()
            message = self.memory._next(seq, self.subject)
            if message is None:
                return
            yield message
            seq = message.seq + 1

    async def find(self, msg_id: str, *, after: int = 0) -> StoredMessage | None:
        """The first record stored after ``after`` whose ``Nats-Msg-Id`` is ``msg_id``, or None."""
        async for message in self.read(after=after):
            if message.headers.get(_MSG_ID) == msg_id:
                return message
        return None


def _matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches the NATS subject filter ``pattern`` (``*``: one token, ``>``: the rest)."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)
