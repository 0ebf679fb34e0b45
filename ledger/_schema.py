"""The DuckDB schema of the projection: tables, their columns and types, and the views.

Pure data. The projection writes each table as Parquet segments with exactly
these columns (:mod:`ledger._segments`); a query connection declares the views
over them (:mod:`ledger._query`). docs/LEDGER_PROJECTION.md documents every
column; a test checks that it names each one.
"""

from __future__ import annotations

from types import MappingProxyType

_LIST = "VARCHAR[]"

ENVELOPES = {
    "seq": "BIGINT",
    "subject": "VARCHAR",
    "channel": "VARCHAR",
    "recipient": "VARCHAR",
    "stored_ns": "BIGINT",
    "id": "VARCHAR",
    "tenant": "VARCHAR",
    "kind": "VARCHAR",
    "sender": "VARCHAR",
    "recipients": _LIST,
    "ts": "BIGINT",
    "correlation_id": "VARCHAR",
    "causation_id": "VARCHAR",
    "hop": "BIGINT",
    "taint": _LIST,
    "idempotency_key": "VARCHAR",
    "content_type": "VARCHAR",
    "payload_size": "BIGINT",
    "body_size": "BIGINT",
    "verified": "BOOLEAN",
    "reject_reason": "VARCHAR",
    "reject_detail": "VARCHAR",
    "key_id": "VARCHAR",
    "role": "VARCHAR",
    "decision_id": "VARCHAR",
    "record_error": "VARCHAR",
    "chain": "VARCHAR",
}

DECISIONS = {
    "decision_id": "VARCHAR",
    "seq": "BIGINT",
    "coordinator": "VARCHAR",
    "envelope_id": "VARCHAR",
    "source_seq": "BIGINT",
    "sender": "VARCHAR",
    "kind": "VARCHAR",
    "correlation_id": "VARCHAR",
    "causation_id": "VARCHAR",
    "verdict": "VARCHAR",
    "reasons": _LIST,
    "deliver_to": _LIST,
    "dropped": "STRUCT(recipient VARCHAR, reason VARCHAR)[]",
    "hop": "BIGINT",
    "declared_taint": _LIST,
    "effective_taint": _LIST,
    "decided_ns": "BIGINT",
    "approval_id": "VARCHAR",
    "approver": "VARCHAR",
}

EFFECTS = {
    "seq": "BIGINT",
    "envelope_id": "VARCHAR",
    "agent": "VARCHAR",
    "idempotency_key": "VARCHAR",
    "phase": "VARCHAR",
    "tool": "VARCHAR",
    "effect_class": "VARCHAR",
    "compensating_tool": "VARCHAR",
    "taint": _LIST,
    "correlation_id": "VARCHAR",
    "causation_id": "VARCHAR",
    "error": "VARCHAR",
    "ts": "BIGINT",
}

MEMORY_PROPOSALS = {
    "seq": "BIGINT",
    "envelope_id": "VARCHAR",
    "agent": "VARCHAR",
    "key": "VARCHAR",
    "expected_revision": "BIGINT",
    "correlation_id": "VARCHAR",
    "taint": _LIST,
}

QUARANTINE = {
    "seq": "BIGINT",
    "rejected_by": "VARCHAR",
    "reason": "VARCHAR",
    "detail": "VARCHAR",
    "subject": "VARCHAR",
    "stream_seq": "BIGINT",
    "claimed_sender": "VARCHAR",
    "claimed_id": "VARCHAR",
    "key_id": "VARCHAR",
    "body_size": "BIGINT",
    "body_sha256": "VARCHAR",
    "truncated": "BOOLEAN",
}

CHECKPOINTS = {
    "seq": "BIGINT",
    "stream": "VARCHAR",
    "through_seq": "BIGINT",
    "head": "VARCHAR",
    "count": "BIGINT",
    "signer": "VARCHAR",
    "key_id": "VARCHAR",
}

KEYS = {
    "key_id": "VARCHAR",
    "owner": "VARCHAR",
    "role": "VARCHAR",
    "valid_from": "BIGINT",
    "revoked_at": "BIGINT",
}

TABLES: MappingProxyType[str, dict[str, str]] = MappingProxyType(
    {
        "envelopes": ENVELOPES,
        "decisions": DECISIONS,
        "effects": EFFECTS,
        "memory_proposals": MEMORY_PROPOSALS,
        "quarantine": QUARANTINE,
        "checkpoints": CHECKPOINTS,
        "keys": KEYS,
    }
)
"""Every table, in the order they are documented: column name -> DuckDB type."""

STREAM_TABLES = ("envelopes", "decisions", "effects", "memory_proposals", "quarantine", "checkpoints")
"""The tables projected from the stream, segment by segment (``keys`` is a snapshot of the keyring)."""

VIEWS: MappingProxyType[str, str] = MappingProxyType(
    {
        "memory_writes": """
            SELECT p.seq, p.envelope_id, p.agent, p.key, p.expected_revision, p.correlation_id, p.taint,
                   d.verdict, d.reasons, d.effective_taint, d.decision_seq
            FROM memory_proposals p
            LEFT JOIN (
                SELECT source_seq,
                       arg_max(verdict, seq) AS verdict,
                       arg_max(reasons, seq) AS reasons,
                       arg_max(effective_taint, seq) AS effective_taint,
                       max(seq) AS decision_seq
                FROM decisions GROUP BY source_seq
            ) d ON d.source_seq = p.seq
        """,
        "fanout_per_correlation": """
            SELECT correlation_id,
                   count(*) FILTER (WHERE channel = 'outbox') AS sent,
                   count(*) FILTER (WHERE channel IN ('inbox', 'topic')) AS deliveries,
                   count(DISTINCT recipient) AS recipients,
                   round(count(*) FILTER (WHERE channel IN ('inbox', 'topic'))
                         / nullif(count(*) FILTER (WHERE channel = 'outbox'), 0), 3) AS fanout,
                   max(hop) AS max_hop,
                   min(seq) AS first_seq,
                   max(seq) AS last_seq
            FROM envelopes
            WHERE verified AND channel IN ('outbox', 'inbox', 'topic')
            GROUP BY correlation_id
        """,
        "activity_per_agent": """
            SELECT agent,
                   count(*) FILTER (WHERE what = 'sent') AS sent,
                   count(*) FILTER (WHERE what = 'received') AS received,
                   count(*) FILTER (WHERE what = 'accept') AS accepted,
                   count(*) FILTER (WHERE what = 'reject') AS rejected,
                   count(*) FILTER (WHERE what = 'hold') AS held,
                   count(*) FILTER (WHERE what = 'effect') AS effects_completed,
                   count(*) FILTER (WHERE what = 'quarantined') AS quarantined,
                   min(seq) AS first_seq,
                   max(seq) AS last_seq
            FROM (
                SELECT sender AS agent, 'sent' AS what, seq FROM envelopes WHERE verified AND channel = 'outbox'
                UNION ALL
                SELECT recipient, 'received', seq FROM envelopes WHERE verified AND channel = 'inbox'
                UNION ALL
                SELECT sender, verdict, seq FROM decisions WHERE kind <> 'effect'
                UNION ALL
                SELECT agent, 'effect', seq FROM effects WHERE phase = 'completed'
                UNION ALL
                SELECT claimed_sender, 'quarantined', seq FROM quarantine WHERE claimed_sender IS NOT NULL
            )
            GROUP BY agent
        """,
        "rejections_by_reason": """
            SELECT source, reason, count(*) AS rejections, min(seq) AS first_seq, max(seq) AS last_seq
            FROM (
                SELECT 'ledger' AS source, reject_reason AS reason, seq FROM envelopes WHERE NOT verified
                UNION ALL
                SELECT 'coordinator', unnest(reasons), seq FROM decisions WHERE verdict = 'reject'
                UNION ALL
                SELECT 'quarantine', reason, seq FROM quarantine
            )
            GROUP BY source, reason
        """,
        "effects_per_tool": """
            SELECT tool, effect_class,
                   count(*) AS calls,
                   count(*) FILTER (WHERE completed) AS completed,
                   count(*) FILTER (WHERE failed AND NOT completed) AS failed,
                   count(*) FILTER (WHERE NOT completed AND NOT failed) AS open,
                   count(DISTINCT agent) AS agents
            FROM (
                SELECT tool, effect_class, agent, idempotency_key,
                       bool_or(phase = 'completed') AS completed,
                       bool_or(phase = 'failed') AS failed
                FROM effects GROUP BY tool, effect_class, agent, idempotency_key
            )
            GROUP BY tool, effect_class
        """,
        "checkpoint_checks": """
            SELECT c.seq, c.through_seq, c.head, e.chain AS recomputed, c.signer, k.role AS signer_role,
                   e.chain IS NOT NULL AND e.chain = c.head AND k.role = 'ledger' AS holds
            FROM checkpoints c
            LEFT JOIN envelopes e ON e.seq = c.through_seq
            LEFT JOIN keys k ON k.key_id = c.key_id
        """,
    }
)
"""Every view: name -> its SELECT, over the tables above."""


def columns_spec(table: str) -> str:
    """The table's columns as a DuckDB ``read_json(columns=...)`` struct literal."""
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in TABLES[table].items()) + "}"


def create_table_sql(table: str) -> str:
    """``CREATE TABLE`` of an empty table with the table's columns (a projection with no rows yet)."""
    return f"CREATE TABLE {table} (" + ", ".join(f'"{n}" {k}' for n, k in TABLES[table].items()) + ")"
