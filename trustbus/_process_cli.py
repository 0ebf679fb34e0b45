"""``trustbus agent run`` and ``trustbus coordinator run``."""

import gc
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    traces,
)

if TYPE_CHECKING:
    from trustbus.agents import PartitionStatus

agent_app = typer.Typer(help="Run an agent as its own process.", no_args_is_help=True)
coordinator_app = typer.Typer(
    help="The coordinator (reference monitor): run it, or see its partitions.", no_args_is_help=True
)


# A coordinator keeps up to limits.correlations_in_memory correlations (thousands of dicts) for its whole life
# and allocates fast on its hot path: with CPython's default thresholds (700, 10, 10) it stopped for full passes
# of 150-300 ms every few thousand envelopes (docs/PERFORMANCE.md, "Levers measured"). Young passes every 10,000
# allocations, a full one every 1,000 middle ones: cycles are still freed, rarely.
COORDINATOR_GC_THRESHOLDS = (10_000, 50, 1_000)


def tune_gc_for_a_long_lived_heap(thresholds: tuple[int, int, int] = COORDINATOR_GC_THRESHOLDS) -> None:
    """Freeze what start-up loaded (never scanned again) and collect less often: for a coordinator process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def _ready(what: str, **fields: object) -> None:
    print(json.dumps({"ready": what, **fields}), flush=True)


@agent_app.command("run")
def agent_run(
    target: Annotated[
        str, typer.Argument(help="module:attr of an agents.Agent (instance or class) or a pydantic_ai.Agent.")
    ],
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
    """Serve one agent until SIGTERM/SIGINT; prints a JSON ready line when serving.

    Tools the registry says an MCP server serves are bound to that server (the mcp extra).
    """
    from trustbus._mcp_cli import mcp_tool_servers
    from trustbus.adapters._frameworks import framework_agent
    from trustbus.agents import serve_agent

    traces("agent")
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
                tool_servers=mcp_tool_servers(tools) if tools is not None else None,
                adapt=framework_agent,
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

    traces("coordinator")
    tune_gc_for_a_long_lived_heap()
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


@coordinator_app.command("status")
def coordinator_status(
    tenant: TenantOpt,
    server: ServerOpt = DEFAULT_SERVER,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each partition: which coordinator holds it and how far behind it is; and the holds waiting for a person."""
    import time

    from trustbus._cli_common import make_table, nkey_seed, out
    from trustbus.agents import coordinator_status as status_of
    from trustbus.agents import list_held

    partitions = run(status_of(servers(server), tenant, nkey_seed=nkey_seed(), cached=True))
    held = run(list_held(servers(server), tenant, nkey_seed=nkey_seed()))
    oldest_s = (time.time_ns() - held[0].decided_ns) / 1e9 if held else None
    if json_out:
        rows = [{**vars(p), "held": p.held} for p in partitions]
        print(json.dumps({"partitions": rows, "holds_waiting": len(held), "oldest_hold_s": oldest_s}))
        return
    table = make_table("partition", "held by", "lease age (s)", "pending", "ack pending", "cached correlations")
    for p in partitions:
        age = "" if p.lease_age_s is None else f"{p.lease_age_s:.1f}"
        cached = "?" if p.cached is None else f"{p.cached} of {p.capacity}"
        table.add_row(str(p.partition), _holder(p), age, str(p.pending), str(p.ack_pending), cached)
    out.print(table)
    waiting = f"{len(held)} hold(s) waiting for a person" + (f", the oldest {oldest_s:.0f} s" if held else "")
    out.print(waiting + ("  (`trustbus approvals list`)" if held else ""))


def _holder(partition: "PartitionStatus") -> str:
    if partition.held:
        return partition.holder or ""
    if partition.holder is None:
        return "nobody"
    if partition.holder == "foreign":
        return "nobody (a value no coordinator signed)"
    return f"nobody ({partition.holder}'s lease lapsed)"
