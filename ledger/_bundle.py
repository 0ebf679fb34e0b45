"""Reading the tenant stream, and the self-contained audit bundle.

A bundle is a directory::

    manifest.json      {"format": 2, "tenant", "stream", "admin_key", "first_seq", "last_seq",
                        "count", "head" (hex chain hash of last_seq), "exported_at" (unix ns)}
    messages.msgpack   msgpack array of [seq, subject, stored_ns, headers, body, chain]
                       per stored message, in stream order (chain: the 32-byte hash of that message)
    keyring.msgpack    msgpack array of [key id, signed grant bytes, stored_ns] for every keyring
                       revision (a grant's signature is checked against the admin key; stored_ns,
                       when the server stored it, says from when it stood; 0 or absent: unknown)
    end.checkpoint     the export checkpoint: a ledger key's signed head at last_seq
    start.checkpoint   only when first_seq > 1: a ledger key's signed head at first_seq - 1
    projection/        the DuckDB projection of the same messages: Parquet segments and
                       state.json (docs/LEDGER_PROJECTION.md); ``trustbus query --data DIR/projection``

Everything a verifier needs without a server. Its trust anchor is the admin
key: pin it (``verify --admin-key``) rather than trusting the manifest.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from trustbus.bus import (
    Identity,
    Keyring,
    KeyringError,
    StoredMessage,
    TenantStream,
    TransportError,
    VerificationError,
    decode_checkpoint,
    decode_envelope,
    decode_signed_grant,
    subjects,
    wrong_role,
)
from trustbus.ledger._anchors import CheckpointFile, read_checkpoint_file, sign_checkpoint, write_checkpoint_file
from trustbus.ledger._chain import GENESIS, chain_hash
from trustbus.ledger._errors import BundleError
from trustbus.ledger._parallel import project_messages
from trustbus.ledger._projector import Position

FORMAT = 2
PROJECTION = "projection"
END_CHECKPOINT = "end.checkpoint"
START_CHECKPOINT = "start.checkpoint"


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


class KeyringRevision(msgspec.Struct, frozen=True, array_like=True):
    """One revision of a keyring entry: its key, the signed grant, and when the server stored it (0: unknown)."""

    key_id: str
    value: bytes
    stored_ns: int = 0


@dataclass
class Bundle:
    """A bundle read back: its manifest, entries, keyring revisions and the checkpoints that anchor it."""

    manifest: dict[str, object]
    entries: list[BundleEntry]
    keyring_revisions: list[KeyringRevision]
    end: CheckpointFile | None = None
    start: CheckpointFile | None = None

    def keyring(self, *, admin_key: str | None = None) -> Keyring:
        """The keyring rebuilt from the bundle, anchored on ``admin_key`` (default: the manifest's)."""
        anchor = admin_key or str(self.manifest["admin_key"])
        return keyring_of(str(self.manifest["tenant"]), anchor, self.keyring_revisions)


def keyring_of(tenant: str, admin_key: str, revisions: list[KeyringRevision]) -> Keyring:
    """The keyring of ``revisions``, anchored on ``admin_key``; BundleError if one is unreadable."""
    keyring = Keyring(tenant=tenant, admin_key_id=admin_key)
    for revision in revisions:
        try:
            keyring.add(revision.key_id, decode_signed_grant(revision.value), stored_ns=revision.stored_ns)
        except KeyringError as exc:
            raise BundleError(f"keyring revision for {revision.key_id} is unreadable: {exc}") from exc
    return keyring


def check_ledger_signer(keyring: Keyring, tenant: str, signer: Identity, signer_name: str, *, what: str) -> None:
    """BundleError unless ``signer`` is a trusted, unrevoked ``ledger`` key of ``signer_name`` in ``keyring``."""
    try:
        grant = keyring.resolve(signer.key_id)
    except VerificationError:
        grant = None
    if grant is None or grant.role != "ledger" or grant.owner != signer_name or grant.revoked_at is not None:
        if grant is None or grant.revoked_at is not None:
            role = "none (not in the keyring, or revoked)"
        else:
            role = grant.role if grant.owner == signer_name else f"{grant.role} of {grant.owner!r}"
        raise BundleError(f"{what} is signed by a ledger key: {wrong_role(tenant, signer_name, role, 'ledger')}")


async def read_stream(reader: TenantStream, *, from_seq: int = 1) -> list[StoredMessage]:
    """Every message of the tenant's stream from ``from_seq`` to its last sequence when the read began, in order.

    Raises:
        ConfigError: the tenant is not provisioned.
        TransportError: the stream cannot be read, or a sequence is missing from it.
    """
    last = await reader.last_seq()
    messages: list[StoredMessage] = []
    async for batch in reader.batches(last=last, from_seq=from_seq):
        for message in batch:
            expected = messages[-1].seq + 1 if messages else from_seq
            if message.seq != expected:
                raise TransportError(f"reading {reader.stream}: got sequence {message.seq}, expected {expected}")
            messages.append(message)
    return messages


async def read_keyring_revisions(reader: TenantStream) -> list[KeyringRevision]:
    """Every revision of every keyring entry, oldest first, with its store time."""
    return [KeyringRevision(r.key, r.value, r.stored_ns) for r in await reader.keyring_revisions() if r.value]


def partial_start(messages: list[StoredMessage], tenant: str, from_seq: int) -> int:
    """The first sequence of a bundle asked to start at ``from_seq``: early enough for every checkpoint in it.

    A checkpoint stored at or after the start may state a sequence before it
    (the ledger service checkpoints what it has committed); the bundle then
    starts right after the earliest such sequence, so each of its checkpoints
    can be checked against the chain it carries.
    """
    start = max(1, from_seq)
    checkpoint_subject = subjects.checkpoint(tenant)
    stated = []
    for m in messages:
        if m.subject == checkpoint_subject:
            try:
                stated.append((m.seq, decode_checkpoint(decode_envelope(m.body).payload).through_seq))
            except (VerificationError, msgspec.DecodeError, ValueError):
                continue
    moved = True
    while moved:
        moved = False
        for seq, through in stated:
            if seq >= start and 0 <= through < start - 1:
                start, moved = through + 1, True
    return start


async def export_bundle(
    reader: TenantStream,
    out: Path,
    *,
    signer: Identity,
    signer_name: str,
    from_seq: int = 1,
) -> dict[str, object]:
    """Write ``reader``'s tenant's stream from ``from_seq`` (see :func:`partial_start`), chain, keyring and checkpoints.

    The bundle ends with an export checkpoint (and a partial one starts with a
    start checkpoint) signed by ``signer``, which must be a ``ledger`` key of
    the tenant: the ledger's word for the heads it computed from the stream.

    Raises:
        BundleError: ``signer`` is not a ``ledger`` key of ``signer_name`` in the keyring.
    """
    tenant = reader.tenant
    messages = await read_stream(reader)
    revisions = await read_keyring_revisions(reader)
    admin_key = await reader.admin_key()
    keyring = keyring_of(tenant, admin_key, revisions)
    check_ledger_signer(keyring, tenant, signer, signer_name, what="the export")
    first = partial_start(messages, tenant, from_seq) if messages else 1
    head = previous = GENESIS
    entries = []
    for m in messages:
        head = chain_hash(head, m.seq, m.subject, m.headers, m.body)
        if m.seq == first - 1:
            previous = head
        if m.seq >= first:
            entries.append(BundleEntry(m.seq, m.subject, m.stored_ns, m.headers, m.body, head))
    bundle = signed_bundle(
        tenant,
        admin_key,
        entries,
        revisions,
        first=first,
        head=head,
        previous=previous,
        signer=signer,
        name=signer_name,
    )
    await asyncio.to_thread(write_bundle, out, bundle)
    position = Position(last_seq=first - 1, head=previous, count=first - 1)
    included = messages[len(messages) - len(entries) :]
    await asyncio.to_thread(project_messages, included, keyring, tenant, out / PROJECTION, after=position)
    return bundle.manifest


def signed_bundle(
    tenant: str,
    admin_key: str,
    entries: list[BundleEntry],
    revisions: list[KeyringRevision],
    *,
    first: int,
    head: bytes,
    previous: bytes,
    signer: Identity,
    name: str,
) -> Bundle:
    """The bundle of ``entries`` (from ``first``, chaining from ``previous``, ending at ``head``), its manifest,
    and its end and (after sequence 1) start checkpoints signed by ``signer`` as ``name``."""  # noqa: D205, D209
    last = entries[-1].seq if entries else first - 1
    end = sign_checkpoint(tenant, signer, name, through_seq=last, head=head)
    start = sign_checkpoint(tenant, signer, name, through_seq=first - 1, head=previous) if first > 1 else None
    manifest: dict[str, object] = {
        "format": FORMAT,
        "tenant": tenant,
        "stream": subjects.stream_name(tenant),
        "admin_key": admin_key,
        "first_seq": first,
        "last_seq": last,
        "count": len(entries),
        "head": head.hex(),
        "exported_at": time.time_ns(),
    }
    return Bundle(manifest=manifest, entries=entries, keyring_revisions=revisions, end=end, start=start)


def write_bundle(out: Path, bundle: Bundle) -> None:
    """Write ``bundle``'s files (not its projection) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "messages.msgpack").write_bytes(msgspec.msgpack.encode(bundle.entries))
    (out / "keyring.msgpack").write_bytes(msgspec.msgpack.encode(bundle.keyring_revisions))
    if bundle.end is not None:
        write_checkpoint_file(out / END_CHECKPOINT, bundle.end)
    if bundle.start is not None:
        write_checkpoint_file(out / START_CHECKPOINT, bundle.start)
    (out / "manifest.json").write_text(json.dumps(bundle.manifest, indent=2) + "\n")


_entries = msgspec.msgpack.Decoder(list[BundleEntry])
_revisions = msgspec.msgpack.Decoder(list[KeyringRevision])


def read_bundle(directory: Path) -> Bundle:
    """Load a bundle; BundleError names the file that is missing or unreadable."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        entries = _entries.decode((directory / "messages.msgpack").read_bytes())
        revisions = _revisions.decode((directory / "keyring.msgpack").read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"{directory} is not a bundle: {exc.filename} is missing") from exc
    except (ValueError, msgspec.DecodeError, RecursionError) as exc:  # RecursionError: a file nested too deep
        raise BundleError(f"bundle {directory} is damaged: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r} is not {FORMAT}")
    return Bundle(
        manifest=manifest,
        entries=entries,
        keyring_revisions=list(revisions),
        end=read_checkpoint_file(directory / END_CHECKPOINT),
        start=read_checkpoint_file(directory / START_CHECKPOINT),
    )
