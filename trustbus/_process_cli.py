"""``trustbus agent run`` and ``trustbus coordinator run``."""

import json
from pathlib import Path
from typing import Annotated

import typer

from trustbus._cli_common import (
    DEFAULT_SERVER,
    KeysOpt,
    MetricsPortOpt,
    NkeyAuthOpt,
    ServerOpt,
    TenantOpt,
    key_directory,
    metrics_endpoint,
    metrics_fields,
    run,
    servers,
)

agent_app = typer.Typer(help="Run an agent as its own process.", no_args_is_help=True)
coordinator_app = typer.Typer(help="Run the coordinator (reference monitor) for a tenant.", no_args_is_help=True)


def _ready(what: str, **fields: object) -> None:
    print(json.dumps({"ready": what, **fields}), flush=True)


@agent_app.command("run")
def agent_run(
    target: Annotated[str, typer.Argument(help="module:attr of an agents.Agent (instance or class).")],
    agent_id: Annotated[str, typer.Option("--id", help="The agent id; its seed is <keys>/<tenant>/<id>.seed.")],
    tenant: TenantOpt,
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    nkey_auth: NkeyAuthOpt = False,
    tools: Annotated[
        Path | None, typer.Option("--tools", help="Tool registry (.yaml, .yml or .toml) for the agent's tools.")
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Serve one agent until SIGTERM/SIGINT; prints a JSON ready line when serving."""
    from trustbus.agents import serve_agent

    with metrics_endpoint(metrics_port) as endpoint:
        run(
            serve_agent(
                target,
                servers=servers(server),
                tenant=tenant,
                agent_id=agent_id,
                keys=key_directory(keys),
                nkey_auth=nkey_auth,
                ready=lambda: _ready("agent", id=agent_id, tenant=tenant, **metrics_fields(endpoint)),
                tools_file=tools,
                health=endpoint.health if endpoint else None,
            )
        )


@coordinator_app.command("run")
def coordinator_run(
    tenant: TenantOpt,
    policy: Annotated[Path, typer.Option("--policy", help="Policy file (.yaml, .yml or .toml).")],
    name: Annotated[str, typer.Option(help="Key owner to sign as (role coordinator).")] = "coordinator",
    server: ServerOpt = DEFAULT_SERVER,
    keys: KeysOpt = None,
    nkey_auth: NkeyAuthOpt = False,
    tools: Annotated[
        Path | None, typer.Option("--tools", help="Tool registry: its high_risk tools are high risk in the policy too.")
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Mediate every outbox of the tenant until SIGTERM/SIGINT; prints a JSON ready line when serving."""
    from trustbus.agents import serve_coordinator

    with metrics_endpoint(metrics_port) as endpoint:
        run(
            serve_coordinator(
                policy,
                servers=servers(server),
                tenant=tenant,
                name=name,
                keys=key_directory(keys),
                nkey_auth=nkey_auth,
                ready=lambda: _ready("coordinator", name=name, tenant=tenant, **metrics_fields(endpoint)),
                tools_file=tools,
                health=endpoint.health if endpoint else None,
            )
        )
