"""Verification of a run of stored messages: sequence, hash chain, and every signature.

Pure: the caller supplies the messages (from a bundle, or a run in memory) and
the keyring. The rules are those of the one :class:`~ledger._judging.Judge`,
which the live stream's verifier (:mod:`ledger._streaming`) feeds too. A
message that fails signature verification is a break unless a verified
quarantine record names it exactly (sequence, subject, body hash): an attack
that was refused and recorded is history, not tampering (:mod:`ledger._excuses`).
Every checkpoint in the run must be checked: one stating a sequence the run
cannot check is a break. docs/LEDGER.md is the spec.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from trustbus.bus import Keyring, StoredMessage
from trustbus.ledger._chain import GENESIS
from trustbus.ledger._judging import Judge, collect_anchors
from trustbus.ledger._parallel import open_all
from trustbus.ledger._report import MAX_BREAKS, Break, VerifyReport

__all__ = ["MAX_BREAKS", "Break", "VerifyReport", "verify_messages"]


def verify_messages(
    messages: Sequence[StoredMessage],
    keyring: Keyring,
    tenant: str,
    *,
    first_seq: int = 1,
    previous: bytes = GENESIS,
    expected_chain: Mapping[int, bytes] | None = None,
    earlier_heads: Mapping[int, bytes] | None = None,
    watch: Collection[int] = (),
) -> VerifyReport:
    """Check sequence continuity, the chain (against ``expected_chain`` if given) and every signature.

    Args:
        messages: stored messages, in the order claimed to be stream order.
        keyring: the tenant's keyring (revocations apply from their time on).
        tenant: the tenant.
        first_seq: the sequence the run must start at.
        previous: the chain hash before ``first_seq`` (genesis for 1).
        expected_chain: recorded chain hashes by sequence (a bundle's), to compare.
        earlier_heads: chain hashes of sequences before ``first_seq`` (``verify --from``), so a
            checkpoint in the run stating one of them can be checked.
        watch: sequences whose chain hash to keep in ``report.watched`` (for outside anchors).
    """
    judge = Judge(
        keyring,
        tenant,
        collect_anchors(messages, keyring, tenant),
        first_seq=first_seq,
        previous=previous,
        present={m.seq for m in messages},
        expected_chain=expected_chain,
        earlier_heads=earlier_heads,
        watch=watch,
        window_ns=None,  # the run is in memory already: its ids are remembered for all of it
    )
    judge.feed(messages, open_all(messages, keyring, tenant))
    return judge.report
