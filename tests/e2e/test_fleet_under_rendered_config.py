"""The whole fleet under a rendered per-tenant config: every process authenticates with its own nkey.

Coordinator and agents run with --nkey-auth, so the server — not the client
library — is what confines each to its own outbox and inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.test_config_render import wait_until_accepted
from tests.processes import TRUSTBUS, one_shot, ready, run, supervised
from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import KeyDirectory, find_server_binary, reload_until_wired

T = "fleet"
READY_S = 60.0
STOP_S = 20.0
FOLLOW_S = 120.0  # for the next line of a tail: its own idle timeout ends it sooner
_tails = itertools.count(1)


@dataclass
class Rendered:
    """A server running a rendered per-key config of one tenant, and how to act on it as the admin."""

    url: str
    tenant: str
    env: dict[str, str]
    admin: tuple[str, ...]  # CLI arguments: authenticate as the tenant admin
    server_pid: int
    supervisor: Supervisor
    served: list[Process] = field(default_factory=list)

    def reload(self) -> None:
        """Have the server read its config file again."""
        reload = one_shot([str(find_server_binary()), "--signal", f"reload={self.server_pid}"], timeout_s=30)
        assert reload.returncode == 0

    def serve(self, args: list[str], err: Path) -> Process:
        """Start `trustbus <args>` (stopped at the end, stderr to ``err``) and wait for its ready line."""
        proc = self.supervisor.start(err.stem, [*TRUSTBUS, *args], env=self.env, log=err)
        line = ready(proc, READY_S)
        assert line["ready"], line
        self.served.append(proc)
        return proc

    def follow(self, subject: str, until: Callable[[dict[str, Any]], bool], *, idle_s: int) -> dict[str, Any]:
        """Tail ``subject`` as the admin until ``until(envelope)`` holds for one (the tail ends after ``idle_s``
        without a message); that envelope (as JSON)."""
        args = [*self.admin, "tail", "-t", self.tenant, "--json", "--subject", subject, "--idle-timeout", str(idle_s)]
        tail = self.supervisor.start(f"tail-{next(_tails)}", [*TRUSTBUS, *args], env=self.env)
        try:
            while True:
                envelope: dict[str, Any] = tail.line(FOLLOW_S)["envelope"]
                if until(envelope):
                    return envelope
        except ProcessFailed as exc:
            raise AssertionError(f"nothing on {subject} matched: {exc}") from None
        finally:
            tail.stop(STOP_S)


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
    with supervised(tmp_path, env) as supervisor:
        up = supervisor.start(
            "up", [*TRUSTBUS, "up", "--port", "0", "--data", str(tmp_path / "js"), "--config", str(config), "--json"]
        )
        started = ready(up)
        url, server_pid = str(started["url"]), int(str(started["pid"]))
        env["NATS_URL"] = url
        admin = ("--nkey", str(keys / tenant / "admin.seed"))
        deployment = Rendered(
            url=url, tenant=tenant, env=env, admin=admin, server_pid=server_pid, supervisor=supervisor
        )  # fmt: skip
        run(*deployment.admin, "init", "--tenant", tenant, env=env)
        for owner, role in roles.items():
            run(*deployment.admin, "keys", "new", "--tenant", tenant, "--owner", owner, "--role", role, env=env)
        run(*deployment.admin, "config", "render", "--tenant", tenant, "--out", str(config), env=env)
        agents = [owner for owner, role in roles.items() if role == "agent"]
        if agents:  # each agent is an account of its own, wired by a second reload
            seed = KeyDirectory(keys).load(tenant, agents[0])
            asyncio.run(reload_until_wired(server_pid, url, tenant=tenant, agent=seed, agent_name=agents[0]))
        else:
            deployment.reload()
            wait_until_accepted(url, KeyDirectory(keys).load(tenant, next(iter(roles))))
        try:
            yield deployment
        finally:
            supervisor.stop(reversed(deployment.served), STOP_S)
            assert [p.returncode for p in deployment.served] == [0] * len(deployment.served)


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
        stopped = deployment.follow(
            f"tb.{T}.decision.*",
            lambda envelope: any("hop_limit" in d["reasons"] for d in envelope["decisions"]),
            idle_s=20,
        )
        [decision] = [d for d in stopped["decisions"] if "hop_limit" in d["reasons"]]
        assert decision["verdict"] == "reject" and decision["hop"] == 5
        for err in ("c.err", "ping.err", "pong.err"):
            text = (tmp_path / err).read_text()
            assert "Permissions Violation" not in text
            # service discovery is not among the roles' permissions: said once, and the process carries on
            assert text.count("service discovery ($SRV) is not permitted by the server") == 1, text
