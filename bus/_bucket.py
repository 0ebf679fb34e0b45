"""A KV bucket read and written as the stream it is: every value comes with its revision and store time.

The bucket ``B`` is the stream ``KV_B``; key ``k`` is the subject ``$KV.B.k``,
its revision that message's stream sequence. Writes are plain JetStream
publishes, so a compare-and-set is ``Nats-Expected-Last-Subject-Sequence``
(revision 0: the key must have no revision at all, not even a tombstone). Reads are message gets, never a consumer: see
:mod:`bus._keyring_store` for why no component may open one on a bucket.
Components whose permissions allow only direct gets (agents) pass
``direct=True``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from trustbus.bus._errors import Conflict, NotFound
from trustbus.bus._stored import unix_ns
from trustbus.bus._stores import Entry
from trustbus.bus._translate import NATS_ERRORS, translated

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
OPERATION = "KV-Operation"  # "DEL" or "PURGE" on a tombstone
# What a direct get's reply adds to the stored headers (nats-py hands them on as the message's): not stored.
_DIRECT_GET_HEADERS = frozenset({"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp"})


class NatsBucket:
    """A :class:`~bus.Bucket` on NATS: one KV bucket of a tenant, through one JetStream context."""

    def __init__(self, js: JetStreamContext, name: str, *, direct: bool = False) -> None:
        """``direct``: read with direct gets (``$JS.API.DIRECT.GET``), as components allowed only those must."""
        self._js = js
        self.name = name
        self.stream = f"KV_{name}"
        self._prefix = f"$KV.{name}."
        self._direct = direct

    def subject(self, key: str) -> str:
        """The subject that stores ``key``."""
        return self._prefix + key

    async def get(self, key: str) -> Entry | None:
        """The last revision of ``key`` (a tombstone if it was deleted), or None if it was never written."""
        try:
            raw = await self._js.get_last_msg(self.stream, self.subject(key), direct=self._direct)
        except NATS_ERRORS as exc:
            error = translated(exc, f"read {key} of {self.name}")
            if isinstance(error, NotFound):
                return None
            raise error from exc
        return self._entry(raw)

    async def put(
        self, key: str, value: bytes, *, revision: int | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Store ``value`` as ``key``'s next revision and return it.

        ``revision``: store it only if ``key``'s last revision is still this one
        (0: only if the key has no revision at all); else raise :class:`Conflict`.
        """
        return await self._publish(key, value, revision=revision, headers=headers or {})

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Store a tombstone for ``key`` (if its last revision is still ``revision``); its revision."""
        return await self._publish(key, b"", revision=revision, headers={OPERATION: "DEL"})

    async def history(self, key: str = ">", *, after: int = 0) -> AsyncIterator[Entry]:
        """Every revision of ``key`` (or of every key matching it) stored after revision ``after``, oldest first."""
        seq = after + 1
        subject = self.subject(key)
        while True:
            try:
                raw = await self._js.get_msg(self.stream, seq, subject=subject, next=True, direct=self._direct)
            except NATS_ERRORS as exc:
                error = translated(exc, f"read {key} of {self.name} from revision {seq}")
                if isinstance(error, NotFound):
                    return
                raise error from exc
            entry = self._entry(raw)
            yield entry
            seq = entry.revision + 1

    async def _publish(self, key: str, value: bytes, *, revision: int | None, headers: dict[str, str]) -> int:
        if revision is not None:
            headers = {**headers, EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        try:
            ack = await self._js.publish(self.subject(key), value, headers=headers or None, timeout=5.0)
        except NATS_ERRORS as exc:
            error = translated(exc, f"write {key} of {self.name}")
            if isinstance(error, Conflict):
                raise Conflict(f"{key} of {self.name} is no longer at revision {revision}") from exc
            raise error from exc
        return ack.seq

    def _entry(self, raw: RawStreamMsg) -> Entry:
        headers = dict(raw.headers or {})
        if self._direct:
            headers = {name: value for name, value in headers.items() if name not in _DIRECT_GET_HEADERS}
        subject = raw.subject or ""
        return Entry(
            key=subject.removeprefix(self._prefix),
            revision=raw.seq or 0,
            value=raw.data or b"",
            stored_ns=unix_ns(raw.time),
            deleted=headers.get(OPERATION) in ("DEL", "PURGE"),
            headers=headers,
        )
