"""``trustbus tools``: the blast-radius inventory of a tool registry."""

import json
from pathlib import Path
from typing import Annotated

import typer

from trustbus._cli_common import err, make_table, out


def tools(
    file: Annotated[Path, typer.Option("--file", "-f", help="Tool registry (.yaml, .yml or .toml).")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per tool, one per line.")] = False,
) -> None:
    """Print the tool inventory: system, owner, effect class, compensating tool, result taint, risk."""
    from rich.markup import escape

    from trustbus.agents import AgentError, load_tools

    try:
        registry = load_tools(file)
    except AgentError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if json_out:
        for tool in registry:
            print(json.dumps(tool.model_dump()))
        return
    table = make_table("name", "system", "owner", "class", "compensating tool", "result taint", "high risk")
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
    out.print(table)
