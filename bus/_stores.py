"""The two ways a component keeps and reads back state: a :class:`Bucket` and a :class:`SubjectLog`.

They are protocols: :mod:`bus._bucket` and :mod:`bus._log` implement them on
NATS, :mod:`bus.testing` in memory, and one contract test suite holds both to
the same behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec

from trustbus.bus._stored import StoredMessage


class Entry(msgspec.Struct, frozen=True):
    """One revision of one key.

    Attributes:
        key: the key.
        revision: the stream sequence that stored this revision.
        value: its bytes (empty for a tombstone).
        stored_ns: when the server stored it (unix ns): the server's clock.
        deleted: a tombstone (the key was deleted or purged).
        headers: the headers stored with it.
    """

    key: str
    revision: int
    value: bytes
    stored_ns: int
    deleted: bool = False
    headers: dict[str, str] = {}


class Appended(msgspec.Struct, frozen=True):
    """Where a record was stored: its sequence, and whether the server had it already (same ``Nats-Msg-Id``)."""

    seq: int
    duplicate: bool = False


class Bucket(Protocol):
    """A key-value bucket whose every value carries its revision and store time."""

    name: str

    def subject(self, key: str) -> str:
        """The subject that stores ``key``."""
        ...

    async def get(self, key: str) -> Entry | None:
        """The last revision of ``key`` (a tombstone if it was deleted), or None if it was never written."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The last revision of each of ``keys`` that has one (a tombstone if it was deleted), in few requests;
        a key never written is absent."""  # noqa: D205, D209
        ...

    async def put(
        self, key: str, value: bytes, *, revision: int | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Store ``value`` as ``key``'s next revision; with ``revision``, only if that is still the last (else
        :class:`~bus.Conflict`; 0: only if the key has no revision at all)."""  # noqa: D205, D209
        ...

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Store a tombstone for ``key`` (if its last revision is still ``revision``); its revision."""
        ...

    def history(self, key: str = ">", *, after: int = 0) -> AsyncIterator[Entry]:
        """Every revision of ``key`` (or of every key matching it) stored after revision ``after``, oldest first."""
        ...


class SubjectLog(Protocol):
    """Append-only records on one subject, appended with compare-and-set on the last sequence."""

    stream: str
    subject: str

    async def append(self, body: bytes, headers: dict[str, str], *, after: int | None) -> Appended:
        """Store one record if the log's last record is still at ``after`` (None: unconditionally), else
        :class:`~bus.Conflict`."""  # noqa: D205, D209
        ...

    async def append_batch(self, records: Sequence[tuple[bytes, dict[str, str]]], *, after: int, batch_id: str) -> int:
        """Store ``records`` atomically after ``after`` (all or none); the sequence of the last."""
        ...

    async def get(self, seq: int) -> StoredMessage:
        """The message stored at ``seq`` in the stream (any subject); :class:`~bus.NotFound` if none."""
        ...

    async def last(self) -> StoredMessage | None:
        """The last record on the log, or None if it is empty."""
        ...

    def read(self, *, after: int = 0) -> AsyncIterator[StoredMessage]:
        """Every record stored after ``after``, oldest first, up to the last one stored now."""
        ...

    async def find(self, msg_id: str, *, after: int = 0) -> StoredMessage | None:
        """The first record stored after ``after`` whose ``Nats-Msg-Id`` is ``msg_id``, or None."""
        ...
