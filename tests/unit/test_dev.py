"""`trustbus dev`'s directory: one environment per directory, told by its lock; what is removed and what is not."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustbus._dev import DevDir, DevError, DevSettings, down, purge, run_environment
from trustbus._dev_cli import _said_ready


@pytest.fixture
def where(tmp_path: Path) -> DevDir:
    root = tmp_path / "env"
    root.mkdir()
    return DevDir(root)


@pytest.fixture
def held(where: DevDir) -> Iterator[DevDir]:
    """``where`` as a running environment leaves it: its lock held, its ready line written."""
    (where.running).write_text(json.dumps({"pid": 4242, "url": "nats://127.0.0.1:4999"}))
    with where.lock.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield where


def test_a_directory_runs_nothing_until_its_lock_is_held(where: DevDir) -> None:
    assert where.status() is None
    where.lock.touch()
    where.running.write_text("{}")  # left by an environment that was killed: the lock says it is gone
    assert where.status() is None
    assert down(where) is None


def test_a_second_environment_in_a_running_directory_is_refused_before_it_starts_anything(held: DevDir) -> None:
    settings = DevSettings(where=held, tenant="dev", port=0, console_port=0)
    with pytest.raises(DevError) as refused:
        run_environment(settings, lambda line: pytest.fail(f"started: {line}"))
    assert str(refused.value) == (
        f"trustbus dev already runs in {held.root} (pid 4242) at nats://127.0.0.1:4999: use it, "
        f"or stop it with `trustbus dev down --dir {held.root}`"
    )
    assert not held.logs.exists()


def test_purge_refuses_a_running_environment(held: DevDir) -> None:
    with pytest.raises(DevError, match="stop it first"):
        purge(held)
    assert held.root.is_dir()


def test_purge_refuses_a_directory_that_is_not_an_environments(where: DevDir) -> None:
    (where.root / "precious.txt").write_text("mine")
    with pytest.raises(DevError, match="not a trustbus dev directory"):
        purge(where)
    assert (where.root / "precious.txt").read_text() == "mine"


def test_purge_removes_a_stopped_environment(where: DevDir) -> None:
    where.lock.touch()
    (where.root / "keys").mkdir()
    purge(where)
    assert not where.root.exists()


def test_a_directory_that_cannot_be_made_is_said_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DevError, match=r"cannot make the directory .*a-file/env: Not a directory"):
        DevDir(tmp_path / "a-file" / "env").make()


READY = {
    "ready": "dev", "dir": "/w/env", "tenant": "dev", "url": "nats://127.0.0.1:4222", "keys": "/w/env/keys",
    "projection": "/w/env/projection", "policy": "/w/env/policy.yaml", "console": None, "operator": "ops",
    "keys_made": [], "pid": 7, "pids": {},
}  # fmt: skip


def test_what_to_do_next_names_the_exports_the_commands_and_how_to_stop(capsys: pytest.CaptureFixture[str]) -> None:
    _said_ready({**READY, "console": "http://127.0.0.1:8470/?token=t0k"}, json_out=False, detached=False)
    said = capsys.readouterr().out
    assert (
        "export NATS_URL=nats://127.0.0.1:4222 TRUSTBUS_KEYS=/w/env/keys TRUSTBUS_LEDGER_DATA=/w/env/projection" in said
    )
    assert "http://127.0.0.1:8470/?token=t0k  (as ops)" in said
    for command in ("send --tenant dev --as alice", "tail --tenant dev", "approvals list --tenant dev"):
        assert f"trustbus {command}" in said
    assert "Stop it with Ctrl-C (or `trustbus dev down --dir /w/env`)." in said


def test_without_the_console_extra_it_says_how_to_get_it(capsys: pytest.CaptureFixture[str]) -> None:
    _said_ready(READY, json_out=False, detached=True)
    said = capsys.readouterr().out
    assert "console       not started: it needs the console extra, pip install 'trustbus[console]'" in said
    assert "Stop it with `trustbus dev down --dir /w/env`." in said


def test_with_json_it_prints_the_ready_line(capsys: pytest.CaptureFixture[str]) -> None:
    _said_ready(READY, json_out=True, detached=True)
    assert json.loads(capsys.readouterr().out) == {**READY, "detached": True}
