"""Verifying a live stream or an audit bundle: the entry points behind ``trustbus ledger``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trustbus.bus import Identity, Keyring, StoredMessage, TenantStream
from trustbus.ledger._anchors import open_checkpoint_file, parse_expectation, stated_head
from trustbus.ledger._bundle import Bundle, export_bundle, read_bundle, read_stream
from trustbus.ledger._chain import GENESIS
from trustbus.ledger._errors import BundleError
from trustbus.ledger._streaming import verify_live
from trustbus.ledger._verify import Break, VerifyReport, verify_messages


async def verify_stream(
    servers: Sequence[str], tenant: str, *, from_seq: int = 1, nkey_seed: str | None = None
) -> VerifyReport:
    """Verify the tenant's stream from ``from_seq`` (the chain is computed from the start), streaming.

    Memory follows the traffic of one skew window, not the stream's length (:mod:`ledger._streaming`).
    """
    return await verify_live(servers, tenant, from_seq=from_seq, nkey_seed=nkey_seed)


async def export(
    servers: Sequence[str],
    tenant: str,
    out: Path,
    *,
    signer: Identity,
    signer_name: str,
    from_seq: int = 1,
    nkey_seed: str | None = None,
) -> dict[str, object]:
    """Write an audit bundle of the tenant's stream to ``out``, anchored by ``signer`` (a ``ledger`` key)."""
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as reader:
        return await export_bundle(reader, out, signer=signer, signer_name=signer_name, from_seq=from_seq)


def verify_bundle(directory: Path, *, admin_key: str | None = None, expect: Sequence[str] = ()) -> VerifyReport:
    """Verify a bundle with no server, in the order of docs/LEDGER.md ("Verifying a bundle").

    Args:
        directory: the bundle.
        admin_key: pins the trust anchor; without it the manifest's is used (and the report says so).
        expect: outside anchors, each ``SEQ:HEAD`` or the path of a checkpoint file kept elsewhere.

    Raises:
        BundleError: the bundle or an ``expect`` value is unreadable.
    """
    bundle = read_bundle(directory)
    keyring = bundle.keyring(admin_key=admin_key)
    tenant = str(bundle.manifest["tenant"])
    first = int(str(bundle.manifest["first_seq"])) or 1
    messages = [entry.message() for entry in bundle.entries]
    last = int(str(bundle.manifest["last_seq"]))
    expectations = [parse_expectation(text, keyring, tenant) for text in expect]
    start_problem, previous = _start(bundle, keyring, tenant, first)
    end_stated = stated_head(bundle.end) if bundle.end is not None else None
    watch = {e.seq for e in expectations} | ({end_stated[0]} if end_stated else set())
    report = verify_messages(
        messages,
        keyring,
        tenant,
        first_seq=first,
        previous=previous,
        expected_chain={entry.seq: entry.chain for entry in bundle.entries},
        watch=watch,
    )
    report.watched[first - 1] = previous
    report.admin_key_pinned = admin_key is not None
    if start_problem is not None:
        report.breaks.append(Break(first, "unanchored", start_problem))
    if (
        report.head.hex() != bundle.manifest["head"]
        or report.last_seq != last
        or report.count != bundle.manifest["count"]
    ):
        report.breaks.append(
            Break(last, "manifest", "the manifest's head, last sequence or count does not match the messages")
        )
    if admin_key is not None and admin_key != bundle.manifest["admin_key"]:
        report.breaks.append(Break(first, "admin_key", "the bundle names another admin key than the pinned one"))
    end_problem = _end(bundle, keyring, tenant, report)
    for expectation in expectations:
        _anchor(report, expectation.seq, expectation.head, source=expectation.source)
    if not report.breaks and report.uncovered is not None:  # otherwise the breaks say why; `uncovered` says where
        start, end = report.uncovered
        why = end_problem or "no signed checkpoint states their head"
        report.breaks.append(Break(start, "unanchored", f"sequences {start}-{end} are not covered: {why}"))
    return report


def _start(bundle: Bundle, keyring: Keyring, tenant: str, first: int) -> tuple[str | None, bytes]:
    """Why the head before ``first`` is not established (None: it is), and that head."""
    if first == 1:
        return None, GENESIS
    if bundle.start is None:
        return f"the bundle starts at {first} with no start checkpoint stating the head it chains from", GENESIS
    stated = stated_head(bundle.start)
    previous = stated[1] if stated is not None else GENESIS
    try:
        signed = open_checkpoint_file(bundle.start, keyring, tenant)
    except BundleError as exc:
        return f"the start checkpoint does not hold: {exc}", previous
    if signed.through_seq != first - 1:
        return f"the start checkpoint states sequence {signed.through_seq}, not {first - 1}", previous
    return None, previous


def _end(bundle: Bundle, keyring: Keyring, tenant: str, report: VerifyReport) -> str | None:
    """Check the export checkpoint against the run; returns why it does not cover the tail (None: it does)."""
    if bundle.end is None:
        return "the bundle has no export checkpoint"
    try:
        signed = open_checkpoint_file(bundle.end, keyring, tenant)
    except BundleError as exc:
        return f"the export checkpoint does not hold: {exc}"
    held = _anchor(report, signed.through_seq, signed.head, source=f"export checkpoint by {signed.key_id}")
    if held and signed.through_seq < report.last_seq:
        return f"the export checkpoint states sequence {signed.through_seq} only"
    return None


def _anchor(report: VerifyReport, seq: int, head: bytes, *, source: str) -> bool:
    """Check a signed or outside head at ``seq`` against the run; record it, and any break. True if it holds."""
    known = report.watched.get(seq)
    problem: Break | None = None
    if seq > report.last_seq:
        problem = Break(report.last_seq + 1, "truncated", f"{source} states sequence {seq}; the bundle ends at "
                        f"{report.last_seq}")  # fmt: skip
    elif known is None:
        problem = Break(report.first_seq, "anchor", f"{source} states sequence {seq}, before the bundle")
    elif known != head:
        problem = Break(seq, "anchor", f"{source} states another chain head at {seq}")
    report.anchors.append({"source": source, "seq": seq, "head": head.hex(), "holds": problem is None})
    if problem is not None:
        report.breaks.append(problem)
        return False
    report.signed_through = max(report.signed_through, seq)
    return True


async def load_messages(
    servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None
) -> tuple[list[StoredMessage], Keyring]:
    """The tenant's whole stream and keyring, from a live server."""
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed) as reader:
        return await read_stream(reader), await reader.keyring()


def load_bundle_messages(directory: Path, *, admin_key: str | None = None) -> tuple[list[StoredMessage], Keyring, str]:
    """A bundle's messages, keyring and tenant."""
    bundle = read_bundle(directory)
    return [e.message() for e in bundle.entries], bundle.keyring(admin_key=admin_key), str(bundle.manifest["tenant"])
