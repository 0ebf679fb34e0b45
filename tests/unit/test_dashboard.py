"""deploy/grafana-dashboard.json: a Grafana dashboard's shape, over metrics the processes serve, in valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_alert_rules import METRIC, ROOT, exported_metrics, promtool  # noqa: F401 (a fixture)

DASHBOARD: dict[str, Any] = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]
QUERIES = [target["expr"] for panel in PANELS for target in panel.get("targets", [])]
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
WATCHED = {  # what a person running a fleet looks at, each a metric the dashboard must show
    "trustbus_decisions_total",
    "trustbus_mediation_latency_seconds",
    "trustbus_consumer_pending_messages",
    "trustbus_consumer_ack_pending_messages",
    "trustbus_holds_waiting",
    "trustbus_hold_oldest_age_seconds",
    "trustbus_quarantines_total",
    "trustbus_effects_total",
    "trustbus_ledger_lag_messages",
    "trustbus_ledger_checkpoint_age_seconds",
    "trustbus_partition_leases_held",
}


def test_the_dashboard_has_grafanas_shape() -> None:
    assert {"uid", "title", "schemaVersion", "panels", "templating", "time"} <= set(DASHBOARD)
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    (variable,) = DASHBOARD["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))
    for panel in PANELS:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")) and grid["x"] + grid["w"] <= 24, panel
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat") and panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and [t["refId"] for t in panel["targets"]] == [
            chr(ord("A") + i) for i in range(len(panel["targets"]))
        ]


def test_every_metric_it_shows_is_served_and_every_one_watched_is_shown() -> None:
    used = {HISTOGRAM_SERIES.sub("", name) for query in QUERIES for name in METRIC.findall(query)}
    exported = exported_metrics()
    assert used <= exported, used - exported
    assert WATCHED <= used, WATCHED - used


def test_promtool_parses_every_query(promtool: str, tmp_path: Path) -> None:  # noqa: F811
    rules = [
        {"record": f"trustbus:panel_query_{i}", "expr": query.replace("$__rate_interval", "5m")}
        for i, query in enumerate(QUERIES)
    ]
    file = tmp_path / "queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
