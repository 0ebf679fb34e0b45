"""`trustbus tools` prints the inventory; `agent run --tools` refuses a registry that does not fit the agent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.processes import ROOT, TRUSTBUS, one_shot

EXAMPLE = str(ROOT / "examples" / "tools.yaml")


def trustbus(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return one_shot([*TRUSTBUS, *args], env=env)


def test_inventory_as_a_table_and_as_json() -> None:
    table = trustbus("tools", "--file", EXAMPLE)
    assert table.returncode == 0, table.stderr
    refund = next(line for line in table.stdout.splitlines() if "issue_refund" in line)
    assert ["issue_refund", "payments", "billing-team", "reversible", "charge_back", "yes"] == [
        cell.strip() for cell in refund.strip("│ ").split("│") if cell.strip()
    ]
    rows = [json.loads(line) for line in trustbus("tools", "--file", EXAMPLE, "--json").stdout.splitlines()]
    assert [row["name"] for row in rows] == [
        "fetch_page", "read_email", "llm_complete", "issue_refund", "charge_back", "send_email",
    ]  # fmt: skip
    assert rows[0] == {
        "name": "fetch_page",
        "system": "web",
        "owner": "research-team",
        "effect_class": "read",
        "compensating_tool": None,
        "result_taint": ["web"],
        "high_risk": False,
    }


def test_invalid_registry_is_refused_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "tools.yaml"
    bad.write_text("tools:\n  - {name: refund, system: pay, owner: me, effect_class: reversible}\n")
    result = trustbus("tools", "--file", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    assert f"{bad}: tools.0.compensating_tool:" in result.stderr


def test_agent_is_refused_before_connecting_when_its_tools_do_not_fit(tmp_path: Path) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text("tools:\n  - {name: fetch_page, system: web, owner: me, effect_class: read}\n")
    base = ("agent", "run", "examples.research:Researcher", "--id", "researcher", "-t", "nowhere")
    unreachable = ("--server", "nats://127.0.0.1:1")
    missing = trustbus(*base, *unreachable)
    assert missing.returncode == 1 and "--tools FILE" in missing.stderr
    unlisted = trustbus(*base, *unreachable, "--tools", str(registry))
    assert unlisted.returncode == 1 and "'llm_complete' is not in the registry" in unlisted.stderr
