"""Bad input to any command gets one clear message and a non-zero exit, never a Python traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.processes import TRUSTBUS, ready, run, supervised
from trustbus.bus import EmbeddedServer

SECRET = "s3cret-pass"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A server that takes one user and password."""
    conf = tmp_path_factory.mktemp("guarded") / "guarded.conf"
    conf.write_text('authorization { user: ops, password: "right" }\n')
    with EmbeddedServer(port=0, config=conf) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "TRUSTBUS_KEYS": str(tmp_path / "keys"), "NATS_URL": "nats://127.0.0.1:1"}
    env.pop("TRUSTBUS_LOG", None)
    return env


def refused(*args: str, env: dict[str, str], says: str, code: int = 1) -> str:
    """Run `trustbus <args>`: it must exit ``code`` with ``says`` in one error line and no traceback."""
    result = run(*args, env=env, check=False)
    stderr = " ".join(result.stderr.split())
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert says in stderr, result.stderr
    return result.stderr


def test_a_directory_that_is_not_a_bundle(env: dict[str, str], tmp_path: Path) -> None:
    for command in (("replay",), ("rollback", "--dry-run"), ("verify",)):
        args = ["ledger", *command, "--bundle", str(tmp_path)]
        if command[0] != "verify":
            args += ["--correlation", "c1"]
        refused(*args, env=env, says="is not a bundle")


def test_an_unknown_log_level(env: dict[str, str]) -> None:
    refused(
        "--log-level", "verbose", "keys", "list", "--tenant", "t", env=env, says="unknown log level 'verbose'", code=2
    )


def test_an_agent_module_with_a_syntax_error(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "broken_agent.py").write_text("def handle(:\n")
    env = {**env, "PYTHONPATH": str(tmp_path)}

    refused("agent", "run", "broken_agent:agent", "--id", "a", "--tenant", "t", env=env, says="SyntaxError")


def test_a_policy_file_that_is_missing(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "stricter.yaml"

    refused("coordinator", "run", "--tenant", "t", "--policy", str(missing), env=env, says="cannot read policy")


def test_a_proof_file_that_is_missing(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "proof.json"

    said = refused("ledger", "check-proof", str(missing), env=env, says=f"cannot read {missing}: No such file")
    assert "Errno" not in said


def test_a_payload_that_is_not_json_is_refused_before_anything_is_sent(env: dict[str, str]) -> None:
    refused(
        "send", "--tenant", "t", "--as", "a", "--to", "b", "--payload", '{"serve": 1', env=env, says="not valid JSON"
    )


@pytest.mark.parametrize("url", ["nat://127.0.0.1:4222", "http://127.0.0.1:4222", f"nat://ops:{SECRET}@host:4222"])
def test_a_url_that_is_not_a_nats_one_is_named_without_its_password(env: dict[str, str], url: str) -> None:
    stderr = refused("keys", "list", "--tenant", "t", "--server", url, env=env, says="is not a NATS server URL")

    assert SECRET not in stderr


def test_a_server_that_is_down_is_one_line_not_a_log_of_retries(env: dict[str, str]) -> None:
    stderr = refused("keys", "list", "--tenant", "t", env=env, says="cannot connect to nats://127.0.0.1:1")

    assert len(stderr.strip().splitlines()) == 1, stderr


def test_refused_credentials_are_said_once_without_the_password(env: dict[str, str], guarded: EmbeddedServer) -> None:
    url = f"nats://ops:{SECRET}@127.0.0.1:{guarded.port}"

    stderr = refused("keys", "list", "--tenant", "t", "--server", url, env=env, says="refused these credentials")

    assert SECRET not in stderr and "ops:***@" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_the_version() -> None:
    result = run("--version", env=dict(os.environ))

    assert result.stdout.startswith("trustbus ") and result.stdout.split()[1][0].isdigit()


async def test_a_ledger_service_whose_stream_is_deleted_under_it_says_so_in_a_line(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url, "TRUSTBUS_KEYS": str(tmp_path / "keys")}
    run("init", "--tenant", "vanish", env=env)
    run("keys", "new", "--tenant", "vanish", "--owner", "ledger", "--role", "ledger", env=env)
    with supervised(tmp_path, env) as supervisor:
        argv = [*TRUSTBUS, "ledger", "run", "-t", "vanish", "--data", str(tmp_path / "p")]
        ledger = supervisor.start("ledger", argv, log=tmp_path / "l.err")
        ready(ledger)
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().delete_stream("TB_vanish")  # as after a restart without --data: the store replaced
        await nc.close()

        code = await ledger.exited(60)

    log = (tmp_path / "l.err").read_text()
    assert code == 1 and "Traceback" not in log, log
    assert "error: stream TB_vanish does not exist" in log and "`trustbus init`" in log, log
