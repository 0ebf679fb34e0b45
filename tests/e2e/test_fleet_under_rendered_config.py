"""The whole fleet under a rendered per-tenant config: every process authenticates with its own nkey.

Coordinator and agents run with --nkey-auth, so the server — not the client
library — is what confines each to its own outbox and inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.test_config_render import TRUSTBUS, run, wait_until_accepted
from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import KeyDirectory, find_server_binary, reload_until_wired

T = "fleet"
ROOT = Path(__file__).resolve().parents[2]
READY_S = 60.0
STOP_S = 20.0


@dataclass
class Rendered:
    """A server running a rendered per-key config of one tenant, and how to act on it as the admin."""

    url: str
    env: dict[str, str]
    admin: tuple[str, ...]  # CLI arguments: authenticate as the tenant admin
    server_pid: int
    logs: Path
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(env=self.env, cwd=ROOT, logs=self.logs)

    def reload(self) -> None:
        """Have the server read its config file again."""
        reload = subprocess.run([str(find_server_binary()), "--signal", f"reload={self.server_pid}"], timeout=30)
        assert reload.returncode == 0

    def serve(self, args: list[str], err: Path) -> Process:
        """Start `trustbus <args>` (stopped at the end, stderr to ``err``) and wait for its ready line."""
        proc = self.supervisor.start(err.stem, [*TRUSTBUS, *args], log=err)
        try:
            line = proc.wait_ready(READY_S)
        except ProcessFailed as exc:
            raise AssertionError("\n".join([str(exc), *proc.tail()])) from None
        assert line["ready"], line
        return proc


@contextlib.contextmanager
def rendered(tmp_path: Path, tenant: str, roles: dict[str, str]) -> Iterator[Rendered]:
    """Bootstrap config, server, init and a key per ``roles`` owner as the admin, full config, reload.

    On exit every process started with :meth:`Rendered.serve` must stop with 0 on SIGTERM, then the server stops.
    """
    keys = tmp_path / "keys"
    config = tmp_path / "nats.conf"
    env = {**os.environ, "TRUSTBUS_KEYS": str(keys)}
    env.pop("TRUSTBUS_NKEY", None)
    run("config", "render", "--tenant", tenant, "--bootstrap", "--out", str(config), env=env)
    up = subprocess.Popen(
        [*TRUSTBUS, "up", "--port", "0", "--data", str(tmp_path / "js"), "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert up.stdout is not None
        started = json.loads(up.stdout.readline())
        env["NATS_URL"] = started["url"]
        admin = ("--nkey", str(keys / tenant / "admin.seed"))
        deployment = Rendered(url=started["url"], env=env, admin=admin, server_pid=started["pid"], logs=tmp_path)
        run(*deployment.admin, "init", "--tenant", tenant, env=env)
        for owner, role in roles.items():
            run(*deployment.admin, "keys", "new", "--tenant", tenant, "--owner", owner, "--role", role, env=env)
        run(*deployment.admin, "config", "render", "--tenant", tenant, "--out", str(config), env=env)
        agents = [owner for owner, role in roles.items() if role == "agent"]
        if agents:  # each agent is an account of its own, wired by a second reload
            seed = KeyDirectory(keys).load(tenant, agents[0])
            asyncio.run(
                reload_until_wired(started["pid"], started["url"], tenant=tenant, agent=seed, agent_name=agents[0])
            )
        else:
            deployment.reload()
            wait_until_accepted(started["url"], KeyDirectory(keys).load(tenant, next(iter(roles))))
        try:
            yield deployment
        finally:
            deployment.supervisor.stop_all(STOP_S)
            assert [p.returncode for p in deployment.supervisor.processes] == [0] * len(deployment.supervisor.processes)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=20)
        if up.stdout:
            up.stdout.close()


def test_agents_and_coordinator_run_with_their_own_nkeys(tmp_path: Path) -> None:
    with rendered(tmp_path, T, {"ping": "agent", "pong": "agent", "coordinator": "coordinator"}) as deployment:
        env, admin = deployment.env, deployment.admin
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            'limits: {hop_limit: 4}\nrules:\n  - {from: "*", to: ["*"], kinds: [event, reply, checkpoint]}\n'
        )
        deployment.serve(["coordinator", "run", "-t", T, "--policy", str(policy), "--nkey-auth"], tmp_path / "c.err")
        for agent in ("ping", "pong"):
            args = ["agent", "run", "examples.pingpong:Player", "--id", agent, "-t", T, "--nkey-auth"]
            deployment.serve(args, tmp_path / f"{agent}.err")

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
