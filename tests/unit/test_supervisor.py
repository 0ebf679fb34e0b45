"""The process supervisor: ready lines from a pipe or a file, failures named, SIGTERM then SIGKILL, restart."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from trustbus._supervisor import ProcessFailed, Supervisor

SERVE = """
import json, os, signal, sys, time
if sys.argv[1:] == ["stubborn"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"progress": "starting"}), flush=True)
print("not json", flush=True)
print("to stderr", file=sys.stderr, flush=True)
print(json.dumps({"ready": "x", "pid": os.getpid(), "flag": os.environ.get("FLAG")}), flush=True)
if sys.argv[1:] == ["count"]:
    for n in range(3):
        print(json.dumps({"n": n}), flush=True)
    sys.exit(0)
time.sleep(60)
"""
FAIL = "import sys; print('broken', file=sys.stderr); sys.exit(3)"


def _supervisor(tmp_path: Path, progress: list[dict[str, Any]] | None = None) -> Supervisor:
    return Supervisor(
        env={"FLAG": "set"},
        cwd=tmp_path,
        logs=tmp_path / "logs",
        on_progress=None if progress is None else progress.append,
    )


def test_the_ready_line_is_the_first_json_object_on_a_pipe_and_progress_goes_to_the_callback(tmp_path: Path) -> None:
    progress: list[dict[str, Any]] = []
    supervisor = _supervisor(tmp_path, progress)
    process = supervisor.start("serve", [sys.executable, "-c", SERVE])
    line = process.wait_ready(30)
    assert line == {"ready": "x", "pid": process.pid, "flag": "set"}
    assert progress == [{"progress": "starting"}]
    assert process.stop(10) == -signal.SIGTERM
    assert process.tail() == ["to stderr"]


async def test_a_ready_line_written_to_a_file_is_awaited_and_a_restart_keeps_the_environment(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path)
    first = supervisor.start("serve", [sys.executable, "-c", SERVE], env={"FLAG": "mine"}, out=tmp_path / "serve.out")
    assert (await first.ready(30))["flag"] == "mine"
    assert first.kill() == first.pid and first.returncode == -signal.SIGKILL
    again = supervisor.restart(first)
    assert (await again.ready(30))["flag"] == "mine" and again.pid != first.pid
    assert (await again.ready(30))["pid"] == again.pid  # the file was started afresh
    supervisor.stop_all(10)
    assert again.returncode == -signal.SIGTERM


def test_a_process_that_exits_before_it_is_ready_is_named_with_its_exit_code(tmp_path: Path) -> None:
    process = _supervisor(tmp_path).start("fails", [sys.executable, "-c", FAIL])
    with pytest.raises(ProcessFailed, match=r"fails exited \(exit code 3\)"):
        process.wait_ready(30)
    assert process.stop() == 3
    assert process.tail() == ["broken"]


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    process = _supervisor(tmp_path).start("stubborn", [sys.executable, "-c", SERVE, "stubborn"])
    process.wait_ready(30)
    assert process.stop(0.5) == -signal.SIGKILL


def test_the_lines_after_the_ready_line_are_read_in_order_until_stdout_closes(tmp_path: Path) -> None:
    process = _supervisor(tmp_path).start("count", [sys.executable, "-c", SERVE, "count"])
    process.wait_ready(30)
    assert [process.line(30) for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    with pytest.raises(ProcessFailed, match=r"count exited \(exit code 0\)"):
        process.line(30)
    assert process.wait(10) == 0
