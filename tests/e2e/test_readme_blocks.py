"""The README followed line by line: each section's bash blocks run as written, in one shell session per section.

Each sequence runs in bash with ``set -e`` in a scratch directory that stands for a fresh clone: it
links the repository files the blocks name (``examples/``, the demo's policies, ``nats.conf``) and
receives what they write (``bundle/``, ``proof.json``, ``ledger-data/``). Seeds go to a scratch
``TRUSTBUS_KEYS``. Background ``&`` jobs are stopped at the end, newest first, and so is what a
``demo --keep`` left running (its printed ``kill`` line is run, as its reader would). Four
substitutions stand for what a reader does, and nothing else is changed:

- ``4222`` becomes a free port (another server may hold 4222 on this machine);
- ``ID`` becomes the envelope id that ``trustbus send`` printed last, or the injection's correlation
  id that the demo's summary lists;
- ``KEY`` becomes the tenant admin key that ``trustbus init`` printed;
- ``export NATS_URL=...`` becomes the ``export`` line that ``trustbus up --cluster`` printed (waited for).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("examples", "trustbus/demo/files", "nats.conf")
PORT = "4222"
PLACEHOLDERS = {
    # sed over the output so far: the id `trustbus send` printed, or the demo summary's injection correlation
    "ID": r"s/^(sent ([^ ]+) to .*|  injection +([^ ]+))$/\2\3/p",
    "KEY": r"s/^admin key ([^ ]+)$/\1/p",  # the admin key `trustbus init` printed
}
PASTED = "export NATS_URL=..."
PASTE = (  # the line `trustbus up --cluster` prints, once it has printed it
    "until grep -q '^export NATS_URL=' \"$TRANSCRIPT\"; do sleep 0.1; done; "
    "eval \"$(grep '^export NATS_URL=' \"$TRANSCRIPT\" | tail -n 1 | cut -d '#' -f 1)\""
)
STOP_ALL = (  # a shell function run at exit: the background jobs, newest first, then what a demo --keep left
    "stop_all() {\n"
    '    for job in $(jobs -p | tac); do kill "$job" 2>/dev/null || true; wait "$job" 2>/dev/null || true; done\n'
    '    eval "$(sed -nE \'s/^  (kill [0-9 ]+)$/\\1 || true/p\' "$TRANSCRIPT")"\n'
    "}"
)
LIMIT_S = 200

pytestmark = pytest.mark.timeout(LIMIT_S + 40)  # past the script's limit: its processes are stopped here


def bash_blocks(section: str) -> list[str]:
    """The bash blocks of the README section headed ``## <section>``, in order."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def script(blocks: list[str], port: int) -> str:
    """The blocks as one bash script, with the reader's substitutions; its output goes to $TRANSCRIPT."""
    lines = ["set -e", 'exec >>"$TRANSCRIPT" 2>&1', STOP_ALL, "trap stop_all EXIT"]
    for line in "\n".join(blocks).splitlines():
        line = line.replace(PORT, str(port))
        if line.startswith(PASTED):
            line = PASTE
        for name, sed in PLACEHOLDERS.items():
            if re.search(rf"\b{name}\b", line):
                lines.append(f"{name}=$(sed -nE '{sed}' \"$TRANSCRIPT\" | tail -n 1)")
                line = re.sub(rf"\b{name}\b", f"${name}", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def follow(section: str, workdir: Path) -> str:
    """Run the section's blocks in ``workdir``; the transcript (the failure, with it, if the script fails)."""
    for name in LINKED:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).symlink_to(ROOT / name)
    transcript = workdir / "transcript.txt"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TRUSTBUS_", "NATS_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TRUSTBUS_KEYS": str(workdir / "keys"),
        "TRANSCRIPT": str(transcript),
    }
    shell = subprocess.Popen(
        ["bash", "-c", script(bash_blocks(section), free_port())], cwd=workdir, env=env, start_new_session=True
    )
    code: int | str
    try:
        code = shell.wait(LIMIT_S)
    except subprocess.TimeoutExpired:
        code = f"none: still running after {LIMIT_S} s"
    finally:
        try:
            os.killpg(shell.pid, signal.SIGTERM)  # whatever the script left (it stops its jobs itself)
        except ProcessLookupError:
            pass
        shell.wait()
    said = transcript.read_text()
    assert code == 0, f"the README's {section!r} blocks failed (exit code {code}):\n{said}"
    return said


@pytest.mark.slow
def test_build_your_own_runs_as_written(tmp_path: Path) -> None:
    said = follow("Build your own", tmp_path)
    assert "#1 out.alice.0 event alice -> bob" in said  # tail shows what was sent
    assert "reject (hop_limit): reply" in said  # why the rally stopped
    assert "tainted_high_risk" in said and "released to billing" in said  # the hold listed, then approved
    assert "proved sequence 1 (tb.demo.out.alice.0)" in said  # the proof checks with the admin key
    assert "hold tainted_high_risk" in said and "reject verb_not_allowed" in said  # replayed and re-decided
    assert re.search(r"coordinator\s*│\s*hop_limit", said)  # the query over the projection
    assert (tmp_path / "bundle").is_dir()


def test_the_development_config_runs_as_written(tmp_path: Path) -> None:
    said = follow("What is here", tmp_path)
    assert re.search(r"^admin key U\w+$", said, re.M)


@pytest.mark.slow
def test_the_demo_and_its_then_commands_run_as_written(tmp_path: Path) -> None:
    said = follow("The demo", tmp_path)
    assert said.count("correlations (the ID of `ledger replay --correlation ID`):") == 3  # three demos ran
    assert "verified sequences 1-" in said  # the bundle verifies offline
    assert "reject tainted_high_risk,denied by ops" in said  # the injection's tree, by the summary's correlation
    assert re.search(r"coordinator\s*│\s*hop_limit", said)  # the query over the projection
    assert re.search(r"hold tainted_high_risk\s*│\s*reject not_allowed\s*│\s*yes", said)  # re-decided
    assert "still running (--keep)" in said
    assert (tmp_path / "run" / "bundle").is_dir() and (tmp_path / "run3").is_dir()


@pytest.mark.slow
def test_beyond_one_machine_runs_as_written(tmp_path: Path) -> None:
    said = follow("Beyond one machine", tmp_path)
    assert "JetStream cluster" in said and "coord-a (coordinator) key" in said
