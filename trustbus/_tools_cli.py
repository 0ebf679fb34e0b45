"""``trustbus tools``: the blast-radius inventory of a tool registry, and ``tools import-mcp``."""

import json
from pathlib import Path
from typing import Annotated

import typer

from trustbus._cli_common import err, make_table, out
from trustbus._mcp_cli import import_mcp

tools_app = typer.Typer(no_args_is_help=True)
tools_app.command("import-mcp")(import_mcp)


@tools_app.callback(invoke_without_command=True)
def tools(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Tool registry (.yaml, .yml or .toml).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per tool, one per line.")] = False,
) -> None:
    """Print the tool inventory: system, owner, effect class, compensating tool, result taint, risk."""
    if ctx.invoked_subcommand is not None:
        return
    if file is None:
        raise typer.BadParameter("give the registry to print", param_hint="'--file' / '-f'")
    from rich.markup import escape

    from trustbus.agents import AgentError, load_tools

    try:
        registry = load_tools(file)
    except AgentError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if json_out:
        for tool in registry:
            print(json.dumps(tool.model_dump(exclude=None if tool.mcp else {"mcp"})))
        return
    columns = ("name", "system", "owner", "class", "compensating tool", "result taint", "high risk", "served by")
    table = make_table(*columns)
    for tool in registry:
        table.add_row(
            tool.name,
            tool.system,
            tool.owner,
            tool.effect_class,
            tool.compensating_tool or "",
            ", ".join(tool.result_taint),
            "yes" if tool.high_risk else "",
            f"MCP {tool.mcp.server}/{tool.mcp.tool}" if tool.mcp else "",
            style="bold" if tool.high_risk else None,
        )
    out.print(table)
