"""A recorded incident, checked in as an audit bundle, replays and re-decides the same way every time.

Regenerate with `TB_WRITE_FIXTURES=1 python -m pytest tests/e2e/test_replay.py -k bundle`.
"""

from __future__ import annotations

import json
from pathlib import Path

from trustbus.agents import load_policy
from trustbus.agents._redecide import redecide
from trustbus.ledger import build_incident, load_bundle_messages, step_dict, verify_bundle

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "incident"


def _incident() -> object:
    messages, keyring, tenant = load_bundle_messages(FIXTURE / "bundle")
    return build_incident(messages, keyring, tenant, (FIXTURE / "correlation.txt").read_text().strip())


def test_the_recorded_incident_still_verifies() -> None:
    report = verify_bundle(FIXTURE / "bundle")
    assert report.ok, report.breaks
    assert report.verified == report.count


def test_the_recorded_incident_replays_to_the_recorded_tree() -> None:
    incident = _incident()
    expected = json.loads((FIXTURE / "tree.json").read_text())
    assert [step_dict(root) for root in incident.roots] == expected  # type: ignore[attr-defined]


def test_a_stricter_policy_holds_the_instruction_the_recorded_policy_let_through() -> None:
    incident = _incident()
    sent = [(s.seq, s.stored_ns, s.envelope, s.decisions[0] if s.decisions else None) for s in incident.steps]  # type: ignore[attr-defined]
    results = redecide(load_policy(FIXTURE / "strict.yaml"), sent, incident.effects)  # type: ignore[attr-defined]
    [instruction] = [r for r in results if r.envelope.kind == "instruction"]
    assert instruction.recorded is not None and instruction.recorded.verdict == "accept"
    assert instruction.changed and instruction.now.verdict == "hold"  # type: ignore[union-attr]
    assert [r.changed for r in results if r.envelope.kind != "instruction"] == [False]
