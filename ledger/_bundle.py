"""Reading the tenant stream, and the self-contained audit bundle.

A bundle is a directory::

    manifest.json      {"format": 1, "tenant", "stream", "admin_key", "first_seq", "last_seq",
                        "count", "head" (hex chain hash of last_seq), "exported_at" (unix ns)}
    messages.msgpack   msgpack array of [seq, subject, stored_ns, headers, body, chain]
                       per stored message, in stream order (chain: the 32-byte hash of that message)
    keyring.msgpack    msgpack array of [key id, signed grant bytes] for every keyring
                       revision (a grant's signature is checked against the admin key)
    projection/        the DuckDB projection of the same messages: Parquet segments and
                       state.json (docs/LEDGER_PROJECTION.md); ``trustbus query --data DIR/projection``

Everything a verifier needs without a server. Its trust anchor is the admin
key: pin it (``verify --admin-key``) rather than trusting the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus import ConfigError, Keyring, KeyringError, TransportError, pinned_admin_key, subjects
from bus._keyring import decode_signed_grant
from bus._keyring_store import read_revisions
from bus._publisher import UNAVAILABLE_S, unavailable
from ledger._chain import GENESIS, chain_hash
from ledger._errors import BundleError
from ledger._parallel import project_messages
from ledger._stored import StoredMessage

log = logging.getLogger("trustbus.ledger")

FORMAT = 1
PROJECTION = "projection"


class BundleEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A stored message and its chain hash, as a bundle keeps it."""

    seq: int
    subject: str
    stored_ns: int
    headers: dict[str, str]
    body: bytes
    chain: bytes

    def message(self) -> StoredMessage:
        """The stored message without its chain hash."""
        return StoredMessage(self.seq, self.subject, self.stored_ns, self.headers, self.body)


@dataclass
class Bundle:
    """A bundle read back: its manifest, entries and keyring revisions."""

    manifest: dict[str, object]
    entries: list[BundleEntry]
    keyring_revisions: list[tuple[str, bytes]]

    def keyring(self, *, admin_key: str | None = None) -> Keyring:
        """The keyring rebuilt from the bundle, anchored on ``admin_key`` (default: the manifest's)."""
        anchor = admin_key or str(self.manifest["admin_key"])
        keyring = Keyring(tenant=str(self.manifest["tenant"]), admin_key_id=anchor)
        for key_id, value in self.keyring_revisions:
            try:
                keyring.add(key_id, decode_signed_grant(value))
            except KeyringError as exc:
                raise BundleError(f"keyring revision for {key_id} is unreadable: {exc}") from exc
        return keyring


_PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # between attempts while a stream or consumer elects a leader


async def read_stream(js: JetStreamContext, tenant: str, *, from_seq: int = 1) -> list[StoredMessage]:
    """Every message of ``TB_<tenant>`` from ``from_seq`` to the current end, in order.

    Reads through an ephemeral pull consumer: a pull never outruns the reader,
    whereas a push subscription drops messages client-side once its pending
    limit is reached (silently, in nats-py), which would make gaps look like
    tampering. On a cluster electing a leader (a 503, no responders, a
    timeout) it reads on from where it stopped with a new consumer, for up to
    UNAVAILABLE_S seconds.
    """
    stream = subjects.stream_name(tenant)
    messages: list[StoredMessage] = []
    last: int | None = None
    deadline: float | None = None
    pauses = iter(_PAUSES_S)
    while last is None or (messages[-1].seq if messages else from_seq - 1) < last:
        try:
            if last is None:
                last = await _last_seq(js, tenant)
                if last < from_seq:
                    return []
            await _read_into(js, tenant, messages, start=messages[-1].seq + 1 if messages else from_seq, last=last)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            if not (unavailable(exc) or isinstance(exc, TimeoutError | nats.errors.TimeoutError)):
                raise TransportError(f"cannot read {stream}: {exc}") from exc
            deadline = deadline or time.monotonic() + UNAVAILABLE_S
            if time.monotonic() > deadline:
                at = messages[-1].seq if messages else from_seq - 1
                raise TransportError(f"reading {stream} stalled after sequence {at}: {exc}") from exc
            log.warning("stream unavailable while reading it (leader election?); reading on", extra={"stream": stream})
            await asyncio.sleep(next(pauses, _PAUSES_S[-1]))
    return messages


async def _last_seq(js: JetStreamContext, tenant: str) -> int:
    try:
        return (await js.stream_info(subjects.stream_name(tenant))).state.last_seq
    except nats.js.errors.NotFoundError as exc:
        raise ConfigError(f"tenant {tenant!r} is not provisioned") from exc


async def _read_into(
    js: JetStreamContext, tenant: str, messages: list[StoredMessage], *, start: int, last: int
) -> None:
    """Append sequences ``start``..``last`` to ``messages`` through one ephemeral consumer; raises on any error."""
    stream = subjects.stream_name(tenant)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subjects.all_subjects(tenant), stream=stream, config=config)
    try:
        while (messages[-1].seq if messages else start - 1) < last:
            for msg in await sub.fetch(1000, timeout=10):
                meta = msg.metadata
                expected = messages[-1].seq + 1 if messages else start
                if meta.sequence.stream != expected:
                    raise TransportError(f"reading {stream}: got sequence {meta.sequence.stream}, expected {expected}")
                messages.append(
                    StoredMessage(
                        meta.sequence.stream,
                        msg.subject,
                        int(meta.timestamp.timestamp() * 1e9),
                        dict(msg.headers or {}),
                        msg.data,
                    )
                )
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()


async def read_keyring_revisions(js: JetStreamContext, tenant: str) -> list[tuple[str, bytes]]:
    """Every revision of every keyring entry, oldest first."""
    return [(r.key, r.value) for r in await read_revisions(js, tenant) if r.value]


async def export_bundle(js: JetStreamContext, tenant: str, out: Path) -> dict[str, object]:
    """Write the tenant's whole stream, chain and keyring to ``out``; returns the manifest."""
    messages = await read_stream(js, tenant)
    revisions = await read_keyring_revisions(js, tenant)
    head = GENESIS
    entries = []
    for m in messages:
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
        entries.append(BundleEntry(m.seq, m.subject, m.stored_ns, m.headers, m.body, head))
    manifest: dict[str, object] = {
        "format": FORMAT,
        "tenant": tenant,
        "stream": subjects.stream_name(tenant),
        "admin_key": await pinned_admin_key(js, tenant),
        "first_seq": messages[0].seq if messages else 0,
        "last_seq": messages[-1].seq if messages else 0,
        "count": len(messages),
        "head": head.hex(),
        "exported_at": time.time_ns(),
    }
    await asyncio.to_thread(_write_bundle, out, manifest, entries, revisions)
    bundle = Bundle(manifest=manifest, entries=entries, keyring_revisions=revisions)
    await asyncio.to_thread(project_messages, messages, bundle.keyring(), tenant, out / PROJECTION)
    return manifest


def _write_bundle(
    out: Path, manifest: dict[str, object], entries: list[BundleEntry], revisions: list[tuple[str, bytes]]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "messages.msgpack").write_bytes(msgspec.msgpack.encode(entries))
    (out / "keyring.msgpack").write_bytes(msgspec.msgpack.encode([[k, v] for k, v in revisions]))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


_entries = msgspec.msgpack.Decoder(list[BundleEntry])
_revisions = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def read_bundle(directory: Path) -> Bundle:
    """Load a bundle; BundleError names the file that is missing or unreadable."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        entries = _entries.decode((directory / "messages.msgpack").read_bytes())
        revisions = _revisions.decode((directory / "keyring.msgpack").read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"{directory} is not a bundle: {exc.filename} is missing") from exc
    except (ValueError, msgspec.DecodeError) as exc:
        raise BundleError(f"bundle {directory} is damaged: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r} is not {FORMAT}")
    return Bundle(manifest=manifest, entries=entries, keyring_revisions=list(revisions))
