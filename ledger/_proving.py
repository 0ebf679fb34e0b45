"""Making proof files from an audit bundle or the live stream: the entry points behind ``trustbus ledger prove``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bus import Keyring, KeyringError, connect_nats, pinned_admin_key
from bus._keyring import decode_signed_grant
from ledger._bundle import read_bundle, read_keyring_revisions, read_stream
from ledger._errors import BundleError
from ledger._proofs import ProofError, ProofFile, prove_consistency, prove_inclusion
from ledger._stored import StoredMessage


def _keyring(tenant: str, admin_key: str, revisions: Sequence[tuple[str, bytes]]) -> Keyring:
    keyring = Keyring(tenant=tenant, admin_key_id=admin_key)
    for key_id, value in revisions:
        try:
            keyring.add(key_id, decode_signed_grant(value))
        except KeyringError as exc:
            raise BundleError(f"keyring revision for {key_id} is unreadable: {exc}") from exc
    return keyring


def _prove(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    revisions: Sequence[tuple[str, bytes]],
    tenant: str,
    *,
    seq: int | None,
    consistency: tuple[int, int] | None,
) -> ProofFile:
    if messages and messages[0].seq != 1:
        raise ProofError("log_mismatch", f"the log starts at sequence {messages[0].seq}: a proof needs it from 1")
    if consistency is not None:
        return prove_consistency(lambda: messages, keyring, revisions, tenant, *consistency)
    if seq is None:
        raise ProofError("no_message", "give a sequence or two tree sizes")
    return prove_inclusion(lambda: messages, keyring, revisions, tenant, seq)


def prove_from_bundle(
    directory: Path,
    *,
    seq: int | None = None,
    consistency: tuple[int, int] | None = None,
    admin_key: str | None = None,
) -> ProofFile:
    """An inclusion proof of ``seq``, or a consistency proof between tree sizes ``(old, new)``, from a bundle.

    Raises:
        BundleError: the bundle cannot be read.
        ProofError: no checkpoint fits, or the bundle does not match its checkpoints.
    """
    bundle = read_bundle(directory)
    tenant = str(bundle.manifest["tenant"])
    revisions = bundle.keyring_revisions
    keyring = _keyring(tenant, admin_key or str(bundle.manifest["admin_key"]), revisions)
    messages = [e.message() for e in bundle.entries]
    return _prove(messages, keyring, revisions, tenant, seq=seq, consistency=consistency)


async def prove_from_stream(
    servers: Sequence[str],
    tenant: str,
    *,
    seq: int | None = None,
    consistency: tuple[int, int] | None = None,
    nkey_seed: str | None = None,
) -> ProofFile:
    """The same from the tenant's live stream and keyring, anchored on the admin key pinned in the stream."""
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        admin_key = await pinned_admin_key(js, tenant)
        revisions = await read_keyring_revisions(js, tenant)
        messages = await read_stream(js, tenant)
    finally:
        await nc.close()
    keyring = _keyring(tenant, admin_key, revisions)
    return _prove(messages, keyring, revisions, tenant, seq=seq, consistency=consistency)
