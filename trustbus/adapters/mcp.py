"""MCP servers as tools: their tools imported into the registry, and bound to an agent as recorded effects.

Needs the ``mcp`` extra (``pip install 'trustbus[mcp]'``). Two uses:

- :func:`import_server`, behind ``trustbus tools import-mcp``: list a server's
  tools into a registry file, with an effect class from each tool's
  annotations and the fingerprint of its definition.
- :class:`McpTools`, which ``trustbus agent run --tools`` opens for every
  registry that lists MCP servers: an implementation of each MCP tool, so
  ``ctx.effect("add_note", args)`` is an MCP call recorded like any effect
  (once under redelivery, held when high risk and tainted). One session per
  server and process, opened on the first call. Before every call the
  server's listing is read: a tool whose definition or annotations differ
  from what the operator approved is refused with
  :class:`~trustbus.agents.EffectDenied` (reason ``mcp_tool_changed``) and
  never called, until the operator approves it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from trustbus.adapters._mcp_import import Imported, ImportOptions, ImportRefused, Offered, Row, fingerprint, merge
from trustbus.adapters._mcp_sessions import KEY_META, ServerSession, read_listing
from trustbus.agents import (
    EffectDenied,
    McpBinding,
    McpServer,
    Tool,
    ToolImplementation,
    ToolRegistry,
    ToolRegistryError,
    load_tools,
    parse_tools,
)

CHANGED = "mcp_tool_changed"
"""The reason code of a call refused because the server's tool is not the one approved."""

__all__ = [
    "CHANGED",
    "KEY_META",
    "ImportOptions",
    "ImportRefused",
    "Imported",
    "McpToolError",
    "McpTools",
    "Offered",
    "Row",
    "fingerprint",
    "import_server",
]


class McpToolError(RuntimeError):
    """The MCP tool ran and reported an error (``isError``): recorded as the call's failure."""


class McpTools:
    """The MCP tools of a registry, bound for one agent process.

    ``async with McpTools(registry, source=path) as implementations:`` gives
    ``{tool name: implementation}`` for :class:`~trustbus.agents.Toolbox`;
    leaving closes every session. With ``source``, a refused tool is looked
    up in that file again, so an approval given while the agent runs is
    taken without a restart (if nothing but the ``mcp`` block changed).
    """

    def __init__(self, registry: ToolRegistry, *, source: Path | None = None) -> None:
        """Bind every tool of ``registry`` that has an ``mcp`` block; nothing is opened yet."""
        self._source = source
        self._sessions = {name: ServerSession(server) for name, server in registry.mcp_servers.items()}
        self.implementations: dict[str, ToolImplementation] = {
            tool.name: self._implementation(tool) for tool in registry if tool.mcp is not None
        }

    async def __aenter__(self) -> Mapping[str, ToolImplementation]:
        return self.implementations

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every open session (stdio servers exit with it)."""
        for session in self._sessions.values():
            await session.aclose()

    def _implementation(self, tool: Tool) -> ToolImplementation:
        async def call(args: dict[str, Any], /, *, idempotency_key: str) -> Any:
            return await self._call(tool, args, idempotency_key=idempotency_key)

        return call

    async def _call(self, tool: Tool, args: dict[str, Any], *, idempotency_key: str) -> Any:
        """Call the MCP tool with ``args``; its structured result, else its content blocks as JSON.

        Raises:
            EffectDenied: the server's tool is not the approved one (reason ``mcp_tool_changed``); not called.
            McpToolError: the tool reported an error.
            TransientError: the server cannot be reached or was lost (the delivery is retried).
        """
        assert tool.mcp is not None
        name = tool.name
        session = self._sessions[tool.mcp.server]
        client, listing = await session.listing()
        problem = self._refusal(tool, listing.get(tool.mcp.tool))
        if problem is not None:
            registry = self._source or "<registry>"
            approve = f"trustbus tools import-mcp --server {tool.mcp.server} --file {registry} --approve {name}"
            why = f"{problem}; approve it with `{approve}`"
            raise EffectDenied.refusing(reason=CHANGED, tool=name, idempotency_key=idempotency_key, why=why)
        result = await session.call(client, tool.mcp.tool, args, key=idempotency_key)
        content = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
        if result.is_error:
            text = " ".join(block.get("text", "") for block in content).strip()
            raise McpToolError(f"{tool.mcp.server}/{tool.mcp.tool}: {text or 'the tool reported an error'}")
        return result.structured_content if result.structured_content is not None else content

    def _refusal(self, tool: Tool, now: Offered | None) -> str | None:
        """Why a call of ``tool`` is refused given what the server offers ``now``; None if it is not."""
        assert tool.mcp is not None
        if now is None:
            return f"MCP server {tool.mcp.server} no longer offers {tool.mcp.tool!r}"
        changed = now.differs_from(tool.mcp.model_dump())
        if not changed:
            return None
        approved = self._approved_since(tool)
        if approved is not None and not now.differs_from(approved.model_dump()):
            return None
        registered = tool.mcp.fingerprint[:12]
        return (
            f"{tool.mcp.server}/{tool.mcp.tool} changed since it was approved ({', '.join(changed)}; "
            f"fingerprint {registered}... approved, {now.fingerprint[:12]}... offered)"
        )

    def _approved_since(self, tool: Tool) -> McpBinding | None:
        """The ``mcp`` block the source file has now for ``tool``, if the rest of its entry is unchanged."""
        if self._source is None:
            return None
        try:
            now = load_tools(self._source)
        except ToolRegistryError:
            return None
        if tool.name not in now:
            return None
        entry = now.get(tool.name)
        same = entry.model_copy(update={"mcp": tool.mcp}) == tool
        return entry.mcp if same else None


async def import_server(file: Path, options: ImportOptions) -> tuple[Imported, list[str]]:
    """List the server's tools into the registry ``file`` (YAML; made if missing) and write it.

    Returns the import and the problems the operator still has to fix (an owner
    not given): the file is written with them, and agents refuse it until they are.

    Raises:
        ImportRefused: the options do not fit the file, or the merged registry is invalid
            for another reason (nothing is written).
        TransientError: the server cannot be reached.
    """
    if file.suffix.lower() not in (".yaml", ".yml"):
        raise ImportRefused(f"{file}: import-mcp writes YAML registries (.yaml, .yml); convert {file.suffix} first")
    document = await asyncio.to_thread(_read_document, file)
    server = _server_of(document, options, file)
    listed = await read_listing(server)
    imported = merge(document, listed, options)
    left = _problems(imported, source=str(file))
    unowned = {f"{file}: tools.{index}.owner:" for index in imported.unowned}
    blocking = [problem for problem in left if not any(problem.startswith(prefix) for prefix in unowned)]
    if blocking:
        raise ImportRefused("the registry would be invalid; nothing written:\n  " + "\n  ".join(blocking))
    text = yaml.safe_dump(imported.document, sort_keys=False, allow_unicode=True)
    await asyncio.to_thread(file.write_text, text)
    return imported, left


def _read_document(file: Path) -> dict[str, Any]:
    """The registry as written (empty if there is none yet), not validated: an entry may be unfinished."""
    try:
        document = (yaml.safe_load(file.read_text()) if file.exists() else None) or {}
    except yaml.YAMLError as exc:
        raise ImportRefused(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ImportRefused(f"{file}: not a tool registry (a mapping with a tools list)")
    for field in ("mcp_servers", "tools"):
        entries = document.get(field) or []
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ImportRefused(f"{file}: {field}: not a list of mappings; fix it first (`trustbus tools -f {file}`)")
    return document


def _server_of(document: Mapping[str, Any], options: ImportOptions, file: Path) -> McpServer:
    """The server to list: as given on the command line, else as the registry lists it."""
    given = {key: value for key, value in options.server.items() if value is not None}
    source = "command line"
    if "command" not in given and "url" not in given:
        listed = [entry for entry in document.get("mcp_servers") or [] if entry.get("name") == given["name"]]
        if not listed:
            raise ImportRefused(f"server {given['name']!r} is not in {file}: give its --command or --url")
        given, source = dict(listed[0]), str(file)
    try:
        return parse_tools({"mcp_servers": [given]}, source=source).mcp_servers[given["name"]]
    except ToolRegistryError as exc:
        raise ImportRefused(str(exc)) from None


def _problems(imported: Imported, *, source: str) -> list[str]:
    try:
        parse_tools(imported.document, source=source)
    except ToolRegistryError as exc:
        return [line.strip() for line in str(exc).splitlines()[1:]]
    return []
