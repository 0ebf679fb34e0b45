"""Signed checkpoints kept outside the stream, and the outside anchors a bundle is checked against.

A checkpoint file holds one sealed ``checkpoint`` envelope: the msgpack array
``[headers, body]`` (headers a map of str to str carrying ``Tb-Sig`` and
``Tb-Key``, body the envelope's exact bytes). ``ledger export`` writes two
kinds into a bundle: the **export checkpoint** (``end.checkpoint``), stating
the chain head at the bundle's last sequence, and, in a partial bundle, the
**start checkpoint** (``start.checkpoint``), stating the head the bundle's
first message chains from. An auditor keeps a copy of an export checkpoint (or
just ``SEQ:HEAD``) elsewhere and later checks a bundle against it
(``ledger verify --expect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from trustbus.bus import (
    Checkpoint,
    Identity,
    Keyring,
    VerificationError,
    decode_checkpoint,
    decode_envelope,
    open_envelope,
    seal,
    subjects,
)
from trustbus.ledger._checkpointing import checkpoint_envelope
from trustbus.ledger._errors import BundleError
from trustbus.ledger._projector import Position


class CheckpointFile(msgspec.Struct, frozen=True, array_like=True):
    """A sealed checkpoint envelope as a file keeps it: its headers and its exact bytes."""

    headers: dict[str, str]
    body: bytes


_file = msgspec.msgpack.Decoder(CheckpointFile)
_encoder = msgspec.msgpack.Encoder()


def sign_checkpoint(
    tenant: str, signer: Identity, signer_name: str, *, through_seq: int, head: bytes, now_ns: int | None = None
) -> CheckpointFile:
    """A checkpoint stating ``head`` at ``through_seq``, signed by ``signer`` (whose role must be ``ledger``)."""
    position = Position(last_seq=through_seq, head=head, count=through_seq)
    sealed = seal(checkpoint_envelope(tenant, signer_name, position, now_ns=now_ns), signer)
    return CheckpointFile(dict(sealed.headers), sealed.body)


def write_checkpoint_file(path: Path, checkpoint: CheckpointFile) -> None:
    """Write ``checkpoint`` to ``path``."""
    path.write_bytes(_encoder.encode(checkpoint))


def read_checkpoint_file(path: Path) -> CheckpointFile | None:
    """The checkpoint file at ``path`` (None if there is none); BundleError if it is unreadable."""
    try:
        return _file.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, ValueError) as exc:
        raise BundleError(f"{path} is damaged: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint file that holds as a signature: the head it states at ``through_seq``, and who signed it."""

    through_seq: int
    head: bytes
    key_id: str


def open_checkpoint_file(checkpoint: CheckpointFile, keyring: Keyring, tenant: str) -> SignedHead:
    """Check a checkpoint file's signature, kind, signer role and stream; raise BundleError saying why not.

    The file was never stored by a server, so the key is judged at the
    envelope's own ``ts`` (valid from before it, not revoked at or before it).
    """
    try:
        envelope = decode_envelope(checkpoint.body)
        opened = open_envelope(checkpoint.body, checkpoint.headers, keyring=keyring, received_ns=envelope.ts)
    except VerificationError as exc:
        raise BundleError(f"its signature does not hold: {exc.reason}: {exc.detail}") from exc
    if opened.envelope.kind != "checkpoint" or opened.grant.role != "ledger":
        what = f"a {opened.envelope.kind!r} signed by a {opened.grant.role} key"
        raise BundleError(f"it is {what}, not a ledger checkpoint")
    try:
        stated: Checkpoint = decode_checkpoint(opened.envelope.payload)
    except (msgspec.DecodeError, ValueError) as exc:
        raise BundleError(f"its payload is unreadable: {exc}") from exc
    if stated.stream != subjects.stream_name(tenant):
        raise BundleError(f"it is a checkpoint of stream {stated.stream!r}")
    return SignedHead(stated.through_seq, stated.head, opened.grant.key_id)


def stated_head(checkpoint: CheckpointFile) -> tuple[int, bytes] | None:
    """The (sequence, head) a checkpoint file states, whether or not its signature holds (None: unreadable)."""
    try:
        stated = decode_checkpoint(decode_envelope(checkpoint.body).payload)
    except (VerificationError, msgspec.DecodeError, ValueError):
        return None
    return stated.through_seq, stated.head


@dataclass(frozen=True, slots=True)
class Expectation:
    """An outside anchor: the chain head the auditor expects at ``seq``, and where it came from."""

    seq: int
    head: bytes
    source: str


def parse_expectation(text: str, keyring: Keyring, tenant: str) -> Expectation:
    """``SEQ:HEAD`` (HEAD: 64 hex digits), or the path of a checkpoint file kept elsewhere (its signature checked).

    Raises:
        BundleError: neither form, or a checkpoint file that does not hold.
    """
    seq_text, colon, head_text = text.partition(":")
    if colon and seq_text.isdigit() and len(head_text) == 64:
        try:
            return Expectation(int(seq_text), bytes.fromhex(head_text), "expected head")
        except ValueError:
            pass
    path = Path(text)
    if not path.is_file():
        raise BundleError(f"--expect {text!r}: give SEQ:HEAD (64 hex digits) or a checkpoint file")
    checkpoint = read_checkpoint_file(path)
    assert checkpoint is not None
    try:
        signed = open_checkpoint_file(checkpoint, keyring, tenant)
    except BundleError as exc:
        raise BundleError(f"checkpoint file {path}: {exc}") from exc
    return Expectation(signed.through_seq, signed.head, f"checkpoint file {path}")
