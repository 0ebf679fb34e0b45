"""Verifying a live stream or an audit bundle: the entry points behind ``trustbus ledger``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bus import Keyring, KeyringStore, connect_nats
from ledger._bundle import export_bundle, read_bundle, read_stream
from ledger._proofs import tree_head_breaks
from ledger._stored import StoredMessage
from ledger._streaming import verify_live
from ledger._verify import Break, VerifyReport, verify_messages


async def verify_stream(
    servers: Sequence[str], tenant: str, *, from_seq: int = 1, nkey_seed: str | None = None
) -> VerifyReport:
    """Verify the tenant's stream from ``from_seq`` (the chain is computed from the start), streaming.

    Memory follows the traffic of one skew window, not the stream's length (:mod:`ledger._streaming`).
    """
    return await verify_live(servers, tenant, from_seq=from_seq, nkey_seed=nkey_seed)


async def export(servers: Sequence[str], tenant: str, out: Path, *, nkey_seed: str | None = None) -> dict[str, object]:
    """Write an audit bundle of the tenant's stream to ``out``."""
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        return await export_bundle(nc.jetstream(), tenant, out)
    finally:
        await nc.close()


def verify_bundle(directory: Path, *, admin_key: str | None = None) -> VerifyReport:
    """Verify a bundle with no server: sequence, recorded chain, manifest head, every signature.

    ``admin_key`` pins the trust anchor; without it the manifest's is used.
    """
    bundle = read_bundle(directory)
    keyring = bundle.keyring(admin_key=admin_key)
    tenant = str(bundle.manifest["tenant"])
    first = int(str(bundle.manifest["first_seq"])) or 1
    messages = [entry.message() for entry in bundle.entries]
    report = verify_messages(
        messages,
        keyring,
        tenant,
        first_seq=first,
        expected_chain={entry.seq: entry.chain for entry in bundle.entries},
    )
    report.breaks.extend(tree_head_breaks(messages, keyring, tenant))
    last = int(str(bundle.manifest["last_seq"]))
    if report.head.hex() != bundle.manifest["head"] or report.last_seq != last:
        report.breaks.append(
            Break(last, "manifest", "the manifest's head or last sequence does not match the messages")
        )
    if admin_key is not None and admin_key != bundle.manifest["admin_key"]:
        report.breaks.append(Break(first, "admin_key", "the bundle names another admin key than the pinned one"))
    return report


async def load_messages(
    servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None
) -> tuple[list[StoredMessage], Keyring]:
    """The tenant's whole stream and keyring, from a live server."""
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    try:
        js = nc.jetstream()
        messages = await read_stream(js, tenant)
        async with await KeyringStore.open(js, tenant, follow=False) as store:
            return messages, store.keyring
    finally:
        await nc.close()


def load_bundle_messages(directory: Path, *, admin_key: str | None = None) -> tuple[list[StoredMessage], Keyring, str]:
    """A bundle's messages, keyring and tenant."""
    bundle = read_bundle(directory)
    return [e.message() for e in bundle.entries], bundle.keyring(admin_key=admin_key), str(bundle.manifest["tenant"])
