"""The tool registry: the blast-radius inventory of every tool an agent may call, and an agent's bindings.

Written by people in YAML or TOML (see ``examples/tools.yaml``) and validated
with pydantic, so a mistake names its field: ``file: tools.2.compensating_tool:
...``. Each tool says which system it acts on and who owns it, what class of
effect it has (``read``, ``reversible`` with the tool that undoes it, or
``irreversible``), what taint its results carry (a fetched page is ``web``),
and whether it is high risk. Every effect record carries the class and the
compensating tool, so the ledger can plan a rollback without this file.

A tool may be served by an MCP server: the registry lists the servers
(``mcp_servers``: a stdio command or a streamable HTTP URL) and the tool's
``mcp`` block names its server, its name there and the fingerprint of the
definition an operator approved (``trustbus tools import-mcp`` writes them).
Nothing here speaks MCP: ``trustbus.adapters.mcp`` binds such tools.

A :class:`Toolbox` binds an agent's implementations to registry entries; the
runtime calls them through ``Context.effect``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trustbus.agents._documents import load_document, problem, validation_problems
from trustbus.agents._errors import ToolRegistryError, UnknownTool
from trustbus.bus import LABEL_PATTERN, NAME_PATTERN

EffectClass = Literal["read", "reversible", "irreversible"]

_NAME = re.compile(NAME_PATTERN)
_LABEL = re.compile(LABEL_PATTERN)
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def _is_a_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a {what} name: 1-64 letters, digits, '_' or '-'")
    return value


class McpServer(BaseModel):
    """An MCP server whose tools are in the registry: a command run over stdio, or a streamable HTTP URL.

    Attributes:
        name: how the registry's ``mcp`` blocks name it (letters, digits, ``_``, ``-``).
        command: the program and its arguments, run as a child of each agent process that calls its tools.
        url: the server's streamable HTTP endpoint (``http://`` or ``https://``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    command: Annotated[tuple[str, ...] | None, Field(min_length=1)] = None
    url: Annotated[str | None, Field(validate_default=True)] = None

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, value: str) -> str:
        return _is_a_name(value, "server")

    @field_validator("url")
    @classmethod
    def _one_way_to_reach_it(cls, value: str | None, info: ValidationInfo) -> str | None:
        command = info.data.get("command")
        if (value is None) == (command is None) and "command" in info.data:
            raise ValueError("give either a command (stdio) or a url (streamable HTTP), not both or neither")
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class McpBinding(BaseModel):
    """Where a tool is served: an MCP server of the registry, the tool's name there, what was approved.

    Attributes:
        server: the ``name`` of an entry of ``mcp_servers``.
        tool: the tool's name on that server.
        fingerprint: SHA-256 (hex) of the approved definition: canonical JSON of its name,
            description and input schema. A server that offers anything else is refused.
        read_only, destructive, idempotent: the server's annotations when it was approved
            (``readOnlyHint``, ``destructiveHint``, ``idempotentHint``, with the protocol's defaults);
            a server whose annotations change is refused too, since they chose the effect class.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    fingerprint: str
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint_is_sha256(cls, value: str) -> str:
        if not _FINGERPRINT.fullmatch(value):
            raise ValueError(f"{value!r} is not a fingerprint: 64 lowercase hex digits (SHA-256)")
        return value


class Tool(BaseModel):
    """One tool in the inventory.

    Attributes:
        name: how agents call it (letters, digits, ``_``, ``-``).
        system: the system it acts on (``payments``, ``smtp``, ``web``).
        owner: who answers for it (a team, a person).
        effect_class: ``read`` (changes nothing), ``reversible`` (``compensating_tool`` undoes it)
            or ``irreversible`` (a rollback lists it for a person).
        compensating_tool: for a reversible tool, another tool of the registry that undoes it.
        result_taint: taint labels its results carry (``web``, ``email``, ``llm``): whatever the
            agent sends after using the result carries them too.
        high_risk: whether the coordinator's policy should treat calls as high risk.
        mcp: the MCP server that serves it, if one does (the agent then implements none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    system: Annotated[str, Field(min_length=1)]
    owner: Annotated[str, Field(min_length=1)]
    effect_class: EffectClass
    compensating_tool: Annotated[str | None, Field(validate_default=True)] = None
    result_taint: tuple[str, ...] = ()
    high_risk: bool = False
    mcp: McpBinding | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, value: str) -> str:
        return _is_a_name(value, "tool")

    @field_validator("compensating_tool")
    @classmethod
    def _compensation_fits_the_class(cls, value: str | None, info: ValidationInfo) -> str | None:
        effect_class = info.data.get("effect_class")
        if effect_class == "reversible" and value is None:
            raise ValueError("a reversible tool needs the tool that undoes it")
        if effect_class in ("read", "irreversible") and value is not None:
            raise ValueError(f"only a reversible tool has one (this one is {effect_class})")
        return value

    @field_validator("result_taint")
    @classmethod
    def _labels_are_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for label in value:
            if not _LABEL.fullmatch(label):
                raise ValueError(
                    f"{label!r} is not a taint label: up to 128 letters, digits, '_', ':', '.', '/' or '-', "
                    "starting with a letter or digit"
                )
        return tuple(sorted(set(value)))


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    mcp_servers: list[McpServer] = []
    tools: list[Tool] = []


class ToolRegistry:
    """The validated inventory: names are unique, every compensating tool is a write in it, every MCP server listed."""

    def __init__(
        self, tools: Iterable[Tool], *, source: str = "<tools>", mcp_servers: Iterable[McpServer] = ()
    ) -> None:
        """Check the tools against each other and the servers; ToolRegistryError lists every problem."""
        listed = list(tools)
        servers = list(mcp_servers)
        problems = _cross_check(listed, source) + _check_servers(servers, listed, source)
        if problems:
            raise ToolRegistryError("invalid tool registry:\n  " + "\n  ".join(problems))
        self._tools = {tool.name: tool for tool in listed}
        self.mcp_servers: Mapping[str, McpServer] = MappingProxyType({server.name: server for server in servers})

    def get(self, name: str) -> Tool:
        """The tool called ``name``; UnknownTool if the registry has none."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"tool {name!r} is not in the registry (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def _cross_check(tools: list[Tool], source: str) -> list[str]:
    """What one tool entry cannot check alone: unique names, compensating tools that exist and write."""
    problems: list[str] = []
    by_name: dict[str, Tool] = {}
    for index, tool in enumerate(tools):
        if tool.name in by_name:
            problems.append(problem(source, ("tools", index, "name"), f"tool {tool.name!r} is listed twice"))
        by_name.setdefault(tool.name, tool)
    for index, tool in enumerate(tools):
        where = ("tools", index, "compensating_tool")
        other = by_name.get(tool.compensating_tool or "")
        if tool.compensating_tool is None:
            continue
        if tool.compensating_tool == tool.name:
            problems.append(problem(source, where, "must name another tool, not the tool itself"))
        elif other is None:
            problems.append(problem(source, where, f"{tool.compensating_tool!r} is not a tool in this registry"))
        elif other.effect_class == "read":
            problems.append(problem(source, where, f"{other.name!r} is a read tool: it cannot undo anything"))
    return problems


def _check_servers(servers: list[McpServer], tools: list[Tool], source: str) -> list[str]:
    """MCP server names are unique, and every tool's ``mcp.server`` is one of them."""
    problems: list[str] = []
    names: set[str] = set()
    for index, server in enumerate(servers):
        if server.name in names:
            problems.append(problem(source, ("mcp_servers", index, "name"), f"server {server.name!r} is listed twice"))
        names.add(server.name)
    for index, tool in enumerate(tools):
        if tool.mcp is not None and tool.mcp.server not in names:
            listed = ", ".join(sorted(names)) or "none"
            message = f"{tool.mcp.server!r} is not in mcp_servers (listed: {listed})"
            problems.append(problem(source, ("tools", index, "mcp", "server"), message))
    return problems


def parse_tools(data: Any, *, source: str = "<tools>") -> ToolRegistry:
    """Validate already-parsed data; a ToolRegistryError lists every problem as ``source: field.path: message``."""
    try:
        document = _RegistryFile.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, source=source)
        raise ToolRegistryError("invalid tool registry:\n  " + "\n  ".join(problems)) from None
    return ToolRegistry(document.tools, source=source, mcp_servers=document.mcp_servers)


def load_tools(path: str | Path) -> ToolRegistry:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) tool registry file."""
    data = load_document(path, what="tool registry", error=ToolRegistryError)
    return parse_tools(data, source=str(path))


class ToolImplementation(Protocol):
    """An async callable that performs a tool: ``await tool(args, idempotency_key=key)`` -> JSON-able result.

    The key is the same on every attempt of the same call: a tool that passes
    it to the system it acts on (which drops a repeat) makes the effect happen
    exactly once even if the agent dies mid-call.
    """

    def __call__(self, args: dict[str, Any], /, *, idempotency_key: str) -> Awaitable[Any]:
        """Perform the call."""
        ...


class Toolbox:
    """An agent's implementations, each bound to a registry entry by name."""

    def __init__(self, registry: ToolRegistry, implementations: Mapping[str, ToolImplementation]) -> None:
        """Bind; UnknownTool if an implementation names a tool the registry does not list."""
        for name in implementations:
            registry.get(name)
        self.registry = registry
        self._implementations = dict(implementations)

    def bound(self, name: str) -> tuple[Tool, ToolImplementation]:
        """The registry entry of ``name`` and its implementation; UnknownTool if either is missing."""
        tool = self.registry.get(name)
        try:
            return tool, self._implementations[name]
        except KeyError:
            raise UnknownTool(f"tool {name!r} is in the registry but this agent has no implementation of it") from None
