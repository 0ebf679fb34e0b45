"""The incident ``trustbus demo`` walks through, scene by scene, and the summary it reads back from the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from rich.console import Console

from trustbus._incident_view import incident_tree, redecided_rows
from trustbus.agents import answer, connect_agent, list_held
from trustbus.bus import Bus, Envelope, TenantStream, cancel_and_wait, current_trace, new_envelope, traced
from trustbus.demo.fleet import TENANT, Fleet
from trustbus.demo.model import calls
from trustbus.demo.systems import FILES, STALL_FILE, billing_db
from trustbus.demo.watch import Watch
from trustbus.ledger import (
    build_incident,
    compensated_keys,
    execute_rollback,
    export,
    load_messages,
    plan_rollback,
    read_catalogue,
    rollback_correlation,
    verified_effects,
    verify_stream,
)
from trustbus.ledger import connect as connect_projection

if TYPE_CHECKING:
    from opentelemetry.trace import Span

CRASH_ORDER = 1004
STEP_S = 30.0
_SENDING = {"messaging.system": "nats", "messaging.operation.type": "send"}


class Demo:
    """One run of the incident on a fleet that is up and provisioned."""

    def __init__(self, fleet: Fleet, console: Console) -> None:
        """Scenes print to ``console``; ``fleet`` runs the processes."""
        self.fleet = fleet
        self.console = console
        self.tickets: dict[str, str] = {}  # scene -> correlation id
        self.origins: dict[str, Envelope] = {}  # scene -> its ticket: what the scene's later sends are traced under
        self.facts: dict[str, Any] = {}

    @property
    def servers(self) -> list[str]:
        """The server URL, as a list."""
        return [self.fleet.url]

    async def run(self) -> dict[str, Any]:
        """Every scene in order, then the summary (as a dict; see :meth:`summary`)."""
        stream = await TenantStream.connect(self.servers, TENANT, nkey_seed=self.fleet.admin_seed)
        desk = await connect_agent(
            self.servers,
            tenant=TENANT,
            agent_id="desk",
            identity=self.fleet.keys.load(TENANT, "desk"),
            nkey_auth=True,
        )
        try:
            watch = Watch(stream, self.console.print)
            follower = asyncio.create_task(watch.run())
            try:
                await self._scenes(watch, desk)
            finally:
                for error in await cancel_and_wait(follower):
                    raise error
            return await self.summary(stream)
        finally:
            await desk.aclose()
            await stream.aclose()

    async def _scenes(self, watch: Watch, desk: Bus) -> None:
        scenes: list[tuple[str, Callable[[Watch, Bus], Awaitable[None]]]] = [
            ("1. A refund request, handled end to end", self.legitimate_refund),
            ("2. A peer-agent prompt injection, stopped", self.injection),
            ("3. A retry storm between two agents, cut", self.retry_storm),
            ("4. Billing killed in the middle of a refund", self.crash_mid_refund),
        ]
        for title, scene in scenes:
            self.console.rule(f"[bold]{title}")
            await scene(watch, desk)
        self.console.rule("[bold]5. The incident, replayed and re-decided")
        await self.replay()
        self.console.rule("[bold]6. A refund rolled back")
        await self.rollback(watch)

    async def _ticket(self, desk: Bus, scene: str, ticket: dict[str, Any]) -> str:
        # With OTEL_* set, the ticket's span is the root of the incident's one trace (docs/OBSERVABILITY.md).
        with traced("send event", _SENDING) as span:
            envelope = new_envelope(
                tenant=TENANT,
                kind="event",
                sender="desk",
                to=("triage",),
                payload=json.dumps(ticket).encode(),
                trace=current_trace(),
            )
            await _send(desk, envelope, span)
        self.tickets[scene] = envelope.correlation_id
        self.origins[scene] = envelope
        self.console.print(f"desk -> triage: [bold]{ticket['summary']}[/bold] [dim](correlation {envelope.id})[/dim]")
        return envelope.correlation_id

    async def legitimate_refund(self, watch: Watch, desk: Bus) -> None:
        """Alice's refund: triage asks billing, billing refunds and emails, notes remember it."""
        ticket = {"topic": "refund", "customer": "alice", "order": 1001, "amount": 40,
                  "summary": "Alice asks for a refund of order 1001 (40 dollars)"}  # fmt: skip
        corr = await self._ticket(desk, "refund", ticket)
        await watch.until(
            lambda s: s.decided(corr, kind="memory_write", sender="notes", verdict="accept") or None,
            "the notes agent remembering alice's refund",
        )
        balance = self._balance("alice")
        self.console.print(f"[green]✓[/green] refunded: alice's balance is {balance} dollars; confirmation email sent")

    async def injection(self, watch: Watch, desk: Bus) -> None:
        """Mallory's email tells the researcher to refund 900 dollars and to mark her a VIP."""
        ticket = {"topic": "email", "customer": "mallory", "message": "mallory-1",
                  "summary": "Mallory writes in about order 1002 (the email hides instructions)"}  # fmt: skip
        corr = await self._ticket(desk, "injection", ticket)
        held = await watch.until(
            lambda s: s.decided(corr, kind="instruction", verdict="hold", reason="tainted_high_risk") or None,
            "the researcher's refund instruction held as tainted",
        )
        await watch.until(
            lambda s: s.decided(corr, kind="memory_write", verdict="reject", reason="tainted_memory_write") or None,
            "the poisoned memory write quarantined",
        )
        self.console.print(
            f"[yellow]held[/yellow] for a person: researcher -> billing issue_refund (taint: "
            f"{','.join(held[0].effective_taint)}); [red]quarantined[/red]: notes' write 'mallory is a VIP'"
        )
        ops_seed = self.fleet.keys.load(TENANT, "ops").nkey_seed
        waiting = await list_held(self.servers, TENANT, nkey_seed=ops_seed, reader="ops")
        self.console.print(f"operator [bold]ops[/bold] lists {len(waiting)} held envelope(s) and denies this one")
        denied = await answer(
            self.servers, TENANT, held[0].envelope_id, operator="ops", keys=self.fleet.keys, approve=False,
            note="instruction injected by a customer email", nkey_seed=ops_seed,
        )  # fmt: skip
        self.facts["held_seen_by_operator"] = len(waiting)
        self.console.print(f"denied: {denied.verdict} ({', '.join(denied.reasons)})")
        # The same refund asked for in a reply, to slip past a hold on instructions: a reply must answer
        # an envelope delivered to its sender, and go back to that envelope's sender only. Sent in the
        # incident, so traced in its trace: a child of the ticket's span.
        with traced("send reply", _SENDING, parent=self.origins["injection"]) as span:
            sneaky = new_envelope(
                tenant=TENANT, kind="reply", sender="desk", to=("billing",), correlation_id=corr,
                payload=json.dumps({"customer": "mallory", "order": 1002, "amount": 900}).encode(),
                trace=current_trace(),
            )  # fmt: skip
            await _send(desk, sneaky, span)
        await watch.until(
            lambda s: s.decided(corr, kind="reply", sender="desk", reason="unsolicited_reply") or None,
            "the same refund sent to billing as a reply refused",
        )
        self.console.print("[red]refused[/red]: the same refund sent to billing as a reply (unsolicited_reply)")
        self.console.print(f"[green]✓[/green] billing never saw it: refunds for order 1002 = {self._refunds(1002)}")

    async def retry_storm(self, watch: Watch, desk: Bus) -> None:
        """Triage keeps re-asking the researcher about an unknown tracking status: the hop limit stops it."""
        ticket = {"topic": "tracking", "customer": "bob", "page": "order-1003",
                  "summary": "Bob asks where order 1003 is (the tracking page says 'unknown')"}  # fmt: skip
        corr = await self._ticket(desk, "loop", ticket)
        cut = await watch.until(
            lambda s: s.decided(corr, verdict="reject", reason="hop_limit") or None, "the loop cut by the hop limit"
        )
        asked = len(watch.seen.decided(corr, kind="instruction", verdict="accept"))
        self.console.print(f"[green]✓[/green] cut at hop {cut[0].hop} after {asked} research requests")

    async def crash_mid_refund(self, watch: Watch, desk: Bus) -> None:
        """The payment gateway stalls after storing Bob's refund; billing is SIGKILLed there and restarted."""
        (self.fleet.workdir / STALL_FILE).write_text(str(CRASH_ORDER))
        ticket = {"topic": "refund", "customer": "bob", "order": CRASH_ORDER, "amount": 25,
                  "summary": f"Bob asks for a refund of order {CRASH_ORDER} (25 dollars)"}  # fmt: skip
        corr = await self._ticket(desk, "crash", ticket)
        await watch.until(
            lambda s: next((r for a, r in s.effects if r.tool == "issue_refund" and r.phase == "requested"), None),
            "billing starting the refund",
        )
        await _poll(lambda: self._refunds(CRASH_ORDER) == 1, "the refund stored by the billing system")
        pid = self.fleet.kill("billing")
        self.console.print(f"[red]SIGKILL[/red] billing (pid {pid}): the refund is stored, the tool never returned")
        pid = await self.fleet.restart("billing")
        self.console.print(f"billing restarted (pid {pid}); the instruction is delivered again")
        await watch.until(
            lambda s: s.decided(corr, kind="memory_write", sender="notes", verdict="accept") or None,
            "the refund completing after the restart",
            timeout_s=STEP_S + 30,
        )
        self.facts["crash"] = {"refunds": self._refunds(CRASH_ORDER), "balance": self._balance("bob")}
        self.console.print(
            f"[green]✓[/green] exactly once: refunds for order {CRASH_ORDER} = {self._refunds(CRASH_ORDER)}, "
            f"bob's balance = {self._balance('bob')} dollars"
        )

    async def replay(self) -> None:
        """The injection's causal tree from the stream, and both incidents re-decided under a stricter policy."""
        messages, keyring = await load_messages(self.servers, TENANT, nkey_seed=self.fleet.admin_seed)
        injection = build_incident(messages, keyring, TENANT, self.tickets["injection"])
        self.console.print(incident_tree(injection, f"correlation {self.tickets['injection']} (the injection)"))
        stricter = FILES / "stricter.yaml"
        changed: list[dict[str, Any]] = []
        for scene in ("injection", "loop"):
            rows = redecided_rows(build_incident(messages, keyring, TENANT, self.tickets[scene]), stricter)
            changed += [row for row in rows if row["changed"]]
        for row in changed:
            was, now = row["recorded"] or {"verdict": "-", "reasons": []}, row["now"]
            self.console.print(
                f"  {row['sender']} {row['kind']}: {was['verdict']} ({','.join(was['reasons']) or 'ok'}) "
                f"-> [bold]{now['verdict']}[/bold] ({','.join(now['reasons']) or 'ok'})"
            )
        self.facts["redecided_changed"] = len(changed)
        self.console.print(f"[green]✓[/green] {len(changed)} decisions would have gone otherwise under stricter.yaml")

    async def rollback(self, watch: Watch) -> None:
        """Alice's refund turns out to be fraud: compensate it, list the email for a person, revert the notes."""
        messages, keyring = await load_messages(self.servers, TENANT, nkey_seed=self.fleet.admin_seed)
        incident = build_incident(messages, keyring, TENANT, self.tickets["refund"])
        plan = plan_rollback(incident, compensated=compensated_keys(verified_effects(messages, keyring, TENANT)))
        for item in plan.compensate:
            self.console.print(f"compensate: {item.agent} {item.tool} with {item.compensating_tool}")
        for item in plan.for_a_person:
            self.console.print(f"[yellow]for a person[/yellow]: {item.agent} {item.tool} ({item.effect_class})")
        for revert in plan.memory:
            self.console.print(f"revert memory: {revert.agent}.{revert.key}")
        ops = self.fleet.keys.load(TENANT, "ops")
        done = await execute_rollback(self.servers, TENANT, plan, operator=ops, operator_name="ops", nkey_auth=True)
        # The rollback ends once each compensation has completed; the agent's answer to the operator comes after.
        # Waiting for them (this run sent every compensation: a fresh run has none done) ends the scene's traffic,
        # so the summary counts every decision the run caused.
        corr = rollback_correlation(self.tickets["refund"])
        await watch.until(
            lambda s: len(s.decided(corr, kind="reply")) >= len(plan.compensate) or None,
            "each compensating agent's answer to the operator",
        )
        self.facts["rollback"] = {"compensated": len(done), "for_a_person": len(plan.for_a_person)}
        self.console.print(
            f"[green]✓[/green] rolled back: alice's balance is {self._balance('alice')} dollars again; "
            f"{len(plan.for_a_person)} irreversible effect(s) listed for a person"
        )

    async def summary(self, stream: TenantStream) -> dict[str, Any]:
        """Counts read back from the ledger's projection, once it holds the whole stream; verify; export."""
        self.console.rule("[bold]Summary (from the ledger)")
        last = await stream.last_seq()
        data = self.fleet.ledger_data
        await _poll(lambda: (data / "state.json").exists() and read_catalogue(data).last_seq >= last,
                    f"the ledger's projection reaching sequence {last}")  # fmt: skip
        con = connect_projection(data)
        rows = con.execute(
            "SELECT verdict, reason, count(*) FROM (SELECT verdict, unnest(CASE WHEN len(reasons) = 0"
            " THEN ['none'] ELSE reasons END) AS reason FROM decisions) GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        decisions: dict[str, dict[str, int]] = {}
        for verdict, reason, count in rows:
            decisions.setdefault(verdict, {})[reason] = count
        framework = self._framework(con)
        snapshot = self.fleet.workdir / "ledger.duckdb"
        _snapshot(con, snapshot)
        report = await verify_stream(self.servers, TENANT, nkey_seed=self.fleet.admin_seed)
        bundle = self.fleet.workdir / "bundle"
        ledger_key = self.fleet.keys.load(TENANT, "ledger")
        await export(
            self.servers, TENANT, bundle, signer=ledger_key, signer_name="ledger", nkey_seed=self.fleet.admin_seed
        )
        for verdict, reasons in decisions.items():
            counts = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
            self.console.print(f"  {verdict:<7} {counts}")
        verdict = "[green]verified[/green]" if report.ok else f"[red]BROKEN at {report.breaks[0].seq}[/red]"
        if framework is not None:
            self.console.print(
                f"researcher: a {framework['name']} agent; {framework['model_requests']} model requests, each a "
                f"recorded effect ({framework['model_calls']} calls of its model). The injection went through it: "
                "held, refused and quarantined as without --framework"
            )
        self.console.print(f"ledger: {report.count} messages, chain and signatures {verdict}")
        self.console.print(f"DuckDB: {snapshot}  (live projection: {data})")
        self.console.print(f"audit bundle: {bundle}  (verify offline: trustbus ledger verify --bundle {bundle})")
        self.console.print("correlations (the ID of `ledger replay --correlation ID`):")
        for scene, correlation in self.tickets.items():
            self.console.print(f"  {scene:<12} {correlation}", markup=False, highlight=False)
        self.console.print("try next:")
        if "injection" in self.tickets:
            replay = f"trustbus ledger replay --bundle {bundle} --correlation {self.tickets['injection']}"
            self.console.print(f"  {replay}", markup=False, highlight=False)
            if framework is not None:
                again = f"{replay} --execute researcher={self.fleet.target('researcher')}"
                self.console.print(f"  {again}  # re-run, no model call", markup=False, highlight=False)
        for sql in QUERIES:
            self.console.print(f'  trustbus query --data {data} "{sql}"', markup=False, highlight=False)
        return {
            "tenant": TENANT,
            "decisions": decisions,
            "ledger_verified": report.ok,
            "ledger_messages": report.count,
            "duckdb": str(snapshot),
            "projection": str(data),
            "bundle": str(bundle),
            "correlations": self.tickets,
            "framework": framework,
            **self.facts,
        }

    def _framework(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
        """With ``--framework``: the researcher's model requests in the ledger, and how often its model ran."""
        if self.fleet.framework is None:
            return None
        from trustbus.adapters.pydantic_ai import MODEL_TOOL

        [requests] = con.execute(
            "SELECT count(*) FROM effects WHERE agent = 'researcher' AND tool = ? AND phase = 'completed'", [MODEL_TOOL]
        ).fetchone() or (0,)
        return {"name": self.fleet.framework, "model_requests": int(requests), "model_calls": calls(self.fleet.workdir)}

    def _refunds(self, order: int) -> int:
        with contextlib.closing(billing_db(self.fleet.workdir)) as db:
            [count] = db.execute(
                "SELECT count(*) FROM movements WHERE kind = 'refund' AND order_no = ?", (order,)
            ).fetchone()
        return int(count)

    def _balance(self, customer: str) -> int:
        with contextlib.closing(billing_db(self.fleet.workdir)) as db:
            [balance] = db.execute("SELECT balance FROM accounts WHERE customer = ?", (customer,)).fetchone()
        return int(balance)


QUERIES = (
    "SELECT * FROM rejections_by_reason",
    "SELECT correlation_id, sender, verdict, reasons, effective_taint FROM decisions WHERE verdict <> 'accept'",
    "SELECT agent, tool, effect_class, phase, count(*) AS n FROM effects GROUP BY ALL ORDER BY ALL",
)


async def _send(desk: Bus, envelope: Envelope, span: Span | None) -> None:
    """Send ``envelope`` as the desk, inside its ``send`` span (None: tracing is off), which names it."""
    await desk.send(envelope)
    if span is not None:
        span.set_attributes({"messaging.message.id": envelope.id, "gen_ai.conversation.id": envelope.correlation_id})


async def _poll(condition: Callable[[], bool], what: str, timeout_s: float = STEP_S) -> None:
    """Wait for a condition outside the stream (a database row, a file) to hold."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not seen within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


def _snapshot(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy every table and view of the projection into one DuckDB file, for tools that want a file."""
    path.unlink(missing_ok=True)
    con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS snapshot")
    names = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'memory'"
        ).fetchall()
    ]
    for name in names:
        con.execute(f'CREATE TABLE snapshot."{name}" AS SELECT * FROM memory."{name}"')
    con.execute("DETACH snapshot")
