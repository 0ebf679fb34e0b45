"""The whole fleet under a rendered per-tenant config: every process authenticates with its own nkey.

Coordinator and agents run with --nkey-auth, so the server — not the client
library — is what confines each to its own outbox and inbox.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from bus import KeyDirectory, find_server_binary
from tests.e2e.test_config_render import TRUSTBUS, run, wait_until_accepted

T = "fleet"


def _serve(args: list[str], env: dict[str, str], err: Path) -> subprocess.Popen[str]:
    with err.open("w") as stderr:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([*TRUSTBUS, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line and json.loads(line)["ready"], err.read_text()
    return proc


def test_agents_and_coordinator_run_with_their_own_nkeys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    config = tmp_path / "nats.conf"
    env = {**os.environ, "TRUSTBUS_KEYS": str(keys)}
    env.pop("TRUSTBUS_NKEY", None)
    run("config", "render", "--tenant", T, "--bootstrap", "--out", str(config), env=env)
    up = subprocess.Popen(
        [*TRUSTBUS, "up", "--port", "0", "--data", str(tmp_path / "js"), "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        assert up.stdout is not None
        started = json.loads(up.stdout.readline())
        env["NATS_URL"] = started["url"]
        admin = ("--nkey", str(keys / T / "admin.seed"))
        run(*admin, "init", "--tenant", T, env=env)
        for owner in ("ping", "pong"):
            run(*admin, "keys", "new", "--tenant", T, "--owner", owner, env=env)
        run(*admin, "keys", "new", "--tenant", T, "--owner", "coordinator", "--role", "coordinator", env=env)
        run(*admin, "config", "render", "--tenant", T, "--out", str(config), env=env)
        reload = subprocess.run([str(find_server_binary()), "--signal", f"reload={started['pid']}"], timeout=30)
        assert reload.returncode == 0
        wait_until_accepted(started["url"], KeyDirectory(keys).load(T, "pong"))

        policy = tmp_path / "policy.yaml"
        policy.write_text(
            'limits: {hop_limit: 4}\nrules:\n  - {from: "*", to: ["*"], kinds: [event, reply, checkpoint]}\n'
        )
        procs.append(
            _serve(["coordinator", "run", "-t", T, "--policy", str(policy), "--nkey-auth"], env, tmp_path / "c.err")
        )
        for agent in ("ping", "pong"):
            args = ["agent", "run", "examples.pingpong:Player", "--id", agent, "-t", T, "--nkey-auth"]
            procs.append(_serve(args, env, tmp_path / f"{agent}.err"))

        run(*admin, "send", "-t", T, "--as", "ping", "--to", "pong", "--payload", '{"serve": 1}', env=env)
        stopped = None
        tail = subprocess.Popen(
            [*TRUSTBUS, *admin, "tail", "-t", T, "--json", "--subject", f"tb.{T}.decision.*", "--idle-timeout", "20"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert tail.stdout is not None
        for line in tail.stdout:
            decision = json.loads(line)["envelope"]["payload"]
            if "hop_limit" in decision["reasons"]:
                stopped = decision
                break
        tail.terminate()
        tail.wait(timeout=20)
        tail.stdout.close()
        assert stopped is not None and stopped["verdict"] == "reject" and stopped["hop"] == 5
        for err in ("c.err", "ping.err", "pong.err"):
            assert "Permissions Violation" not in (tmp_path / err).read_text()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=20) == 0
            if proc.stdout:
                proc.stdout.close()
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=20)
        if up.stdout:
            up.stdout.close()
