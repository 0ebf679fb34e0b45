"""A short run of bench/soak.py as a correctness check (its figures are not held to targets here).

Real coordinator, agent and ledger processes on their own server: every acked envelope reaches the agent
once, across a SIGKILL of the coordinator under load and its restart, and the memory figures are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_short_soak_delivers_every_acked_envelope_once_across_a_coordinator_restart(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--n",
            "2000",
            "--window",
            "200",
            "--sample-s",
            "0.5",
            "--capacity",
            "50",
            "--rate",
            "2000",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.splitlines()[-1])
    assert figures["acked"] == 2000 + figures["restart_batch"] and figures["publish_failures"] == 0
    assert figures["lost"] == 0 and figures["duplicated"] == 0  # past the cache: 220 correlations through 50
    assert figures["capacity"] == 50 and figures["correlations"] == 220
    assert figures["received"] == figures["acked"]
    # The coordinator was killed and started again, and a forward followed its start.
    assert figures["restart_s"] > 0 and figures["coordinator_ready_s"] > 0
    assert figures["coordinator_rss_after_restart_mb"] > 0
    for process in ("coordinator", "agent", "ledger", "nats-server"):
        marks = figures["rss_mb"][process]
        assert all(marks[mark] > 0 for mark in ("10%", "50%", "100%")), (process, marks)
        assert isinstance(figures["rss_slope"][process], float)
    assert all(len(tenths) == 10 and min(tenths) > 0 for tenths in figures["rss_mb_by_decile"].values())
    assert all(len(tenths) == 10 and min(tenths) > 0 for tenths in figures["rss_anon_mb_by_decile"].values())
    assert figures["rate_limit"] == 2000 and len(figures["decisions_per_s_by_decile"]) == 10
    assert min(figures["decisions_per_s_by_decile"]) > 0
    assert figures["coordinator_rss_mb"] == figures["rss_mb"]["coordinator"]["100%"]
    assert figures["rss_slope_bytes_per_decision"] == figures["rss_slope"]["coordinator"]
