"""The demo's moving parts: an embedded server under the tenant's rendered config, and each component a process."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import (
    KeyDirectory,
    init_tenant,
    list_keys,
    new_key,
    reload_until_wired,
    render_bootstrap_config,
    render_tenant_config,
)
from trustbus.demo.systems import DIR_ENV, FILES

TENANT = "support"
# agent id -> (class in trustbus.demo.agents, whether it binds tools)
AGENTS: dict[str, tuple[str, bool]] = {
    "triage": ("Triage", False),
    "researcher": ("Researcher", True),
    "billing": ("Billing", True),
    "notes": ("Notes", False),
}
# --framework -> (the package its extra installs, the researcher written with that framework)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "pydantic-ai": ("pydantic_ai", "trustbus.demo.pydantic_ai_agents:Researcher"),
}
# key owner -> role; "desk" is where customer tickets come from (the demo sends them)
KEYS: dict[str, str] = {
    **dict.fromkeys(AGENTS, "agent"),
    "desk": "agent",
    "coordinator": "coordinator",
    "ledger": "ledger",
    "ops": "operator",
}
READY_S = 30.0
STOP_S = 15.0


class DemoError(Exception):
    """A step of the demo did not happen; the message says which and where the logs are."""


@dataclass
class Fleet:
    """The server and processes of one demo run, all under ``workdir``."""

    workdir: Path
    detach: bool
    framework: str | None = None  # a key of FRAMEWORKS: the researcher is written with it
    url: str = ""
    server_pid: int = 0
    processes: dict[str, Process] = field(default_factory=dict)
    started: list[tuple[str, int]] = field(default_factory=list)  # (name, pid) of every process ever started
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(env={}, cwd=self.workdir, logs=self.logs, with_parent=not self.detach)

    @property
    def keys(self) -> KeyDirectory:
        """The run's seed directory."""
        return KeyDirectory(self.workdir / "keys")

    @property
    def logs(self) -> Path:
        """Where each process's output and log go."""
        return self.workdir / "logs"

    @property
    def ledger_data(self) -> Path:
        """The ledger service's DuckDB projection."""
        # Not "ledger": a process started with `python -m` in the working directory would import it as the package.
        return self.workdir / "projection"

    @property
    def admin_seed(self) -> str:
        """The tenant admin's nkey seed (never printed)."""
        return self.keys.admin(TENANT).nkey_seed

    def env(self) -> dict[str, str]:
        """The environment every component runs with."""
        env = {**os.environ, "NATS_URL": self.url, "TRUSTBUS_KEYS": str(self.keys.root), DIR_ENV: str(self.workdir)}
        env.pop("TRUSTBUS_NKEY", None)
        return env

    def spawn(self, name: str, *args: str) -> Process:
        """Start ``trustbus <args>`` as its own process (in its own session: Ctrl-C reaches the demo only)."""
        process = self.supervisor.start(
            name, [sys.executable, "-m", "trustbus", *args], env=self.env(), out=self.logs / f"{name}.out"
        )
        self.processes[name] = process
        self.started.append((name, process.pid))
        return process

    async def ready(self, process: Process) -> dict[str, Any]:
        """Wait for the process's JSON ready line; DemoError if it exits or takes too long."""
        try:
            return await process.ready(READY_S)
        except ProcessFailed as exc:
            raise DemoError(str(exc)) from None

    async def start_server(self) -> None:
        """Render the bootstrap config (the tenant admin its only user) and start the embedded server with it."""
        config = self.workdir / "nats.conf"
        config.write_text(render_bootstrap_config(TENANT, self.keys.admin(TENANT).key_id))
        server = self.spawn(
            "server", "up", "--port", "0", "--data", str(self.workdir / "jetstream"), "--config", str(config), "--json"
        )
        started = await self.ready(server)
        self.url, self.server_pid = started["url"], int(started["pid"])

    async def provision(self) -> None:
        """Provision the tenant inside its account, issue every key, render the full config and reload."""
        servers, admin = [self.url], self.admin_seed
        await init_tenant(servers, TENANT, keys=self.keys, nkey_seed=admin)
        for owner, role in KEYS.items():
            await new_key(servers, TENANT, owner, role=role, keys=self.keys, nkey_seed=admin)  # type: ignore[arg-type]
        config = self.workdir / "nats.conf"
        staged = config.with_name("nats.conf.new")
        staged.write_text(render_tenant_config(TENANT, await list_keys(servers, TENANT, nkey_seed=admin)))
        os.replace(staged, config)
        # nats-server reloads its config; each agent is an account of its own, whose imports a second reload wires.
        agent = next(owner for owner, role in KEYS.items() if role == "agent")
        await reload_until_wired(
            self.server_pid, self.url, tenant=TENANT, agent=self.keys.load(TENANT, agent), agent_name=agent
        )

    async def start_components(self) -> None:
        """The coordinator, the ledger service and every agent, each its own process with its own nkey."""
        tools = str(FILES / "tools.yaml")
        common = ("--tenant", TENANT, "--nkey-auth")
        # The coordinator makes every agent's inbox consumer, so it is ready before any agent starts.
        coordinator = self.spawn(
            "coordinator", "coordinator", "run", *common, "--policy", str(FILES / "policy.yaml"), "--tools", tools
        )
        await self.ready(coordinator)
        started = [
            self.spawn(
                "ledger", "ledger", "run", *common, "--data", str(self.ledger_data), "--checkpoint-seconds", "1"
            ),
        ]
        for agent, (_, has_tools) in AGENTS.items():
            extra = ("--tools", tools) if has_tools else ()
            started.append(self.spawn(agent, "agent", "run", self.target(agent), "--id", agent, *common, *extra))
        await asyncio.gather(*(self.ready(p) for p in started))

    def target(self, agent: str) -> str:
        """The ``module:attr`` ``agent run`` loads for ``agent``: the framework's researcher with ``framework``."""
        if agent == "researcher" and self.framework is not None:
            return FRAMEWORKS[self.framework][1]
        return f"trustbus.demo.agents:{AGENTS[agent][0]}"

    def kill(self, name: str) -> int:
        """SIGKILL a component, as a crash would; its pid."""
        return self.processes[name].kill()

    async def restart(self, name: str) -> int:
        """Start a component again with the same arguments; its new pid, once it is ready."""
        process = self.supervisor.restart(self.processes[name])
        self.processes[name] = process
        self.started.append((name, process.pid))
        await self.ready(process)
        return process.pid

    def pids(self) -> dict[str, int]:
        """Every running component's pid."""
        return {name: p.pid for name, p in self.processes.items() if p.returncode is None}

    def stop(self) -> None:
        """SIGTERM every component, then the server, and wait; SIGKILL what does not stop."""
        self.supervisor.stop([p for n, p in self.processes.items() if n != "server"], STOP_S)
        self.supervisor.stop([p for n, p in self.processes.items() if n == "server"], STOP_S)
