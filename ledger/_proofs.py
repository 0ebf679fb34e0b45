"""The proof file format: one envelope's inclusion in the log, or one checkpoint's log being a prefix of a later one's.

A proof file is a JSON object (docs/LEDGER.md, "Merkle tree") carrying
everything needed to check it with no server and no bundle: the proved
message, the audit path, the ledger-signed checkpoint stating the tree head,
and the admin-signed keyring revisions of the key that signed that
checkpoint. :mod:`ledger._proof_making` makes them, :mod:`ledger._proof_checking`
checks them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from trustbus.ledger._errors import LedgerError

INCLUSION = "trustbus/inclusion-proof/v1"
CONSISTENCY = "trustbus/consistency-proof/v1"

Hash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Hex = Annotated[str, msgspec.Meta(pattern="^(?:[0-9a-f]{2})*$")]
Header = tuple[str, str]


class ProofError(LedgerError):
    """A proof cannot be made, or a proof file does not check.

    Attributes:
        reason: a stable code: ``malformed``, ``admin_key``, ``untrusted_key``, ``bad_checkpoint``,
            ``mismatch``, ``not_included``, ``not_consistent`` (checking); ``no_checkpoint``,
            ``no_message``, ``log_mismatch`` (making).
        detail: what exactly.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ProofMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A stored message as a proof carries it: the leaf's fields (headers: the chained ones, sorted)."""

    seq: int
    subject: str
    headers: list[Header]
    body: Hex


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A checkpoint message as stored: its subject, its signature headers (sorted) and its body."""

    subject: str
    headers: list[Header]
    body: Hex


class KeyringEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One keyring revision: the entry's key and the admin-signed grant stored under it (docs/WIRE.md)."""

    key_id: str
    grant: Hex


class InclusionProof(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="format", tag=INCLUSION
):
    """The proof that ``message`` is leaf ``seq - 1`` of the tree the checkpoint signs."""

    tenant: str
    admin_key: str
    keyring: list[KeyringEntry]
    checkpoint: SignedCheckpoint
    tree_size: int
    root: Hash
    message: ProofMessage
    path: list[Hash]


class ConsistencyProof(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="format", tag=CONSISTENCY
):
    """The proof that the tree ``old`` signs is a prefix of the tree ``new`` signs."""

    tenant: str
    admin_key: str
    keyring: list[KeyringEntry]
    old: SignedCheckpoint
    old_size: int
    old_root: Hash
    new: SignedCheckpoint
    new_size: int
    new_root: Hash
    path: list[Hash]


ProofFile = InclusionProof | ConsistencyProof

_decoder = msgspec.json.Decoder(ProofFile)
_encoder = msgspec.json.Encoder()


def encode_proof(proof: ProofFile) -> bytes:
    """The proof file's bytes: compact JSON and a newline."""
    return _encoder.encode(proof) + b"\n"


def decode_proof(data: bytes) -> ProofFile:
    """The proof file ``data`` holds.

    Raises:
        ProofError: ``malformed``, it is not a proof file.
    """
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ProofError("malformed", f"not a proof file: {exc}") from exc
