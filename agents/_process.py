"""Running an agent or a coordinator as its own process: signals, identity, ready line."""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path

from trustbus.agents._errors import RuntimeSetupError
from trustbus.agents._metrics import coordinator_gauges
from trustbus.agents._partitions import Partitions
from trustbus.agents._policy import load_policy
from trustbus.agents._runtime import Agent, connect_agent, run_agent
from trustbus.agents._tools import Toolbox, ToolImplementation, ToolRegistry, load_tools
from trustbus.bus import (
    Bus,
    ConsumerLagPoller,
    Health,
    KeyDirectory,
    collected,
    stop_on_signals,
    subjects,
    wrong_role,
)

log = logging.getLogger("trustbus.coordinator")

ToolServers = Callable[[ToolRegistry], AbstractAsyncContextManager[Mapping[str, ToolImplementation]]]
"""Implementations of registry tools that run outside the agent (MCP servers), open while the agent runs."""


Adapt = Callable[[object], Agent | None]
"""Turns an agent of another framework into an :class:`Agent`; None if it is not one it knows."""


def _importable_from_cwd() -> None:
    """Let ``module:attr`` name a module under the working directory, looked up after the installed packages.

    Run from the repository root, the folder ``agents/`` (trustbus.agents) would otherwise be found first as
    a top-level ``agents``, the OpenAI Agents SDK's name (``python -m`` puts the working directory first).
    """
    cwd = str(Path.cwd())
    sys.path[:] = [entry for entry in sys.path if entry not in ("", cwd)] + [cwd]


def load_agent(target: str, *, adapt: Adapt | None = None) -> Agent:
    """Import ``module:attr``: an :class:`Agent` instance, or a class to instantiate with no arguments.

    ``adapt`` is asked about anything else (an agent written with another framework).
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise RuntimeSetupError(f"agent {target!r}: expected module:attribute, e.g. examples.pingpong:agent")
    _importable_from_cwd()
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise RuntimeSetupError(f"cannot load agent {target!r}: {type(exc).__name__}: {exc}") from exc
    agent = found() if isinstance(found, type) and issubclass(found, Agent) else found
    if not isinstance(agent, Agent) and adapt is not None:
        agent = adapt(agent)
    if not isinstance(agent, Agent):
        raise RuntimeSetupError(
            f"{target!r} is not an agents.Agent (subclass it or use agents.Handlers) nor an agent of a known framework"
        )
    return agent


def bind_tools(agent: Agent, tools_file: Path | None) -> Toolbox | None:
    """The agent's implementations bound to the registry in ``tools_file`` and its built-in entries.

    None if the agent implements no tools and no file is given.
    """
    if tools_file is None:
        unlisted = sorted(set(agent.tools) - {tool.name for tool in agent.builtin_tools})
        if unlisted:
            raise RuntimeSetupError(
                f"the agent implements tools ({', '.join(unlisted)}): give their registry with --tools FILE"
            )
        if not agent.tools:
            return None
    listed = load_tools(tools_file) if tools_file is not None else ToolRegistry([])
    served = sorted(name for name in agent.tools if name in listed and listed.get(name).mcp is not None)
    if served:
        raise RuntimeSetupError(
            f"the agent implements tools its registry says an MCP server serves ({', '.join(served)}): "
            "remove the implementations or the entries' mcp blocks"
        )
    raised = set(agent.high_risk_tools)  # the agent's own code says they need a person: never less than high risk
    entries = [tool.model_copy(update={"high_risk": True}) if tool.name in raised else tool for tool in listed]
    registry = ToolRegistry(
        [*entries, *agent.builtin_tools],
        source=str(tools_file or "<built-in tools>"),
        mcp_servers=listed.mcp_servers.values(),
    )
    return Toolbox(registry, agent.tools)


async def serve_agent(
    target: str,
    *,
    servers: Sequence[str],
    tenant: str,
    agent_id: str,
    keys: KeyDirectory,
    nkey_auth: bool,
    ready: Callable[[], None],
    tools_file: Path | None = None,
    health: Health | None = None,
    tool_servers: ToolServers | None = None,
    adapt: Adapt | None = None,
) -> None:
    """Run one agent until SIGTERM/SIGINT, then finish the current batch, drain and close.

    A bad tool registry, or an implementation of a tool it does not list, stops it before it connects.
    ``health``: what ``/readyz`` answers, told when the agent serves and stops. ``tool_servers``
    binds the registry's tools that are served from outside (MCP servers), for as long as the agent runs.
    ``adapt``: as for :func:`load_agent`.
    """
    agent = load_agent(target, adapt=adapt)
    tools = bind_tools(agent, tools_file)
    served = tool_servers(tools.registry) if tool_servers is not None and tools is not None else nullcontext({})
    identity = keys.load(tenant, agent_id, role="agent")
    stop = stop_on_signals()
    bus = await connect_agent(list(servers), tenant=tenant, agent_id=agent_id, identity=identity, nkey_auth=nkey_auth)
    health = health or Health()
    health.watch(lambda: bus.connected)
    lag = ConsumerLagPoller(bus.consumer_lag, lambda: {"inbox": [subjects.inbox_consumer(agent_id)]})
    try:
        discovery = bus.discoverable("agent", lambda: {"ready": health.unready() or "ready"})
        async with lag.running(), discovery, served as outside:
            if tools is not None and outside:
                tools = Toolbox(tools.registry, {**outside, **agent.tools})
            await run_agent(agent, bus, stop=stop, ready=health.announcing(ready), tools=tools)
    finally:
        health.stopping()
        await bus.aclose()


async def serve_coordinator(
    policy_file: Path,
    *,
    servers: Sequence[str],
    tenant: str,
    name: str,
    keys: KeyDirectory,
    nkey_auth: bool,
    ready: Callable[[], None],
    tools_file: Path | None = None,
    clock: Callable[[], int] = time.time_ns,
    health: Health | None = None,
) -> None:
    """Run a coordinator until SIGTERM/SIGINT. A bad policy or tool registry stops it before it connects.

    Tools the registry marks ``high_risk`` are high-risk tools of the policy too. ``clock``
    (unix ns) dates what it signs. ``health``: what ``/readyz`` answers, told when it serves and stops.
    """
    policy = load_policy(policy_file)
    if tools_file is not None:
        registry = list(load_tools(tools_file))
        unasked = sorted(t.name for t in registry if not t.high_risk and t.name in policy.taint.high_risk_tools)
        if unasked:  # runtimes ask before high-risk calls by their registry, which does not know the policy
            log.warning(
                "high risk in the policy but not in the registry: agents call them unasked", extra={"tools": unasked}
            )
        policy = policy.with_high_risk_tools(tool.name for tool in registry if tool.high_risk)
    identity = keys.load(tenant, name, role="coordinator")
    stop = stop_on_signals()
    bus = await Bus.connect(
        list(servers),
        tenant=tenant,
        name=name,
        identity=identity,
        nkey_auth=nkey_auth,
        inbox_prefix=subjects.reply_prefix(name) if nkey_auth else None,
        clock=clock,
    )
    health = health or Health()
    health.watch(lambda: bus.connected)
    partitions = Partitions(bus, policy)
    health.require(partitions.unready)
    lag = ConsumerLagPoller(bus.consumer_lag, lambda: {"coordinator": partitions.consumers()})
    try:
        grant = bus.keyring.keyring.resolve(identity.key_id)
        if grant.role != "coordinator":
            raise RuntimeSetupError(wrong_role(tenant, name, grant.role, "coordinator"))
        with collected(coordinator_gauges(lambda: len(partitions.held), partitions.holds)):
            discovery = bus.discoverable(
                "coordinator",
                lambda: {
                    "ready": health.unready() or "ready",
                    "partitions_held": len(partitions.held),
                    "holds_waiting": len(partitions.holds()),
                    "cached_correlations": {str(p): n for p, n in partitions.cached().items()},
                    "correlation_capacity": policy.limits.correlations_in_memory,
                },
            )
            async with lag.running(), discovery:
                await partitions.run(stop, health.announcing(ready))
    finally:
        health.stopping()
        await bus.aclose()
