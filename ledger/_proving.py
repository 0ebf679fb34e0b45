"""Making proof files from an audit bundle or the live stream: the entry points behind ``trustbus ledger prove``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from trustbus.bus import Keyring, StoredMessage, TenantStream, subjects
from trustbus.ledger._bundle import KeyringRevision, keyring_of, read_bundle, read_keyring_revisions
from trustbus.ledger._proof_making import prove_consistency, prove_inclusion
from trustbus.ledger._proofs import ProofError, ProofFile


def _pairs(revisions: Sequence[KeyringRevision]) -> list[tuple[str, bytes]]:
    """The revisions as a proof file carries them: ``(entry key, signed grant bytes)``."""
    return [(r.key_id, r.value) for r in revisions]


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
    revisions = _pairs(bundle.keyring_revisions)
    keyring = bundle.keyring(admin_key=admin_key)
    messages = [e.message() for e in bundle.entries]
    if messages and messages[0].seq != 1:
        raise ProofError("log_mismatch", f"the log starts at sequence {messages[0].seq}: a proof needs it from 1")
    return _prove_passes(lambda: messages, keyring, revisions, tenant, seq=seq, consistency=consistency)


async def prove_from_stream(
    servers: Sequence[str],
    tenant: str,
    *,
    seq: int | None = None,
    consistency: tuple[int, int] | None = None,
    nkey_seed: str | None = None,
) -> ProofFile:
    """The same from the tenant's live stream and keyring, anchored on the admin key pinned in the stream.

    The stream is read twice, never held: its checkpoint subject first, then
    every message up to the chosen tree's size, a batch at a time, into the
    proof (on a worker thread, which pulls the batches from this event loop).
    """
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as reader:
        admin_key = await reader.admin_key()
        stored = await read_keyring_revisions(reader)
        keyring, revisions = keyring_of(tenant, admin_key, stored), _pairs(stored)
        last = await reader.last_seq()
        checkpoints: list[StoredMessage] = []
        async for batch in reader.batches(last=last, only=(subjects.checkpoint(tenant),)):
            checkpoints.extend(batch)
        everything = reader.batches(last=last)
        loop = asyncio.get_running_loop()

        async def following() -> list[StoredMessage]:
            return await anext(everything)

        def pulled() -> Iterator[StoredMessage]:
            while True:
                try:
                    batch = asyncio.run_coroutine_threadsafe(following(), loop).result()
                except StopAsyncIteration:
                    return
                yield from batch

        passes = iter((lambda: checkpoints, pulled))
        try:
            return await asyncio.to_thread(
                _prove_passes, lambda: next(passes)(), keyring, revisions, tenant, seq=seq, consistency=consistency
            )
        finally:
            await everything.aclose()


def _prove_passes(
    messages: Callable[[], Iterable[StoredMessage]],
    keyring: Keyring,
    revisions: Sequence[tuple[str, bytes]],
    tenant: str,
    *,
    seq: int | None,
    consistency: tuple[int, int] | None,
) -> ProofFile:
    """A proof over ``messages``: its first call gives the checkpoints, its second the stream from sequence 1."""
    if consistency is not None:
        return prove_consistency(messages, keyring, revisions, tenant, *consistency)
    if seq is None:
        raise ProofError("no_message", "give a sequence or two tree sizes")
    return prove_inclusion(messages, keyring, revisions, tenant, seq)
