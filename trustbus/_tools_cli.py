"""``trustbus tools``: the blast-radius inventory of a tool registry."""

import json
from pathlib import Path
from typing import Annotated

import typer


def tools(
    file: Annotated[Path, typer.Option("--file", "-f", help="Tool registry (.yaml, .yml or .toml).")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per tool, one per line.")] = False,
) -> None:
    """Print the tool inventory: system, owner, effect class, compensating tool, result taint, risk."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trustbus.agents import AgentError, load_tools

    try:
        registry = load_tools(file)
    except AgentError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if json_out:
        for tool in registry:
            print(json.dumps(tool.model_dump()))
        return
    table = Table()
    for column in ("name", "system", "owner", "class", "compensating tool", "result taint", "high risk"):
        table.add_column(column, overflow="fold")
    for tool in registry:
        table.add_row(
            tool.name,
            tool.system,
            tool.owner,
            tool.effect_class,
            tool.compensating_tool or "",
            ", ".join(tool.result_taint),
            "yes" if tool.high_risk else "",
            style="bold" if tool.high_risk else None,
        )
    Console(soft_wrap=True).print(table)
