"""deploy/alerts.yml: well formed, about metrics that exist, one alert per situation; and, where promtool is
installed (Debian's ``prometheus`` package), checked and unit-tested by Prometheus's own rule engine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "alerts.yml"
DOCUMENT: dict[str, Any] = yaml.safe_load(RULES.read_text())
ALERTS: list[dict[str, Any]] = [rule for group in DOCUMENT["groups"] for rule in group["rules"]]
SITUATIONS = {
    "TrustbusHoldWaitingTooLong",
    "TrustbusConsumerBehind",
    "TrustbusLedgerStoppedCheckpointing",
    "TrustbusRefusedAttackBurst",
    "TrustbusSenderSuspended",
    "TrustbusVerifyFailure",
}
METRIC = re.compile(r"\btrustbus_[a-z_]+\b")
DURATION = re.compile(r"^\d+[smhd]$")


def exported_metrics() -> set[str]:
    """Every metric name the library's processes serve at /metrics (as written where each is made)."""
    sources = [ROOT / "bus" / "_metrics.py", ROOT / "agents" / "_metrics.py", ROOT / "ledger" / "_metrics.py"]
    return {name for source in sources for name in re.findall(r'"(trustbus_[a-z_]+)"', source.read_text())}


def test_the_rules_file_has_the_prometheus_shape() -> None:
    assert set(DOCUMENT) == {"groups"}
    for group in DOCUMENT["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names))
    for rule in ALERTS:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Trustbus[A-Z][A-Za-z]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(str(rule.get("for", "0s"))), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert set(rule["annotations"]) == {"summary", "description"}


def test_every_situation_that_needs_a_person_has_an_alert_on_metrics_that_exist() -> None:
    assert SITUATIONS <= {rule["alert"] for rule in ALERTS}
    exported = exported_metrics()
    for rule in ALERTS:
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


PROMTOOL = shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool, from Debian's prometheus package (.ci/run installs it); its absence fails, never skips."""
    if PROMTOOL is None:
        pytest.fail("promtool is not installed: apt-get install -y --no-install-recommends prometheus")
    return PROMTOOL


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _fires(alert: str, series: list[tuple[str, str]], labels: dict[str, str], at: str = "30m") -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}],
    }


def _quiet(alert: str, series: list[tuple[str, str]], at: str = "30m") -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
    }


def test_each_alert_fires_on_its_situation_and_not_without_it(tmp_path: Path, promtool: str) -> None:
    """Prometheus's rule engine (``promtool test rules``) over synthetic series."""
    quarantined = 'trustbus_quarantines_total{instance="c",reason="bad_signature"}'
    tests = [
        _fires(
            "TrustbusHoldWaitingTooLong",
            [('trustbus_hold_oldest_age_seconds{instance="c"}', "3500+60x40")],
            {"severity": "warning"},
        ),
        _quiet("TrustbusHoldWaitingTooLong", [('trustbus_hold_oldest_age_seconds{instance="c"}', "0x40")]),
        _fires(
            "TrustbusConsumerBehind",
            [('trustbus_consumer_pending_messages{instance="c",consumer="inbox"}', "5000x40")],
            {"severity": "warning", "instance": "c", "consumer": "inbox"},
        ),
        _fires(
            "TrustbusLedgerStoppedCheckpointing",
            [
                ('trustbus_ledger_checkpoint_age_seconds{instance="l"}', "0+60x40"),
                ('trustbus_ledger_uncheckpointed_messages{instance="l"}', "50x40"),
            ],
            {"severity": "critical", "instance": "l"},
        ),
        _quiet(  # nothing new to checkpoint: an old checkpoint is no problem
            "TrustbusLedgerStoppedCheckpointing",
            [
                ('trustbus_ledger_checkpoint_age_seconds{instance="l"}', "0+60x40"),
                ('trustbus_ledger_uncheckpointed_messages{instance="l"}', "0x40"),
            ],
        ),
        _fires(
            "TrustbusRefusedAttackBurst",
            [('trustbus_quarantines_total{instance="c",reason="wrong_outbox"}', "0+600x40")],
            {"severity": "warning", "reason": "wrong_outbox"},
        ),
        _fires(
            "TrustbusSenderSuspended",
            [('trustbus_decisions_total{instance="c",verdict="hold",reason="rejection_threshold"}', "0x25 1x15")],
            {"severity": "critical", "instance": "c"},
        ),
        _quiet(
            "TrustbusSenderSuspended",
            [('trustbus_decisions_total{instance="c",verdict="accept",reason="none"}', "0+10x40")],
        ),
        _fires(
            "TrustbusVerifyFailure", [(quarantined, "0x25 1x15")], {"severity": "critical", "reason": "bad_signature"}
        ),
        _quiet("TrustbusVerifyFailure", [(quarantined, "0x40")]),
    ]
    # The same rules without their annotations (promtool compares those exactly; `check rules` parses them).
    bare = tmp_path / "alerts.yml"
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in DOCUMENT["groups"]
    ]
    bare.write_text(yaml.safe_dump({"groups": groups}))
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(bare)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
