"""``trustbus tools import-mcp``, and the MCP tools ``trustbus agent run --tools`` binds."""

import contextlib
import json
import shlex
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from trustbus._cli_common import err, make_table, out, run

if TYPE_CHECKING:
    from trustbus.agents import ToolImplementation, ToolRegistry


def mcp_tool_servers(
    file: Path,
) -> "Callable[[ToolRegistry], AbstractAsyncContextManager[Mapping[str, ToolImplementation]]]":
    """The MCP tools of the registry in ``file``, bound while the agent runs (none if it lists no MCP server)."""

    def bind(registry: "ToolRegistry") -> "AbstractAsyncContextManager[Mapping[str, ToolImplementation]]":
        if not registry.mcp_servers:
            return contextlib.nullcontext({})
        try:
            from trustbus.adapters.mcp import McpTools
        except ImportError as exc:
            from trustbus.agents import RuntimeSetupError

            message = f"{file} lists MCP servers, which need the mcp extra: pip install 'trustbus[mcp]' ({exc})"
            raise RuntimeSetupError(message) from None
        return McpTools(registry, source=file)

    return bind


def import_mcp(
    server: Annotated[str, typer.Option("--server", help="The server's name in the registry.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Tool registry to write (.yaml, .yml; made if missing).")],
    command: Annotated[
        str | None, typer.Option("--command", help="Run the server over stdio: the command line, quoted as one.")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="The server's streamable HTTP endpoint.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Owner of new entries (else left for you).")] = None,
    system: Annotated[
        str | None, typer.Option("--system", help="System of new entries (default: the server's name).")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Put before each tool's name in the registry.")] = "",
    approve: Annotated[
        list[str] | None,
        typer.Option("--approve", help="Approve this tool's new definition (its registry name); repeatable."),
    ] = None,
    compensate: Annotated[
        list[str] | None,
        typer.Option("--compensate", help="TOOL=UNDO: UNDO undoes TOOL, which becomes reversible; repeatable."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: the tools and what is left.")] = False,
) -> None:
    """List an MCP server's tools into a registry: effect classes from their annotations, fingerprints approved.

    A read-only tool (readOnlyHint) is a read; any other is irreversible, or reversible if
    --compensate names the tool that undoes it. New write tools are high risk. Re-running keeps
    your edits of each entry; a tool whose definition or annotations changed is refused to
    agents until you approve it with --approve.
    """
    from rich.markup import escape

    try:
        from trustbus.adapters.mcp import ImportOptions, import_server
    except ImportError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}: install the mcp extra, pip install 'trustbus[mcp]'")
        raise typer.Exit(1) from None
    if command is not None and url is not None:
        err.print("[red]error:[/red] give --command or --url, not both")
        raise typer.Exit(2)
    pairs = [item.partition("=") for item in compensate or []]
    if any(not tool or not sep or not undo for tool, sep, undo in pairs):
        err.print("[red]error:[/red] --compensate takes TOOL=UNDO")
        raise typer.Exit(2)
    options = ImportOptions(
        server={"name": server, "command": shlex.split(command) if command else None, "url": url},
        owner=owner,
        system=system,
        prefix=prefix,
        approve=tuple(approve or ()),
        compensate={tool: undo for tool, _, undo in pairs},
    )
    imported, left = run(import_server(file, options))
    if json_out:
        rows = [vars(row) for row in imported.rows]
        print(json.dumps({"file": str(file), "server": server, "tools": rows, "left": left}))
        return
    table = make_table("name", "server tool", "status", "class", "high risk", "idempotent", "fingerprint", "note")
    for row in imported.rows:
        table.add_row(
            row.name,
            row.tool,
            row.status,
            row.effect_class or "",
            "yes" if row.high_risk else "",
            "yes" if row.idempotent else "",
            (row.fingerprint or "")[:12],
            row.note,
            style="bold red" if row.status in ("changed", "missing", "conflict") else None,
        )
    out.print(table)
    out.print(f"wrote {file}")
    if left:
        out.print("[yellow]left for you to fill before agents accept the registry:[/yellow]")
        for problem in left:
            out.print(f"  {escape(problem)}  (edit the file, or re-run with --owner)")
