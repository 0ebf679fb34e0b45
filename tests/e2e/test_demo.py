"""`trustbus demo` end to end, its JSON summary checked against the ledger itself (the audit bundle), not the script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.otlp import OtlpReceiver, ReceivedSpan
from trustbus.adapters.pydantic_ai import MODEL_TOOL
from trustbus.bus import Decision, EffectRecord, decode_decisions, decode_effect, open_envelope, subjects
from trustbus.demo import model
from trustbus.demo.systems import DIR_ENV
from trustbus.ledger import load_bundle_messages, verify_bundle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def _demo(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "trustbus", "demo", "--json", "--dir", str(workdir), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), result.stderr


def _ledger(bundle: Path) -> tuple[list[Decision], list[tuple[str, EffectRecord]]]:
    """Every verified decision and effect record in the audit bundle."""
    messages, keyring, tenant = load_bundle_messages(bundle)
    decisions, effects = [], []
    effect_prefix = subjects.effect(tenant, "x")[:-1]
    for message in messages:
        opened = open_envelope(message.body, message.headers, keyring=keyring, received_ns=message.stored_ns)
        if subjects.is_decision(tenant, message.subject):
            decisions += decode_decisions(opened.envelope.payload)[0]
        elif message.subject.startswith(effect_prefix):
            effects.append((message.subject.split(".")[3], decode_effect(opened.envelope.payload)))
    return decisions, effects


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_demo_summary_matches_the_ledger_and_each_incident_is_one_trace(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    with OtlpReceiver() as receiver:  # every process of the run exports its spans here
        summary, log = _demo(workdir, env=receiver.env())
        _check_incident(workdir, summary, log)
        _check_traces(receiver, summary["correlations"])
    assert summary["framework"] is None
    # The notes keeper hears that its poisoned write was refused, and says so in its own log.
    refused = [json.loads(line) for line in (workdir / "logs" / "notes.log").read_text().splitlines()
               if "memory write refused" in line]  # fmt: skip
    assert [(r["key"], r["reason"]) for r in refused] == [("customer-mallory", "tainted_memory_write")]


def test_demo_with_a_pydantic_ai_researcher_is_stopped_the_same_and_replays_without_the_model(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    summary, log = _demo(workdir, "--framework", "pydantic-ai")
    decisions, effects = _check_incident(workdir, summary, log)

    # The injection (the researcher's first delivery) came through the pydantic-ai agent: its model asked for the
    # email, its tool read it, its model answered what the email said. Then the bus stopped it, as checked above.
    researched = [(r.tool, r.phase) for a, r in effects if a == "researcher"]
    assert researched[:6] == [
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
        ("read_email", "requested"), ("read_email", "completed"),
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
    ]  # fmt: skip
    [held] = [d for d in decisions if d.verdict == "hold" and d.sender == "researcher"]
    assert {"email", "llm"} <= set(held.effective_taint)
    requests = sum(a == "researcher" and r.tool == MODEL_TOOL and r.phase == "completed" for a, r in effects)
    assert summary["framework"] == {"name": "pydantic-ai", "model_requests": requests, "model_calls": requests}
    assert "researcher: a pydantic-ai agent" in log
    assert summary["seconds"] < 60  # the framework demo's promise (about 20 s on 2 cores)

    # Re-executed from the ledger: the same sends, every model answer from its record, the model never called.
    target = "researcher=trustbus.demo.pydantic_ai_agents:Researcher"
    replay = subprocess.run(
        [sys.executable, "-m", "trustbus", "ledger", "replay", "--bundle", summary["bundle"],
         "--correlation", summary["correlations"]["injection"], "--execute", target, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, DIR_ENV: str(workdir)},
    )  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    [executed] = json.loads(replay.stdout)["executed"]
    assert executed["agent"] == "researcher" and executed["divergences"] == []
    assert model.calls(workdir) == requests  # a call in the replay would have added a line


def _check_incident(
    workdir: Path, summary: dict[str, Any], log: str
) -> tuple[list[Decision], list[tuple[str, EffectRecord]]]:
    """What every run of the demo claims, checked against its audit bundle; the bundle's decisions and effects."""
    # The counts it printed are the ledger's: recount every decision in the audit bundle.
    bundle = Path(summary["bundle"])
    decisions, effects = _ledger(bundle)
    recounted: Counter[tuple[str, str]] = Counter()
    for d in decisions:
        for reason in d.reasons or ("none",):
            recounted[(d.verdict, reason)] += 1
    reported = Counter({(v, r): n for v, reasons in summary["decisions"].items() for r, n in reasons.items()})
    assert reported == recounted
    assert summary["ledger_verified"] is True and verify_bundle(bundle).ok
    # The human summary names each incident's correlation, and how to replay the injection.
    assert all(correlation in log for correlation in summary["correlations"].values())
    assert f"--correlation {summary['correlations']['injection']}" in log
    with contextlib.closing(duckdb.connect(summary["duckdb"], read_only=True)) as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone() == (len(decisions),)

    # What the run claims happened is in the ledger. The injected refund: held as tainted, denied by the operator.
    held = [d for d in decisions if d.verdict == "hold" and d.sender == "researcher"]
    assert len(held) == 1 and held[0].reasons == ("tainted_high_risk",) and "email" in held[0].effective_taint
    [denied] = [d for d in decisions if d.envelope_id == held[0].envelope_id and d.verdict == "reject"]
    assert denied.approver == "ops" and "denied" in denied.reasons
    assert not any(d.envelope_id == held[0].envelope_id and d.verdict == "accept" for d in decisions)
    # The same refund sent to billing as a reply (the kind-change bypass) was refused, and billing acted on nothing.
    [sneaky] = [d for d in decisions if d.kind == "reply" and d.sender == "desk"]
    assert sneaky.verdict == "reject" and sneaky.reasons == ("unsolicited_reply",) and sneaky.deliver_to == ()
    # The poisoned memory write was refused; the legitimate ones went through.
    writes = [d for d in decisions if d.kind == "memory_write" and d.sender == "notes"]
    assert [d.reasons for d in writes if d.verdict == "reject"] == [("tainted_memory_write",)]
    assert sum(d.verdict == "accept" for d in writes) == 2
    # The retry storm was cut by the hop limit.
    assert any(d.verdict == "reject" and "hop_limit" in d.reasons for d in decisions)

    # Billing was killed mid-refund: the refund completed once, and the billing database holds one.
    refunds = {r.idempotency_key: r for a, r in effects if r.tool == "issue_refund" and r.phase == "completed"}
    crash = [r for r in refunds.values() if json.loads(r.args)["order"] == 1004]
    assert len(crash) == 1
    assert sum(r.tool == "issue_refund" and r.phase == "requested" and r.idempotency_key == crash[0].idempotency_key
               for _, r in effects) >= 2  # fmt: skip
    with contextlib.closing(sqlite3.connect(workdir / "billing.sqlite")) as db:
        assert db.execute("SELECT count(*) FROM movements WHERE kind = 'refund' AND order_no = 1004").fetchone() == (1,)
        balances = dict(db.execute("SELECT customer, balance FROM accounts").fetchall())
    # The rollback compensated alice's refund (charge_back completed, naming it) and left the email to a person.
    [alice] = [r for r in refunds.values() if json.loads(r.args)["order"] == 1001]
    backs = [r for _, r in effects if r.tool == "charge_back" and r.phase == "completed"]
    assert [json.loads(r.args)["compensates"] for r in backs] == [alice.idempotency_key]
    assert balances == {"alice": 0, "bob": 25, "mallory": 0}
    assert summary["rollback"] == {"compensated": 2, "for_a_person": 1}
    assert summary["crash"] == {"refunds": 1, "balance": 25}
    assert summary["held_seen_by_operator"] == 1  # listed by the operator connected with its own key
    assert "SIGKILL billing" in log and "denied" in log

    started = [p["pid"] for p in summary["started"]]
    assert len(started) == 8  # server, coordinator, ledger, four agents, billing again
    assert not [pid for pid in started if _alive(pid)]  # every process it started has stopped
    return decisions, effects


def test_demo_keep_leaves_everything_running_and_says_how_to_stop(tmp_path: Path) -> None:
    workdir = tmp_path / "kept"
    summary, log = _demo(workdir, "--keep")
    try:
        pids = summary["pids"]
        assert set(pids) == {"server", "coordinator", "ledger", "triage", "researcher", "billing", "notes"}
        assert all(_alive(pid) for pid in pids.values())
        assert f"kill {' '.join(str(p) for p in pids.values())}" in log
    finally:
        for pid in summary["pids"].values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in summary["pids"].values()) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a condition: the processes are not our children, so nothing to wait on
    assert not any(_alive(pid) for pid in summary["pids"].values())


def test_demo_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "trustbus", "demo", "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "not empty" in result.stderr


def _check_traces(receiver: OtlpReceiver, correlations: dict[str, str]) -> None:
    """The injection, and the refund with its later rollback, each one trace with the right parent links."""
    spans = asyncio.run(receiver.wait(lambda s: _incident(s, correlations["refund"], "rollback") and s))
    injection = _incident(spans, correlations["injection"], "send reply")
    refund = _incident(spans, correlations["refund"], "rollback")
    assert injection is not None and refund is not None

    # The injection: the ticket, triage, the researcher and its tool, the held refund, the operator's denial,
    # the poisoned memory write, and the same refund sent again as a reply.
    one = _Trace(injection)
    ticket = one.root
    assert ticket.name == "send event" and ticket.service == "trustbus demo"
    triage = one.only("invoke_agent triage", parent=ticket)
    researcher = one.first("invoke_agent researcher", parent=triage)
    one.first("execute_tool read_email", parent=researcher)
    held = one.decided("tainted_high_risk", parent=researcher)
    assert held.attributes["trustbus.action"] == "hold"
    denial = one.only("approval deny", parent=researcher)
    assert denial.service == "trustbus demo"
    one.decided("denied", parent=denial)
    notes = one.first("invoke_agent notes", parent=researcher)
    one.decided("tainted_memory_write", parent=notes)
    reply = one.only("send reply", parent=ticket)
    one.decided("unsolicited_reply", parent=reply)

    # The refund: billing's tool calls, the notes stored, and the rollback, an operator's later act, a child
    # of the incident's first span (from the ticket's signed trace context in the ledger).
    one = _Trace(refund)
    ticket = one.root
    billing = one.first("invoke_agent billing", parent=one.only("invoke_agent triage", parent=ticket))
    one.only("execute_tool issue_refund", parent=billing)
    stored = one.first("store_memory coordinator", parent=one.first("invoke_agent notes"))
    assert stored.service == "trustbus coordinator" and stored.attributes["trustbus.memory.outcome"] == "applied"
    rollback = one.only("rollback", parent=ticket)
    assert rollback.attributes["gen_ai.conversation.id"] == correlations["refund"]
    one.decided("none", parent=rollback, kind="message")  # the compensation instruction, accepted
    compensating = one.only("invoke_agent billing", parent=rollback)
    one.only("execute_tool charge_back", parent=compensating)
    one.decided("memory_write", parent=rollback, kind="memory_store")  # the notes put back by the operator
    assert one.only("store_memory coordinator", parent=rollback).attributes["trustbus.memory.outcome"] == "applied"


def _incident(spans: list[ReceivedSpan], correlation: str, last: str) -> list[ReceivedSpan] | None:
    """The spans of the trace whose root sent ``correlation``'s origin, once a span named ``last`` is among them."""
    roots = [s for s in spans if s.parent == "" and s.attributes.get("messaging.message.id") == correlation]
    trace = [s for s in spans if roots and s.trace_id == roots[0].trace_id]
    return trace if any(s.name == last for s in trace) else None


class _Trace:
    """One trace's spans, looked up by name and parent."""

    def __init__(self, spans: list[ReceivedSpan]) -> None:
        [self.root] = [s for s in spans if s.parent == ""]
        self.spans = spans

    def _named(self, name: str, parent: ReceivedSpan | None) -> list[ReceivedSpan]:
        found = [s for s in self.spans if s.name == name and (parent is None or s.parent == parent.span_id)]
        assert found, f"no {name!r} under {parent and parent.name!r}: {sorted(s.name for s in self.spans)}"
        return found

    def only(self, name: str, *, parent: ReceivedSpan | None = None) -> ReceivedSpan:
        [span] = self._named(name, parent)
        return span

    def first(self, name: str, *, parent: ReceivedSpan | None = None) -> ReceivedSpan:
        return self._named(name, parent)[0]

    def decided(self, code: str, *, parent: ReceivedSpan, kind: str | None = None) -> ReceivedSpan:
        found = [
            s for s in self._named("apply_guardrail coordinator", parent)
            if s.attributes["gen_ai.security.decision.code"] == code
            and (kind is None or s.attributes["gen_ai.security.target.type"] == kind)
        ]  # fmt: skip
        assert found, f"no decision {code!r} under {parent.name!r}"
        return found[0]
