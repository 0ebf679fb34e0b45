"""What happened: the hash chain and Merkle tree over the tenant stream, verification, proofs, audit bundles.

Every name is imported from its module on first use (PEP 562), so importing one
module of the package (or ``trustbus --help``) loads only what that module needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustbus.bus import lazy_names

if TYPE_CHECKING:
    from trustbus.bus import StoredMessage
    from trustbus.ledger._archive import Need, Segment, archive, consumer_needs, purge_archived, segments
    from trustbus.ledger._archive_verify import load_across, verify_archive
    from trustbus.ledger._audit import export, load_bundle_messages, load_messages, verify_bundle, verify_stream
    from trustbus.ledger._bundle import Bundle, BundleEntry, export_bundle, read_bundle, read_stream
    from trustbus.ledger._chain import CHAIN_DOMAIN, GENESIS, chain_hash, chained_headers
    from trustbus.ledger._errors import (
        ArchiveError,
        BundleError,
        LedgerError,
        ProjectionError,
        QueryError,
        ServiceError,
    )
    from trustbus.ledger._proof_checking import CheckedProof, check_proof, checked_dict
    from trustbus.ledger._proofs import ProofError, encode_proof
    from trustbus.ledger._proving import prove_from_bundle, prove_from_stream
    from trustbus.ledger._query import connect, query
    from trustbus.ledger._replay import Incident, Step, build_incident, checkpoint_before, step_dict
    from trustbus.ledger._rollback import (
        Compensation,
        RollbackPlan,
        compensated_keys,
        plan_rollback,
        verified_effects,
    )
    from trustbus.ledger._rollback_executor import execute_rollback, rollback_correlation
    from trustbus.ledger._segments import read_catalogue
    from trustbus.ledger._service import ServiceSettings, serve_ledger
    from trustbus.ledger._verify import Break, VerifyReport, verify_messages

__all__ = [
    "ArchiveError",
    "Break",
    "Bundle",
    "BundleEntry",
    "BundleError",
    "CHAIN_DOMAIN",
    "CheckedProof",
    "Compensation",
    "GENESIS",
    "Incident",
    "LedgerError",
    "Need",
    "ProjectionError",
    "ProofError",
    "QueryError",
    "RollbackPlan",
    "ServiceError",
    "Segment",
    "ServiceSettings",
    "Step",
    "StoredMessage",
    "VerifyReport",
    "archive",
    "build_incident",
    "chain_hash",
    "chained_headers",
    "check_proof",
    "checked_dict",
    "checkpoint_before",
    "compensated_keys",
    "connect",
    "consumer_needs",
    "encode_proof",
    "execute_rollback",
    "export",
    "export_bundle",
    "load_across",
    "load_bundle_messages",
    "load_messages",
    "plan_rollback",
    "prove_from_bundle",
    "prove_from_stream",
    "purge_archived",
    "query",
    "read_bundle",
    "read_catalogue",
    "read_stream",
    "rollback_correlation",
    "segments",
    "serve_ledger",
    "step_dict",
    "verified_effects",
    "verify_archive",
    "verify_bundle",
    "verify_messages",
    "verify_stream",
]

# Where each public name is defined.
_ORIGINS: dict[str, str] = {
    "StoredMessage": "trustbus.bus",
    "Need": "trustbus.ledger._archive",
    "Segment": "trustbus.ledger._archive",
    "archive": "trustbus.ledger._archive",
    "consumer_needs": "trustbus.ledger._archive",
    "purge_archived": "trustbus.ledger._archive",
    "segments": "trustbus.ledger._archive",
    "load_across": "trustbus.ledger._archive_verify",
    "verify_archive": "trustbus.ledger._archive_verify",
    "export": "trustbus.ledger._audit",
    "load_bundle_messages": "trustbus.ledger._audit",
    "load_messages": "trustbus.ledger._audit",
    "verify_bundle": "trustbus.ledger._audit",
    "verify_stream": "trustbus.ledger._audit",
    "Bundle": "trustbus.ledger._bundle",
    "BundleEntry": "trustbus.ledger._bundle",
    "export_bundle": "trustbus.ledger._bundle",
    "read_bundle": "trustbus.ledger._bundle",
    "read_stream": "trustbus.ledger._bundle",
    "CHAIN_DOMAIN": "trustbus.ledger._chain",
    "GENESIS": "trustbus.ledger._chain",
    "chain_hash": "trustbus.ledger._chain",
    "chained_headers": "trustbus.ledger._chain",
    "ArchiveError": "trustbus.ledger._errors",
    "BundleError": "trustbus.ledger._errors",
    "LedgerError": "trustbus.ledger._errors",
    "ProjectionError": "trustbus.ledger._errors",
    "QueryError": "trustbus.ledger._errors",
    "ServiceError": "trustbus.ledger._errors",
    "CheckedProof": "trustbus.ledger._proof_checking",
    "check_proof": "trustbus.ledger._proof_checking",
    "checked_dict": "trustbus.ledger._proof_checking",
    "ProofError": "trustbus.ledger._proofs",
    "encode_proof": "trustbus.ledger._proofs",
    "prove_from_bundle": "trustbus.ledger._proving",
    "prove_from_stream": "trustbus.ledger._proving",
    "connect": "trustbus.ledger._query",
    "query": "trustbus.ledger._query",
    "Incident": "trustbus.ledger._replay",
    "Step": "trustbus.ledger._replay",
    "build_incident": "trustbus.ledger._replay",
    "checkpoint_before": "trustbus.ledger._replay",
    "step_dict": "trustbus.ledger._replay",
    "Compensation": "trustbus.ledger._rollback",
    "RollbackPlan": "trustbus.ledger._rollback",
    "compensated_keys": "trustbus.ledger._rollback",
    "plan_rollback": "trustbus.ledger._rollback",
    "verified_effects": "trustbus.ledger._rollback",
    "execute_rollback": "trustbus.ledger._rollback_executor",
    "rollback_correlation": "trustbus.ledger._rollback_executor",
    "read_catalogue": "trustbus.ledger._segments",
    "ServiceSettings": "trustbus.ledger._service",
    "serve_ledger": "trustbus.ledger._service",
    "Break": "trustbus.ledger._verify",
    "VerifyReport": "trustbus.ledger._verify",
    "verify_messages": "trustbus.ledger._verify",
}

# Hidden from the type checker, which reads the imports above: seeing __getattr__, it would take any name for Any.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_names(globals(), _ORIGINS)
