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

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError

from trustbus.bus._errors import Conflict, NotFound
from trustbus.bus._stored import unix_ns
from trustbus.bus._stores import Entry
from trustbus.bus._translate import NATS_ERRORS, translated

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
OPERATION = "KV-Operation"  # "DEL" or "PURGE" on a tombstone
# What a direct get's reply adds to the stored headers (nats-py hands them on as the message's): not stored.
_DIRECT_GET_HEADERS = frozenset(
    {"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence"}
)
GET_MANY_AT_ONCE = 256  # keys named in one batched direct get
GET_MANY_TIMEOUT_S = 5.0


class NatsBucket:
    """A :class:`~bus.Bucket` on NATS: one KV bucket of a tenant, through one JetStream context."""

    def __init__(self, js: JetStreamContext, name: str, *, direct: bool = False, nc: Client | None = None) -> None:
        """``direct``: read with direct gets (``$JS.API.DIRECT.GET``), as components allowed only those must.

        ``nc``: ``js``'s connection, for :meth:`get_many`.
        """
        self._js = js
        self._nc = nc
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

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The last revision of each of ``keys`` that has one (a tombstone if it was deleted); a key never written
        is absent. One batched direct get (``multi_last``) per :data:`GET_MANY_AT_ONCE` keys, whatever the
        reader's ``direct``: the bucket must allow direct gets, as provisioned."""  # noqa: D205, D209
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), GET_MANY_AT_ONCE):
            chunk = keys[start : start + GET_MANY_AT_ONCE]
            try:
                found.update(await self._get_chunk(chunk))
            except NATS_ERRORS as exc:
                raise translated(exc, f"read {len(chunk)} keys of {self.name}") from exc
        return found

    async def _get_chunk(self, keys: Sequence[str]) -> dict[str, Entry]:
        assert self._nc is not None, "a bucket opened without its connection cannot get many keys"
        inbox = self._nc.new_inbox()
        request = json.dumps({"multi_last": [self.subject(key) for key in keys], "batch": len(keys)}).encode()
        sub = await self._nc.subscribe(inbox)
        found: dict[str, Entry] = {}
        try:
            await self._nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", request, reply=inbox)
            deadline = asyncio.get_running_loop().time() + GET_MANY_TIMEOUT_S
            while True:
                msg = await sub.next_msg(timeout=max(0.001, deadline - asyncio.get_running_loop().time()))
                status = (msg.headers or {}).get("Status")
                if status is None:
                    entry = self._batched_entry(msg)
                    found[entry.key] = entry
                elif status == "404":  # none of them has a revision
                    return {}
                elif status == "204":  # the end of the batch
                    break
                else:
                    raise APIError.from_msg(msg)
        finally:
            await sub.unsubscribe()
        if int((msg.headers or {}).get("Nats-Num-Pending", "0")):  # the server sent fewer than asked: the rest
            for key in keys:
                if key not in found and (single := await self.get(key)) is not None:
                    found[key] = single
        return found

    def _batched_entry(self, msg: Msg) -> Entry:
        """One reply of a batched direct get, as an entry."""
        headers = dict(msg.headers or {})
        stored = {name: value for name, value in headers.items() if name not in _DIRECT_GET_HEADERS}
        return Entry(
            key=headers["Nats-Subject"].removeprefix(self._prefix),
            revision=int(headers["Nats-Sequence"]),
            value=msg.data,
            stored_ns=_rfc3339_ns(headers["Nats-Time-Stamp"]),
            deleted=stored.get(OPERATION) in ("DEL", "PURGE"),
            headers=stored,
        )

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


def _rfc3339_ns(stamp: str) -> int:
    """A server's store time (``2026-12-07T12:55:32.67852025Z``, UTC) in unix ns, to the microsecond as nats-py
    reads the single gets' (so both read one value's store time alike)."""  # noqa: D205, D209
    seconds, _, fraction = stamp.removesuffix("Z").partition(".")
    return unix_ns(datetime.fromisoformat(f"{seconds}.{fraction[:6].ljust(6, '0')}+00:00"))
