"""bench/spans.py, which docs/OBSERVABILITY.md quotes, runs and reports every site at both samplings."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT


def test_the_span_bench_reports_each_site() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "spans.py"), "--n", "40", "--repeats", "1", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    for sampling in ("all", "ratio"):
        assert set(result[sampling]) == {"send", "guardrail", "handler"}
        assert result[f"{sampling}_us_per_message"] > 0
    assert {f["sampled"] for f in result["all"].values()} == {1.0}
