"""One MCP client session per server for an agent process: opened on first use, reopened after it fails.

The SDK's client is entered and left in one task (its transports hold anyio task
groups), so each session lives in a task of its own that holds it open until
the process stops; calls are made from the handlers' tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, RequestParamsMeta, Tool

from trustbus.adapters._mcp_import import Offered
from trustbus.agents import McpServer
from trustbus.bus import TransientError

log = logging.getLogger("trustbus.agent")

OPEN_TIMEOUT_S = 30.0
LIST_TIMEOUT_S = 30.0
_MAX_PAGES = 100
KEY_META = "dev.trustbus/idempotency-key"
"""The ``_meta`` key of a tool call that carries its idempotency key (a server that honours it acts once)."""

_GONE = (CONNECTION_CLOSED, REQUEST_TIMEOUT)
_LOST = (MCPError, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)
"""What a session that is gone raises (an MCPError only with a code of _GONE; any other is the server's answer)."""
CLOSE_TIMEOUT_S = 5.0


def target(server: McpServer) -> StdioServerParameters | str:
    """What the SDK's ``Client`` connects to: the stdio command, or the streamable HTTP URL."""
    if server.command is not None:
        program, *args = server.command
        return StdioServerParameters(command=program, args=args)
    assert server.url is not None  # the registry's model holds one or the other
    return server.url


def offered(tool: Tool) -> Offered:
    """A listed tool, its annotations resolved with the protocol's defaults."""
    hints = tool.annotations
    return Offered(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        read_only=bool(hints and hints.read_only_hint),
        destructive=hints is None or hints.destructive_hint is None or hints.destructive_hint,
        idempotent=bool(hints and hints.idempotent_hint),
    )


async def list_offered(client: Client) -> dict[str, Offered]:
    """Every tool the server offers now (every page, past any cache), by name."""
    found: dict[str, Offered] = {}
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await asyncio.wait_for(client.list_tools(cursor=cursor, cache_mode="bypass"), LIST_TIMEOUT_S)
        found.update((tool.name, offered(tool)) for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return found


async def read_listing(server: McpServer) -> list[Offered]:
    """Connect once and list the server's tools (``trustbus tools import-mcp``).

    Raises:
        TransientError: the server could not be reached or did not list its tools.
    """
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S + LIST_TIMEOUT_S), Client(target(server), cache=None) as client:
            return list((await list_offered(client)).values())
    except Exception as exc:  # whatever the transport raised: the server is not there to list
        raise TransientError(f"MCP server {server.name} could not be listed: {_cause(exc)}") from exc


class ServerSession:
    """The session of one agent process with one MCP server."""

    def __init__(self, server: McpServer) -> None:
        """Nothing is opened until the first call."""
        self.server = server
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()

    async def listing(self) -> tuple[Client, dict[str, Offered]]:
        """The open client (opened now if need be) and what the server offers at this moment.

        Raises:
            TransientError: the server cannot be reached or does not answer (the delivery is retried).
        """
        async with self._lock:
            if self._client is None:
                await self._open()
            assert self._client is not None
            try:
                return self._client, await list_offered(self._client)
            except (*_LOST, TimeoutError) as exc:
                if isinstance(exc, MCPError) and exc.code not in _GONE:
                    raise
                await self._drop()
                raise TransientError(f"MCP server {self.server.name} did not list its tools: {exc}") from exc

    async def call(self, client: Client, tool: str, arguments: dict[str, Any], *, key: str) -> CallToolResult:
        """Call ``tool``; a lost session is dropped (reopened on the next call) and raised as TransientError."""
        try:
            return await client.session.call_tool(tool, arguments, meta=cast(RequestParamsMeta, {KEY_META: key}))
        except _LOST as exc:
            if isinstance(exc, MCPError) and exc.code not in _GONE:
                raise
            await self._drop()
            raise TransientError(f"MCP server {self.server.name} was lost during a call of {tool}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the session, if open."""
        async with self._lock:
            await self._drop()

    async def _open(self) -> None:
        await self._drop()  # a session that died, or an open cut short (its handler timed out)
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._holder = asyncio.create_task(self._hold(ready), name=f"mcp-{self.server.name}")
        try:
            self._client = await asyncio.wait_for(asyncio.shield(ready), OPEN_TIMEOUT_S)
        except Exception as exc:
            await self._drop()
            raise TransientError(f"MCP server {self.server.name} cannot be reached: {_cause(exc)}") from exc
        log.info("MCP session opened", extra={"server": self.server.name})

    async def _hold(self, ready: asyncio.Future[Client]) -> None:
        try:
            async with Client(target(self.server), cache=None) as client:
                ready.set_result(client)
                await self._closing.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.warning("MCP session ended: %s", _cause(exc), extra={"server": self.server.name})
        finally:
            if self._holder is asyncio.current_task():  # not a newer session's client
                self._client = None

    async def _drop(self) -> None:
        holder, self._holder, self._client = self._holder, None, None
        if holder is None:
            return
        self._closing.set()
        done, _ = await asyncio.wait({holder}, timeout=CLOSE_TIMEOUT_S)
        if not done:  # still connecting, or a server that does not let go
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder


def _cause(exc: BaseException) -> str:
    """The first leaf of an exception group (the SDK's task groups wrap what failed), as text."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
