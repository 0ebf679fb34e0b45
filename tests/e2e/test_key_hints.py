"""Every key error names the command that fixes it, and following it works: no dead end between roles and keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.processes import TRUSTBUS, ready, run, supervised
from trustbus.bus import EmbeddedServer, Identity


def trustbus(*args: str, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = run(*args, env=env, check=False)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def suggested(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The command an error message says to run (between backquotes), as arguments."""
    text = " ".join((result.stdout + result.stderr).split())
    command = text.split("`")[1]
    assert command.startswith("trustbus "), text
    return command.split()[1:]


@pytest.fixture
def env(nats_server: EmbeddedServer, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "NATS_URL": nats_server.url, "TRUSTBUS_KEYS": str(tmp_path / "keys")}


def test_ledger_run_without_a_key_then_with_an_agent_key_each_says_what_to_run_and_that_works(
    env: dict[str, str], tmp_path: Path
) -> None:
    trustbus("init", "--tenant", "hints", env=env)
    ledger_run = ["ledger", "run", "--tenant", "hints", "--data", str(tmp_path / "projection")]

    missing = trustbus(*ledger_run, env=env, ok=False)
    assert suggested(missing) == ["keys", "new", "--tenant", "hints", "--owner", "ledger", "--role", "ledger"]
    trustbus("keys", "new", "--tenant", "hints", "--owner", "ledger", env=env)  # as the old hint said: an agent key
    wrong = trustbus(*ledger_run, env=env, ok=False)
    assert "has role 'agent', not 'ledger'" in wrong.stderr
    assert suggested(wrong) == ["keys", "rotate", "--tenant", "hints", "--owner", "ledger", "--role", "ledger"]
    trustbus(*suggested(wrong), env=env)

    with supervised(tmp_path, env) as supervisor:
        assert ready(supervisor.start("ledger", [*TRUSTBUS, *ledger_run], log=tmp_path / "ledger.err")).get("ready")


def test_keys_new_for_an_owner_with_a_key_points_to_rotate(env: dict[str, str]) -> None:
    trustbus("init", "--tenant", "hints2", env=env)
    trustbus("keys", "new", "--tenant", "hints2", "--owner", "coord", "--role", "coordinator", env=env)

    again = trustbus(
        "keys", "new", "--tenant", "hints2", "--owner", "coord", "--role", "coordinator", env=env, ok=False
    )

    assert suggested(again) == ["keys", "rotate", "--tenant", "hints2", "--owner", "coord"]
    rotated = trustbus(*suggested(again), env=env)
    assert "coord (coordinator): new key" in " ".join(rotated.stdout.split())


def test_keys_new_in_a_tenant_never_provisioned_points_to_init(env: dict[str, str]) -> None:
    fresh = trustbus("keys", "new", "--tenant", "neverinit", "--owner", "bob", env=env, ok=False)

    assert suggested(fresh) == ["init", "--tenant", "neverinit"]
    trustbus(*suggested(fresh), env=env)
    trustbus("keys", "new", "--tenant", "neverinit", "--owner", "bob", env=env)


def test_seeds_kept_across_a_replaced_store_are_registered_again_by_rotate_with_a_role(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys")
    with EmbeddedServer(port=0) as first:
        env = {**os.environ, "NATS_URL": first.url, "TRUSTBUS_KEYS": keys}
        trustbus("init", "--tenant", "kept", env=env)
        trustbus("keys", "new", "--tenant", "kept", "--owner", "bob", env=env)
    with EmbeddedServer(port=0) as second:  # a new, empty store: the seed files are all that is left
        env = {**os.environ, "NATS_URL": second.url, "TRUSTBUS_KEYS": keys}
        trustbus("init", "--tenant", "kept", env=env)
        exists = trustbus("keys", "new", "--tenant", "kept", "--owner", "bob", env=env, ok=False)
        assert suggested(exists)[:2] == ["keys", "rotate"]
        unknown = trustbus(*suggested(exists), env=env, ok=False)
        assert "not in tenant 'kept''s keyring" in " ".join(unknown.stderr.split())
        assert suggested(unknown) == ["keys", "rotate", "--tenant", "kept", "--owner", "bob", "--role", "ROLE"]

        trustbus("keys", "rotate", "--tenant", "kept", "--owner", "bob", "--role", "agent", env=env)

        listed = [
            json.loads(line)
            for line in trustbus("keys", "list", "--tenant", "kept", "--json", env=env).stdout.splitlines()
        ]
        [bob] = [grant for grant in listed if grant["owner"] == "bob"]
        assert bob["role"] == "agent"
        table = trustbus("keys", "list", "--tenant", "kept", env=env).stdout  # piped: every id whole, on one line
        assert all(grant["key_id"] in table for grant in listed)


def test_doctor_names_what_is_wrong_and_following_its_fixes_makes_it_well(env: dict[str, str], tmp_path: Path) -> None:
    never = trustbus("doctor", "--tenant", "sick", "--json", env=env, ok=False)
    [unprovisioned] = [json.loads(line) for line in never.stdout.splitlines()]
    assert unprovisioned["status"] == "fail" and unprovisioned["fix"] == "trustbus init --tenant sick"
    trustbus(*unprovisioned["fix"].split()[1:], env=env)
    trustbus("keys", "new", "--tenant", "sick", "--owner", "bob", env=env)
    stray = Identity.generate()  # a seed whose key the keyring never heard of (a store replaced since)
    stray.save(Path(env["TRUSTBUS_KEYS"]) / "sick" / "carol.seed")

    found = {
        f["check"]: f
        for f in map(json.loads, trustbus("doctor", "-t", "sick", "--json", env=env, ok=False).stdout.splitlines())
    }

    assert found["seed admin"]["status"] == found["seed bob"]["status"] == "ok"
    assert found["seed carol"]["status"] == "fail" and "not in tenant 'sick''s keyring" in found["seed carol"]["what"]
    assert found["coordinators"]["status"] == "warn" and "coordinator run" in found["coordinators"]["fix"]
    trustbus(*found["seed carol"]["fix"].replace("ROLE", "agent").split()[1:], env=env)
    table = trustbus("doctor", "-t", "sick", env=env).stdout  # warnings only now: exit 0
    assert "seed carol" in table and "fail" not in table
