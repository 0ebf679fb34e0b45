"""A short run of bench/mediated.py as a correctness check (its figures are not held to targets here).

Both topologies and AutoGen's gRPC runtime (``--peers``) deliver every message, and the report carries
the ratio against the batched, pipelined raw relay, AutoGen's figure from the same run, and the tail as
the worst round's p99 with p99.9 and max, and (``--stages``) where that round's time went, stage by stage.
AutoGen runs in bench/peers.py's venv under the cache
directory: the first run on a machine makes it from PyPI (about a minute), later runs reuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MEDIATED = Path(__file__).resolve().parents[2] / "bench" / "mediated.py"


def mediated_bench(tmp_path: Path, argv: list[str]) -> dict[str, Any]:
    """Run bench/mediated.py with ``argv`` and ``--json``; it must exit 0. Its figures (its last line)."""
    run = subprocess.run(
        [sys.executable, str(MEDIATED), *argv, "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return figures


def test_short_mediated_bench_reports_the_ratios_and_the_worst_round_tail(tmp_path: Path) -> None:
    argv = ["--n", "300", "--rounds", "2", "--rate", "200", "--seconds", "1", "--warmup", "0.25", "--warmup-n", "100"]
    figures = mediated_bench(tmp_path, [*argv, "--peers", "--stages"])
    assert figures["raw_msgs_per_s"] > 0 and figures["mediated_msgs_per_s"] > 0
    assert len(figures["round_ratios"]) == 2 and figures["ratio"] > 0
    assert figures["autogen_msgs_per_s"] > 0 and len(figures["round_vs_autogen"]) == 2
    assert figures["vs_autogen"] > 0 and set(figures["autogen_cpu_us_per_msg"]) == {"a", "hub", "b"}
    # The tail is the worst round's, each round's beside it.
    assert figures["p99_ms"] == max(figures["round_p99_ms"])
    assert figures["p999_ms"] == max(figures["round_p999_ms"]) and figures["max_ms"] == max(figures["round_max_ms"])
    assert figures["p50_ms"] <= figures["median_p99_ms"] <= figures["p99_ms"] <= figures["p999_ms"] <= figures["max_ms"]
    assert figures["raw_p99_ms"] <= figures["raw_p999_ms"] <= figures["raw_max_ms"]
    assert figures["load_avg_1m"][0] >= 0
    # Stored after it was sent, its group started after it was stored, forwarded after that, handled after that.
    stages = figures["stages_ms"]
    assert list(stages) == ["send_to_stored", "stored_to_group", "group_to_forward", "forward_to_handler"]
    assert all(0 <= s["p50"] <= s["p90"] <= s["p99"] for s in stages.values()), stages
    assert all(len(p99s) == 2 for p99s in figures["round_stage_p99_ms"].values())


def test_on_uvloop_runs_the_module_on_uvloops_event_loop(tmp_path: Path) -> None:
    (tmp_path / "which_loop.py").write_text(
        "import asyncio, sys\n"
        "async def main():\n"
        "    print(type(asyncio.get_running_loop()).__module__, *sys.argv[1:])\n"
        "asyncio.run(main())\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{MEDIATED.parents[1]}"}
    run = subprocess.run(
        [sys.executable, "-m", "bench._on_uvloop", "which_loop", "--x", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["uvloop", "--x", "1"]


def test_short_mediated_bench_on_uvloop_delivers_everything(tmp_path: Path) -> None:
    argv = ["--n", "300", "--rounds", "1", "--rate", "200", "--seconds", "1", "--warmup", "0.25", "--warmup-n", "100"]
    figures = mediated_bench(tmp_path, [*argv, "--uvloop"])
    assert figures["uvloop"] is True
    assert figures["raw_msgs_per_s"] > 0 and figures["mediated_msgs_per_s"] > 0 and figures["ratio"] > 0
