"""``trustbus agent run`` and ``trustbus coordinator run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

agent_app = typer.Typer(help="Run an agent as its own process.", no_args_is_help=True)
coordinator_app = typer.Typer(help="Run the coordinator (reference monitor) for a tenant.", no_args_is_help=True)

NkeyAuthOpt = Annotated[
    bool, typer.Option("--nkey-auth", help="Authenticate to NATS with the seed's nkey (rendered configs).")
]


def _ready(what: str, **fields: str) -> None:
    print(json.dumps({"ready": what, **fields}), flush=True)


@agent_app.command("run")
def agent_run(
    target: Annotated[str, typer.Argument(help="module:attr of an agents.Agent (instance or class).")],
    agent_id: Annotated[str, typer.Option("--id", help="The agent id; its seed is <keys>/<tenant>/<id>.seed.")],
    tenant: Annotated[str, typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant name.")],
    server: Annotated[str, typer.Option("--server", envvar="NATS_URL", help="NATS URL(s).")] = "nats://127.0.0.1:4222",
    keys: Annotated[Path | None, typer.Option("--keys", envvar="TRUSTBUS_KEYS", help="Seed directory.")] = None,
    nkey_auth: NkeyAuthOpt = False,
    tools: Annotated[
        Path | None, typer.Option("--tools", help="Tool registry (.yaml, .yml or .toml) for the agent's tools.")
    ] = None,
) -> None:
    """Serve one agent until SIGTERM/SIGINT; prints a JSON ready line when serving."""
    from trustbus.agents._process import serve_agent
    from trustbus.cli import _keys, _run, _servers

    _run(
        serve_agent(
            target,
            servers=_servers(server),
            tenant=tenant,
            agent_id=agent_id,
            keys=_keys(keys),
            nkey_auth=nkey_auth,
            ready=lambda: _ready("agent", id=agent_id, tenant=tenant),
            tools_file=tools,
        )
    )


@coordinator_app.command("run")
def coordinator_run(
    tenant: Annotated[str, typer.Option("--tenant", "-t", envvar="TRUSTBUS_TENANT", help="Tenant name.")],
    policy: Annotated[Path, typer.Option("--policy", help="Policy file (.yaml, .yml or .toml).")],
    name: Annotated[str, typer.Option(help="Key owner to sign as (role coordinator).")] = "coordinator",
    server: Annotated[str, typer.Option("--server", envvar="NATS_URL", help="NATS URL(s).")] = "nats://127.0.0.1:4222",
    keys: Annotated[Path | None, typer.Option("--keys", envvar="TRUSTBUS_KEYS", help="Seed directory.")] = None,
    nkey_auth: NkeyAuthOpt = False,
    tools: Annotated[
        Path | None, typer.Option("--tools", help="Tool registry: its high_risk tools are high risk in the policy too.")
    ] = None,
) -> None:
    """Mediate every outbox of the tenant until SIGTERM/SIGINT; prints a JSON ready line when serving."""
    from trustbus.agents._process import serve_coordinator
    from trustbus.cli import _keys, _run, _servers

    _run(
        serve_coordinator(
            policy,
            servers=_servers(server),
            tenant=tenant,
            name=name,
            keys=_keys(keys),
            nkey_auth=nkey_auth,
            ready=lambda: _ready("coordinator", name=name, tenant=tenant),
            tools_file=tools,
        )
    )
