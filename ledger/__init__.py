"""What happened: the hash chain and Merkle tree over the tenant stream, verification, proofs, audit bundles."""

from trustbus.bus import StoredMessage
from trustbus.ledger._audit import export, load_bundle_messages, load_messages, verify_bundle, verify_stream
from trustbus.ledger._bundle import Bundle, BundleEntry, export_bundle, read_bundle, read_stream
from trustbus.ledger._chain import CHAIN_DOMAIN, GENESIS, chain_hash, chained_headers
from trustbus.ledger._errors import BundleError, LedgerError, ProjectionError, QueryError, ServiceError
from trustbus.ledger._proofs import CheckedProof, ProofError, check_proof
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
from trustbus.ledger._rollback_executor import execute_rollback
from trustbus.ledger._verify import Break, VerifyReport, verify_messages

__all__ = [
    "CHAIN_DOMAIN",
    "GENESIS",
    "Compensation",
    "Incident",
    "RollbackPlan",
    "compensated_keys",
    "execute_rollback",
    "plan_rollback",
    "verified_effects",
    "Step",
    "build_incident",
    "checkpoint_before",
    "load_bundle_messages",
    "load_messages",
    "step_dict",
    "Break",
    "Bundle",
    "BundleEntry",
    "BundleError",
    "LedgerError",
    "ProjectionError",
    "QueryError",
    "ServiceError",
    "connect",
    "query",
    "StoredMessage",
    "VerifyReport",
    "chain_hash",
    "chained_headers",
    "export",
    "export_bundle",
    "read_bundle",
    "read_stream",
    "verify_bundle",
    "verify_messages",
    "verify_stream",
    "CheckedProof",
    "ProofError",
    "check_proof",
    "prove_from_bundle",
    "prove_from_stream",
]
