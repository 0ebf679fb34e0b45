"""`trustbus dev`: started, used, stopped and started again (detached) in one directory, then `dev down`.

One directory serves the module: a first run in the foreground (an agent key is made and a message
sent, then SIGTERM), and a second, detached run over the same store and keys, stopped by `dev down`.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.processes import TRUSTBUS, ready, run, supervised

PORTS = ("--port", "0", "--console-port", "0")


@dataclass(frozen=True)
class FirstRun:
    """What the first run left: its directory, ready line and exit code, the key made and the message sent in it."""

    root: Path
    line: dict[str, Any]
    exit_code: int
    alice_key: str
    sent_id: str


def cli_env(line: dict[str, Any]) -> dict[str, str]:
    """The environment the ready line tells a person to export."""
    env = {**os.environ, "NATS_URL": line["url"], "TRUSTBUS_KEYS": line["keys"]}
    for name in ("TRUSTBUS_NKEY", "TRUSTBUS_TENANT", "TRUSTBUS_LOG"):
        env.pop(name, None)
    return env


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    root = tmp_path_factory.mktemp("dev") / "env"
    with supervised(root.parent / "logs") as supervisor:
        process = supervisor.start("dev", [*TRUSTBUS, "dev", "--dir", str(root), *PORTS, "--json"])
        line = ready(process, 120)
        env = cli_env(line)
        made = json.loads(run("keys", "new", "--tenant", "dev", "--owner", "alice", "--json", env=env).stdout)
        sent = run("send", "--tenant", "dev", "--as", "alice", "--to", "bob", "--json", env=env).stdout
        exit_code = process.stop()
    return FirstRun(root, line, exit_code, made["key_id"], json.loads(sent)["id"])


@pytest.fixture(scope="module")
def second_run(first_run: FirstRun) -> Iterator[dict[str, Any]]:
    """The same directory started again, detached; `dev down` at the end if a test has not stopped it."""
    started = run("dev", "--dir", str(first_run.root), *PORTS, "--detach", "--json", env=cli_env(first_run.line))
    try:
        yield json.loads(started.stdout)
    finally:
        run("dev", "down", "--dir", str(first_run.root), env=os.environ)


def test_a_stop_stops_every_process_and_says_it_no_longer_runs(first_run: FirstRun) -> None:
    assert first_run.exit_code == 0
    assert first_run.line["keys_made"] == ["coordinator", "ledger", "ops"]
    assert not any(alive(pid) for pid in first_run.line["pids"].values())
    assert not (first_run.root / "running.json").exists()
    result = run("dev", "down", "--dir", str(first_run.root), env=os.environ)
    assert "no trustbus dev runs in" in result.stdout


def test_started_again_it_reuses_the_store_and_every_key(first_run: FirstRun, second_run: dict[str, Any]) -> None:
    assert second_run["keys_made"] == [] and second_run["detached"] is True
    env = cli_env(second_run)
    keyring = [json.loads(row) for row in run("keys", "list", "--tenant", "dev", "--json", env=env).stdout.splitlines()]
    assert {"owner": "alice", "key_id": first_run.alice_key, "revoked_at": None}.items() <= next(
        grant for grant in keyring if grant["owner"] == "alice"
    ).items()
    assert len(keyring) == 5  # admin, coordinator, ledger, ops, alice: nothing made twice

    run("send", "--tenant", "dev", "--as", "alice", "--to", "bob", env=env)  # the first run's key signs in the second
    first = json.loads(run("tail", "--tenant", "dev", "--limit", "1", "--json", env=env).stdout)
    assert first["envelope"]["id"] == first_run.sent_id and first["verified"] is True

    with urllib.request.build_opener(urllib.request.HTTPCookieProcessor()).open(second_run["console"]) as page:
        assert page.status == 200 and b"<html" in page.read().lower()


def test_a_second_start_on_a_running_directory_is_refused(first_run: FirstRun, second_run: dict[str, Any]) -> None:
    result = run("dev", "--dir", str(first_run.root), *PORTS, env=os.environ, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert f"trustbus dev already runs in {first_run.root} (pid {second_run['pid']})" in said
    assert f"trustbus dev down --dir {first_run.root}" in said


def test_a_port_another_server_holds_is_said_with_its_fix(second_run: dict[str, Any], tmp_path: Path) -> None:
    port = second_run["url"].rsplit(":", 1)[1]
    args = ("dev", "--dir", str(tmp_path / "other"), "--port", port, "--console-port", "0")
    result = run(*args, env=os.environ, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert f"port {port} on 127.0.0.1 is in use" in said and "--port 0" in said


def test_dev_down_stops_a_detached_environment(first_run: FirstRun, second_run: dict[str, Any]) -> None:
    result = run("dev", "down", "--dir", str(first_run.root), env=os.environ)
    assert f"stopped trustbus dev in {first_run.root} (pid {second_run['pid']})" in result.stdout
    assert not any(alive(pid) for pid in [second_run["pid"], *second_run["pids"].values()])
    assert "no trustbus dev runs in" in run("dev", "down", "--dir", str(first_run.root), env=os.environ).stdout
