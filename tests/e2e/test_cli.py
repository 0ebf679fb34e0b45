"""The trustbus command, run as real processes: up, init, keys, send, tail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ROOT, TRUSTBUS, one_shot, ready, run, supervised
from trustbus.bus import Bus, Identity, new_envelope


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`trustbus up --port 0` as a child process; yields its URL."""
    data = tmp_path_factory.mktemp("js")
    with supervised(tmp_path_factory.mktemp("logs")) as processes:
        up = processes.start("up", [*TRUSTBUS, "up", "--port", "0", "--data", str(data), "--json"])
        yield str(ready(up)["url"])
        assert up.stop(20) == 0


@pytest.fixture
def env(server: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "NATS_URL": server, "TRUSTBUS_KEYS": str(tmp_path / "keys")}


def test_init_send_tail_round_trip(env: dict[str, str]) -> None:
    first = json.loads(run("init", "--tenant", "clione", "--json", env=env).stdout)
    second = json.loads(run("init", "--tenant", "clione", "--json", env=env).stdout)
    assert first["created"] == [
        "TB_clione",
        "TBADV_clione",
        "tb_keys_clione",
        "tb_mem_clione",
        "tb_coord_clione",
        "tb_state_clione",
    ]
    assert first["partitions"] == 1
    assert second["created"] == [] and second["updated"] == []
    assert second["admin_key"] == first["admin_key"]

    run("keys", "new", "--tenant", "clione", "--owner", "alice", env=env)
    sent = json.loads(
        run(
            "send", "-t", "clione", "--as", "alice", "--to", "bob", "--payload", '{"refund": 12}', "--json", env=env
        ).stdout
    )
    lines = run("tail", "-t", "clione", "--json", "--idle-timeout", "3", env=env).stdout.splitlines()
    [item] = [json.loads(line) for line in lines]
    assert item["verified"] is True
    assert item["seq"] == sent["seq"]
    assert item["envelope"]["id"] == sent["id"]
    assert item["envelope"]["payload"] == {"refund": 12}
    assert item["envelope"]["sender"] == "alice"


def test_rotation_keeps_old_envelopes_valid_and_new_ones_signed_by_the_new_key(env: dict[str, str]) -> None:
    run("init", "--tenant", "rota", env=env)
    run("keys", "new", "--tenant", "rota", "--owner", "alice", env=env)
    before = json.loads(run("send", "-t", "rota", "--as", "alice", "--to", "bob", "--json", env=env).stdout)
    rotated = json.loads(run("keys", "rotate", "-t", "rota", "--owner", "alice", "--json", env=env).stdout)
    after = json.loads(run("send", "-t", "rota", "--as", "alice", "--to", "bob", "--json", env=env).stdout)

    items = [
        json.loads(x)
        for x in run("tail", "-t", "rota", "--json", "--idle-timeout", "3", env=env).stdout.split("\n")
        if x
    ]
    by_id = {i["envelope"]["id"]: i for i in items}
    assert by_id[before["id"]]["verified"] and by_id[before["id"]]["key_id"] == rotated["old"]["key_id"]
    assert by_id[after["id"]]["verified"] and by_id[after["id"]]["key_id"] == rotated["new"]["key_id"]
    listed = [json.loads(x) for x in run("keys", "list", "-t", "rota", "--json", env=env).stdout.splitlines()]
    assert {k["key_id"]: k["revoked_at"] is not None for k in listed if k["owner"] == "alice"} == {
        rotated["old"]["key_id"]: True,
        rotated["new"]["key_id"]: False,
    }


# Reads tail's lines slowly: a pause after the first few hundred (tail's prints block on the full pipe), another later.
SLOW_READER = """
import sys, time
for n, line in enumerate(sys.stdin, start=1):
    sys.stdout.write(line)
    if n in (500, 6_000):
        time.sleep(1.0)
"""


def test_tail_of_a_large_backlog_into_a_slow_pipe_prints_every_envelope_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    backlog = 10_000  # well over the 4,096 messages a push subscription held before it dropped the rest
    run("init", "--tenant", "backlog", env=env)
    run("keys", "new", "--tenant", "backlog", "--owner", "alice", env=env)
    alice = Identity.load(Path(env["TRUSTBUS_KEYS"]) / "backlog" / "alice.seed")
    sent = asyncio.run(_publish_backlog(env["NATS_URL"], "backlog", alice, backlog))

    with (tmp_path / "tail.err").open("w+") as stderr:
        tail = subprocess.Popen(
            [*TRUSTBUS, "tail", "-t", "backlog", "--json", "--idle-timeout", "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert tail.stdout is not None
        reader = subprocess.run(
            [sys.executable, "-c", SLOW_READER], stdin=tail.stdout, capture_output=True, text=True, timeout=90
        )
        tail.stdout.close()
        assert tail.wait(timeout=30) == 0
        stderr.seek(0)
        warnings = stderr.read()

    items = [json.loads(line) for line in reader.stdout.splitlines()]
    seqs = [item["seq"] for item in items]
    assert seqs == sorted(set(seqs))
    assert [item["envelope"]["id"] for item in items if item["verified"]] == sent
    assert "slow consumer" not in warnings.lower()


async def _publish_backlog(url: str, tenant: str, sender: Identity, count: int) -> list[str]:
    """Publish ``count`` small envelopes to ``sender``'s outbox, as alice; their ids in order."""
    async with await Bus.connect(url, tenant=tenant, name="alice", identity=sender) as bus:
        ids = []
        for i in range(count):
            envelope = new_envelope(tenant=tenant, kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
            await bus.publish_pipelined(bus.outbox(envelope), bus.seal(envelope))
            ids.append(envelope.id)
        await bus.flush(timeout_s=60)
    return ids


def test_envelope_signed_with_a_revoked_key_is_shown_rejected(env: dict[str, str], tmp_path: Path) -> None:
    run("init", "--tenant", "revo", env=env)
    grant = json.loads(run("keys", "new", "--tenant", "revo", "--owner", "alice", "--json", env=env).stdout)
    run("keys", "revoke", "--tenant", "revo", grant["key_id"], env=env)
    run("send", "-t", "revo", "--as", "alice", "--to", "bob", env=env)
    [item] = [
        json.loads(x) for x in run("tail", "-t", "revo", "--json", "--idle-timeout", "3", env=env).stdout.splitlines()
    ]
    assert item["verified"] is False and item["reason"] == "revoked_key"


def test_clear_errors_for_missing_key_and_unprovisioned_tenant(env: dict[str, str]) -> None:
    missing = run("send", "-t", "nowhere", "--as", "ghost", "--to", "bob", env=env, check=False)
    assert missing.returncode == 1 and "trustbus keys new" in missing.stderr
    run("init", "--tenant", "keyed", env=env)
    shutil.copy(Path(env["TRUSTBUS_KEYS"]) / "keyed" / "admin.seed", Path(env["TRUSTBUS_KEYS"]) / "keyed" / "x.seed")
    unprovisioned = run("keys", "list", "-t", "never", env=env, check=False)
    assert unprovisioned.returncode == 1 and "trustbus init --tenant never" in unprovisioned.stderr


def test_up_on_a_taken_port_names_the_fix(env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = run("up", "--port", str(holder.getsockname()[1]), env=env, check=False)
    assert taken.returncode == 1 and "--port 0" in taken.stderr


def test_help_lists_every_command() -> None:
    result = one_shot([*TRUSTBUS, "--help"], timeout_s=30)
    for command in ("up", "init", "keys", "send", "tail"):
        assert command in result.stdout


def test_development_config_needs_credentials_and_accepts_the_admin(tmp_path: Path) -> None:
    with supervised(tmp_path / "logs") as processes:
        up = processes.start("up", [*TRUSTBUS, "up", "--port", "0", "--config", str(ROOT / "nats.conf"), "--json"])
        url = str(ready(up)["url"])
        base = {**os.environ, "TRUSTBUS_KEYS": str(tmp_path / "keys")}
        anonymous = run("init", "--tenant", "dev", env={**base, "NATS_URL": url}, check=False)
        assert anonymous.returncode == 1 and "cannot connect" in anonymous.stderr
        admin_url = url.replace("nats://", "nats://admin:dev-admin@")
        created = json.loads(run("init", "--tenant", "dev", "--json", env={**base, "NATS_URL": admin_url}).stdout)
        assert created["created"] == [
            "TB_dev", "TBADV_dev", "tb_keys_dev", "tb_mem_dev", "tb_coord_dev", "tb_state_dev",
        ]  # fmt: skip
        assert up.stop(20) == 0


def test_server_does_not_outlive_a_killed_up(tmp_path: Path) -> None:
    with supervised(tmp_path / "logs") as processes:
        up = processes.start("up", [*TRUSTBUS, "up", "--port", "0", "--json"])
        server_pid = int(str(ready(up)["pid"]))
        up.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{server_pid}/stat") as stat:
                if stat.read().split()[2] == "Z":  # exited; its dead parent cannot reap it
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(server_pid, signal.SIGKILL)
    raise AssertionError("nats-server kept running after trustbus up was SIGKILLed")


def test_ledger_export_and_offline_verify(env: dict[str, str], tmp_path: Path) -> None:
    run("init", "--tenant", "audit", env=env)
    run("keys", "new", "--tenant", "audit", "--owner", "alice", env=env)
    run("keys", "new", "--tenant", "audit", "--owner", "ledger", "--role", "ledger", env=env)
    for i in range(3):
        run("send", "-t", "audit", "--as", "alice", "--to", "bob", "--payload", f'{{"n": {i}}}', env=env)
    live = json.loads(run("ledger", "verify", "-t", "audit", "--json", env=env).stdout)
    assert live["ok"] and live["verified"] == 3
    bundle = tmp_path / "bundle"
    manifest = json.loads(run("ledger", "export", "-t", "audit", "--out", str(bundle), "--json", env=env).stdout)
    offline = {k: v for k, v in env.items() if k != "NATS_URL"}
    checked = json.loads(run("ledger", "verify", "--bundle", str(bundle), "--json", env=offline).stdout)
    assert checked["ok"] and checked["head"] == manifest["head"] == live["head"]
    assert checked["covered"] == [1, 3] and checked["uncovered"] is None and checked["admin_key_pinned"] is False
    expect = f"2:{live['head']}"  # the head of 3, claimed at 2: an outside anchor that does not match
    wrong = json.loads(run("ledger", "verify", "--bundle", str(bundle), "--expect", expect, "--json", env=offline,
                           check=False).stdout)  # fmt: skip
    assert wrong["first_break"]["seq"] == 2 and wrong["first_break"]["reason"] == "anchor"
    human = run("ledger", "verify", "--bundle", str(bundle), env=offline).stdout
    assert "covered by a signature: sequences 1-3" in human and "not covered: none" in human
    data = (bundle / "messages.msgpack").read_bytes()
    (bundle / "messages.msgpack").write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # flip a bit, never a no-op
    broken = run("ledger", "verify", "--bundle", str(bundle), env=offline, check=False)
    assert broken.returncode == 1 and ("BROKEN at sequence 3" in broken.stdout or "damaged" in broken.stderr)
