"""What the console shows and does, read from the tenant's stream and the ledger's projection.

Every call opens a connection of its own and closes it, as the commands do: the
console holds no state of the bus between requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustbus.bus import Decision, KeyDirectory
    from trustbus.ledger import Incident

RECENT = 100
"""How many decisions and refusals the live page shows."""
LOOKBACK = 5000
"""How many stream sequences before the last decision the live page's first look reads decisions from."""
SQL_ROWS = 1000
"""The most rows the SQL page shows of one result."""


class SqlRefused(Exception):
    """The SQL page runs one SELECT statement and nothing else."""


@dataclass(frozen=True)
class Source:
    """The tenant the console shows and the operator it acts as.

    Attributes:
        servers: NATS URLs.
        tenant: the tenant.
        operator: the key owner (role operator) approvals are signed as.
        keys: the seed directory holding the operator's seed.
        nkey_seed: authenticate to NATS with this nkey (the global --nkey), or anonymously.
        data: the ledger projection directory the SQL page reads.
    """

    servers: list[str]
    tenant: str
    operator: str
    keys: KeyDirectory
    nkey_seed: str | None
    data: Path

    async def holds(self) -> list[dict[str, Any]]:
        """The held envelopes and tool calls, each with what it would do and why it waits."""
        from trustbus.agents import list_held_requests

        reader = self.operator if self.nkey_seed else None
        held = await list_held_requests(self.servers, self.tenant, nkey_seed=self.nkey_seed, reader=reader)
        return [hold_dict(decision, request) for decision, request in held]

    async def answer(self, envelope_id: str, *, approve: bool, note: str) -> dict[str, Any]:
        """Approve or deny a hold exactly as ``trustbus approve``/``deny``: signed, through the coordinator."""
        from trustbus.agents import answer

        decision = await answer(
            self.servers,
            self.tenant,
            envelope_id,
            operator=self.operator,
            keys=self.keys,
            approve=approve,
            note=note,
            nkey_seed=self.nkey_seed,
        )
        return decision_dict(decision, 0)

    async def live(self, after: int) -> dict[str, Any]:
        """The decisions recorded after stream sequence ``after`` (the last :data:`RECENT`), and the refusals.

        ``after`` 0 is a first look: it reads from :data:`LOOKBACK` sequences before the last decision.
        """
        from trustbus._commands import refusals
        from trustbus.bus import TenantStream, VerificationError, decode_decisions, open_envelope, subjects

        decisions: list[dict[str, Any]] = []
        async with await TenantStream.connect(self.servers, self.tenant, nkey_seed=self.nkey_seed) as stream:
            keyring = await stream.keyring()
            log = stream.log(subjects.all_decisions(self.tenant))
            if after == 0 and (last := await log.last()) is not None:
                after = max(0, last.seq - LOOKBACK)
            async for message in log.read(after=after):
                try:
                    opened = open_envelope(
                        message.body, message.headers, keyring=keyring, received_ns=message.stored_ns, at_store=True
                    )
                    recorded, _ = decode_decisions(opened.envelope.payload)
                except (VerificationError, ValueError):  # not a record at all: the refusals list it
                    continue
                if opened.grant.role != "coordinator":  # a decision only a coordinator's key may make
                    continue
                decisions.extend(decision_dict(decision, message.seq) for decision in recorded)
        refused = await refusals(self.servers, tenant=self.tenant, nkey_seed=self.nkey_seed)
        return {
            "decisions": decisions[-RECENT:],
            "refusals": [vars(r) for r in refused[-RECENT:]],
            "last": max([after, *(d["seq"] for d in decisions)]),
        }

    async def incident(self, correlation: str) -> Incident:
        """The causal record of ``correlation``, as ``trustbus show`` and ``ledger replay`` build it."""
        from trustbus.ledger import build_incident, load_messages

        messages, keyring = await load_messages(self.servers, self.tenant, nkey_seed=self.nkey_seed)
        return build_incident(messages, keyring, self.tenant, correlation)

    def sql(self, sql: str) -> tuple[list[str], list[list[str]], bool]:
        """(columns, rows, cut) of one read-only statement over the projection, cells as `trustbus query` prints them.

        At most :data:`SQL_ROWS` rows; ``cut`` says there were more.

        Raises:
            SqlRefused: the text is not one SELECT statement.
            LedgerError, duckdb.Error: no projection, or DuckDB's own error.
        """
        import duckdb

        from trustbus._projection_cli import cell
        from trustbus.ledger import query

        statements = duckdb.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise SqlRefused("the SQL page runs one SELECT statement (the projection is read-only here)")
        relation = query(sql, self.data)
        rows = relation.limit(SQL_ROWS + 1).fetchall()
        return list(relation.columns), [[cell(v) for v in row] for row in rows[:SQL_ROWS]], len(rows) > SQL_ROWS


def decision_dict(decision: Decision, seq: int) -> dict[str, Any]:
    """A decision as the pages show it; ``seq`` is where its record is stored (0: not known)."""
    return {
        "seq": seq,
        "envelope_id": decision.envelope_id,
        "correlation_id": decision.correlation_id,
        "sender": decision.sender,
        "kind": decision.kind,
        "verdict": decision.verdict,
        "reasons": list(decision.reasons),
        "deliver_to": list(decision.deliver_to),
        "declared_taint": list(decision.declared_taint),
        "effective_taint": list(decision.effective_taint),
        "decided_ns": decision.decided_ns,
        "approver": decision.approver,
        "approval_id": decision.approval_id,
    }


def hold_dict(decision: Decision, request: str) -> dict[str, Any]:
    """A hold: who would send what to whom (the verb and its arguments), with which taint, and why it waits."""
    verb, arguments = verb_and_arguments(decision.kind, request)
    return {**decision_dict(decision, decision.source_seq), "verb": verb, "arguments": arguments, "request": request}


def verb_and_arguments(kind: str, request: str) -> tuple[str, str]:
    """The verb (a tool call's tool, an instruction's ``verb``) and the rest of what a held message asks."""
    if kind == "effect":
        tool, _, arguments = request.partition(" ")
        return tool, arguments
    try:
        asked = json.loads(request)
    except ValueError:
        return "", request
    if isinstance(asked, dict) and isinstance(asked.get("verb"), str):
        verb = asked.pop("verb")
        return verb, json.dumps(asked)
    return "", request
