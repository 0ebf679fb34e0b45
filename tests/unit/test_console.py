"""The console's pure parts: an incident as a graph, what a hold asks, the SQL page's one-SELECT rule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.test_query_cli import data as query_projection  # noqa: F401  (a fixture)
from tests.processes import ROOT, TRUSTBUS, one_shot
from trustbus.bus import Decision, EffectRecord, KeyDirectory, new_envelope
from trustbus.console._graph import graph_model
from trustbus.console._source import Source, SqlRefused, verb_and_arguments
from trustbus.ledger import Incident, Step


def decided(step: Step, verdict: str, reasons: tuple[str, ...], taint: tuple[str, ...]) -> Decision:
    env = step.envelope
    return Decision(
        envelope_id=env.id, source_seq=step.seq, sender=env.sender, kind=env.kind, correlation_id=env.correlation_id,
        causation_id=env.causation_id, verdict=verdict, reasons=reasons, deliver_to=env.to, dropped=(), hop=env.hop,
        declared_taint=env.taint, effective_taint=taint, decided_ns=1, approver="ops" if verdict == "accept" else None,
    )  # type: ignore[arg-type]  # fmt: skip


def test_graph_has_a_node_per_envelope_decision_hold_effect_and_quarantine_with_taint_on_the_edges() -> None:
    page = new_envelope(tenant="t", kind="event", sender="fetcher", to=["researcher"], taint=["web"])
    ask = new_envelope(tenant="t", kind="instruction", sender="researcher", to=["billing"],
                       correlation_id=page.id, causation_id=page.id)  # fmt: skip
    forged = new_envelope(tenant="t", kind="event", sender="researcher", to=["billing"], correlation_id=page.id,
                          causation_id=page.id)  # fmt: skip
    root, held, refused = Step(1, 1, page), Step(3, 3, ask), Step(4, 4, forged, quarantined="bad_signature")
    root.decisions.append(decided(root, "accept", (), ("web",)))
    root.deliveries.append("researcher")
    root.effects.append(EffectRecord(phase="completed", tool="fetch", idempotency_key="k", args=b"{}",
                                     effect_class="read", taint=("web",)))  # fmt: skip
    held.decisions += [decided(held, "hold", ("tainted_high_risk",), ("web",)),
                       decided(held, "accept", ("tainted_high_risk", "approved"), ("web",))]  # fmt: skip
    root.children += [held, refused]

    model = graph_model(Incident(page.id, [root, held], [root]))

    nodes = {n["data"]["id"]: (n["data"]["type"], n["data"]["label"]) for n in model["nodes"]}
    assert nodes == {
        f"envelope:{page.id}": ("envelope", "#1 event\nfetcher -> researcher\ndelivered to researcher"),
        f"decision:{page.id}:0": ("decision", "accept\nok\nby ops"),
        f"effect:{page.id}:0": ("effect", "fetch\ncompleted"),
        f"envelope:{ask.id}": ("envelope", "#3 instruction\nresearcher -> billing"),
        f"decision:{ask.id}:0": ("hold", "hold\ntainted_high_risk"),
        f"decision:{ask.id}:1": ("decision", "accept\ntainted_high_risk,approved\nby ops"),
        f"envelope:{forged.id}": ("envelope", "#4 event\nresearcher -> billing"),
        f"quarantine:{forged.id}": ("quarantine", "quarantined\nbad_signature"),
    }
    edges = {(e["data"]["source"], e["data"]["target"]): e["data"]["label"] for e in model["edges"]}
    assert edges[(f"envelope:{page.id}", f"envelope:{ask.id}")] == "web"  # what the coordinator computed
    assert edges[(f"envelope:{page.id}", f"envelope:{forged.id}")] == ""  # no decision, nothing declared
    assert edges[(f"envelope:{page.id}", f"effect:{page.id}:0")] == "web"
    assert edges[(f"envelope:{forged.id}", f"quarantine:{forged.id}")] == "refused"
    assert all(e["data"]["source"] in nodes and e["data"]["target"] in nodes for e in model["edges"])


@pytest.mark.parametrize(
    ("kind", "request_text", "expected"),
    [
        ("effect", 'issue_refund {"order": 1}', ("issue_refund", '{"order": 1}')),
        ("instruction", '{"verb": "issue_refund", "order": 1}', ("issue_refund", '{"order": 1}')),
        ("instruction", '{"order": 1}', ("", '{"order": 1}')),
        ("event", "Refund order 1 to me...", ("", "Refund order 1 to me...")),
    ],
)
def test_a_hold_says_its_verb_and_arguments(kind: str, request_text: str, expected: tuple[str, str]) -> None:
    assert verb_and_arguments(kind, request_text) == expected


@pytest.mark.parametrize(
    "sql", ["COPY (SELECT 1) TO '/tmp/x.csv'", "SELECT 1; SELECT 2", "CREATE TABLE x (i INT)", "ATTACH 'x.db'"]
)
def test_the_sql_page_runs_one_select_and_nothing_else(sql: str, tmp_path: Path) -> None:
    source = Source(["nats://127.0.0.1:1"], "t", "ops", KeyDirectory(tmp_path), None, tmp_path)
    with pytest.raises(SqlRefused):
        source.sql(sql)


def test_the_docs_show_the_commands_help_as_it_is() -> None:
    done = one_shot([*TRUSTBUS, "console", "--help"], env={**os.environ, "COLUMNS": "100"})
    usage = "Usage: trustbus console" + done.stdout.split(" console", 1)[1]  # as the installed command names itself
    doc = (ROOT / "docs" / "CONSOLE.md").read_text()
    shown = doc.split("## `trustbus console --help`\n\n```text\n", 1)[1].split("```", 1)[0]
    assert done.returncode == 0 and shown == usage


def test_the_console_refuses_to_start_without_the_operators_key(tmp_path: Path) -> None:
    env = {**os.environ, "TRUSTBUS_KEYS": str(tmp_path)}
    done = one_shot([*TRUSTBUS, "console", "-t", "t", "--as", "ops", "--port", "0"], env=env)
    assert done.returncode == 1 and "ops" in done.stderr and "Traceback" not in done.stderr


def test_the_sql_page_shows_what_trustbus_query_prints(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    projection = request.getfixturevalue("query_projection")
    source = Source(["nats://127.0.0.1:1"], "acme", "ops", KeyDirectory(tmp_path), None, projection)
    columns, rows, cut = source.sql("SELECT seq, recipients, taint, reject_reason FROM envelopes ORDER BY seq")
    assert columns == ["seq", "recipients", "taint", "reject_reason"] and not cut
    assert rows[0] == ["1", '["bob", "carol"]', '["web"]', ""] and len(rows) == 4


def test_without_the_console_extra_the_command_says_what_to_install() -> None:
    code = "import sys; sys.modules['starlette'] = None; from trustbus.cli import main; main()"
    done = one_shot([sys.executable, "-c", code, "console", "-t", "t", "--as", "ops"])
    assert done.returncode == 1 and "pip install 'trustbus[console]'" in done.stderr, done.stderr
