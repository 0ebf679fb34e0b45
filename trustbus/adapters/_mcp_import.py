"""What ``trustbus tools import-mcp`` writes: a registry document merged with the tools a server offers.

Pure: the listing is already read and the document already parsed. The
operator's fields of an entry (system, owner, class, compensation, taint,
risk) are kept on every re-import; what the server says (its fingerprint and
annotations) replaces the approved one only when the operator approves it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trustbus.agents import ToolRegistryError
from trustbus.bus import NAME_PATTERN

_NAME = re.compile(NAME_PATTERN)
_STRICTNESS = ("read", "reversible", "irreversible")
_HINTS = {
    "read_only": (False, "readOnlyHint"),
    "destructive": (True, "destructiveHint"),
    "idempotent": (False, "idempotentHint"),
}
"""Each annotation the registry records: the protocol's default, and its name on the wire."""

Status = Literal["added", "unchanged", "changed", "approved", "missing", "conflict", "skipped"]


def fingerprint(name: str, description: str | None, input_schema: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON ``[name, description, input_schema]`` (keys sorted, no spaces)."""
    canonical = json.dumps([name, description, input_schema], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Offered:
    """A tool as an MCP server lists it, with the protocol's defaults for annotations it leaves out."""

    name: str
    description: str | None
    input_schema: Mapping[str, Any]
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False

    @property
    def fingerprint(self) -> str:
        """:func:`fingerprint` of its name, description and input schema."""
        return fingerprint(self.name, self.description, self.input_schema)

    def binding(self, server: str) -> dict[str, Any]:
        """The registry's ``mcp`` block that approves this definition."""
        return {
            "server": server,
            "tool": self.name,
            "fingerprint": self.fingerprint,
            "read_only": self.read_only,
            "destructive": self.destructive,
            "idempotent": self.idempotent,
        }

    def differs_from(self, binding: Mapping[str, Any]) -> list[str]:
        """What changed since ``binding`` was approved: ``definition`` and the annotations, by name."""
        changed = ["definition"] if binding.get("fingerprint") != self.fingerprint else []
        for hint, (default, called) in _HINTS.items():
            if binding.get(hint, default) != getattr(self, hint):
                changed.append(called)
        return changed


def effect_class_of(offered: Offered, compensation: str | None) -> str:
    """``read`` if the server says read-only; a write is ``reversible`` only with the operator's compensation."""
    if offered.read_only:
        return "read"
    return "reversible" if compensation else "irreversible"


@dataclass(frozen=True)
class ImportOptions:
    """What the operator said on the command line.

    Attributes:
        server: the server's registry entry (``name`` and ``command`` or ``url``); only ``name``
            if the registry lists it already.
        owner: the owner of new entries (None: left for the operator).
        system: the system of new entries (default: the server's name).
        prefix: put before each tool's name to make its registry name.
        approve: registry or server names of tools whose new definition the operator approves.
        compensate: registry name -> the tool that undoes it (makes it reversible).
    """

    server: Mapping[str, Any]
    owner: str | None = None
    system: str | None = None
    prefix: str = ""
    approve: Collection[str] = ()
    compensate: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One tool of the import's report."""

    name: str
    tool: str
    status: Status
    effect_class: str | None = None
    high_risk: bool | None = None
    idempotent: bool | None = None
    fingerprint: str | None = None
    note: str = ""


class ImportRefused(ToolRegistryError):
    """The command cannot be carried out as given (an unknown server without a command, an unknown --approve)."""


@dataclass
class Imported:
    """The merged document, the report, and the entries left for the operator to finish."""

    document: dict[str, Any]
    rows: list[Row]
    unowned: list[int]


def merge(document: Mapping[str, Any], offered: list[Offered], options: ImportOptions) -> Imported:
    """``document`` with the server's entry and the tools it offers written in; see the module's docstring."""
    tools: list[dict[str, Any]] = [dict(entry) for entry in document.get("tools") or []]
    doc = {"version": 1, "mcp_servers": [], **dict(document), "tools": tools}
    server = _merge_server(doc, options.server)
    wanted = set(options.approve)
    rows: list[Row] = []
    unowned: list[int] = []
    for tool in offered:
        index = _bound_to(tools, server, tool.name)
        name = options.prefix + tool.name if index is None else str(tools[index]["name"])
        approved = bool(wanted & {name, tool.name})
        wanted -= {name, tool.name}
        if index is None:
            if not _NAME.fullmatch(name):
                rows.append(Row(name, tool.name, "skipped", note="not a registry name: letters, digits, '_' or '-'"))
            elif any(entry.get("name") == name for entry in tools):
                rows.append(Row(name, tool.name, "conflict", note="the registry has another tool of this name"))
            else:
                entry = _new_entry(name, tool, server, options)
                if "owner" not in entry:
                    unowned.append(len(tools))
                tools.append(entry)
                rows.append(_row(entry, tool, "added"))
            continue
        entry = tools[index]
        binding = entry["mcp"]
        if "owner" not in entry:
            if options.owner is None:
                unowned.append(index)
            else:
                entry["owner"] = options.owner
        _compensate(entry, options.compensate.get(name))
        changed = tool.differs_from(binding)
        if not changed:
            rows.append(_row(entry, tool, "unchanged"))
        elif approved:
            entry["mcp"] = tool.binding(server)
            _at_least(entry, effect_class_of(tool, entry.get("compensating_tool")))
            rows.append(_row(entry, tool, "approved", note=f"{', '.join(changed)} changed; approved"))
        else:
            note = f"{', '.join(changed)} changed: calls are refused until approved (--approve {name})"
            rows.append(_row(entry, tool, "changed", note=note))
    listed = {tool.name for tool in offered}
    for entry in tools:
        binding = entry.get("mcp") or {}
        if binding.get("server") == server and binding.get("tool") not in listed:
            note = "the server no longer offers it: calls are refused"
            rows.append(Row(str(entry.get("name")), str(binding.get("tool")), "missing", note=note))
    if wanted:
        raise ImportRefused(f"--approve {', '.join(sorted(wanted))}: server {server!r} offers no such tool")
    return Imported(doc, rows, unowned)


def _bound_to(tools: list[dict[str, Any]], server: str, tool: str) -> int | None:
    """The index of the entry the server's ``tool`` is bound to, whatever the operator named it."""
    for index, entry in enumerate(tools):
        binding = entry.get("mcp")
        if isinstance(binding, dict) and binding.get("server") == server and binding.get("tool") == tool:
            return index
    return None


def _merge_server(doc: dict[str, Any], given: Mapping[str, Any]) -> str:
    """Add or update the server's entry in ``mcp_servers``; its name."""
    servers: list[dict[str, Any]] = [dict(entry) for entry in doc["mcp_servers"] or []]
    doc["mcp_servers"] = servers
    name = str(given["name"])
    reach = {key: given[key] for key in ("command", "url") if given.get(key) is not None}
    current = next((entry for entry in servers if entry.get("name") == name), None)
    if current is None:
        if not reach:
            raise ImportRefused(f"server {name!r} is not in the registry yet: give its --command or --url")
        servers.append({"name": name, **reach})
    elif reach:
        current.pop("command", None)
        current.pop("url", None)
        current.update(reach)
    return name


def _new_entry(name: str, tool: Offered, server: str, options: ImportOptions) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "system": options.system or server}
    if options.owner is not None:
        entry["owner"] = options.owner
    compensation = options.compensate.get(name)
    entry["effect_class"] = effect_class_of(tool, compensation)
    if entry["effect_class"] == "reversible":
        entry["compensating_tool"] = compensation
    entry["high_risk"] = not tool.read_only  # a write of unknown weight is held when tainted, until the operator says
    entry["mcp"] = tool.binding(server)
    return entry


def _compensate(entry: dict[str, Any], compensation: str | None) -> None:
    """The operator named the tool that undoes this one: it becomes reversible (a read stays a read)."""
    if compensation is not None and entry.get("effect_class") != "read":
        entry["effect_class"] = "reversible"
        entry["compensating_tool"] = compensation


def _at_least(entry: dict[str, Any], effect_class: str) -> None:
    """Raise the entry's class to ``effect_class`` if that is stricter; the operator's stricter class stays."""
    current = entry.get("effect_class")
    if current in _STRICTNESS and _STRICTNESS.index(current) >= _STRICTNESS.index(effect_class):
        return
    entry["effect_class"] = effect_class
    if effect_class != "reversible":
        entry.pop("compensating_tool", None)


def _row(entry: Mapping[str, Any], tool: Offered, status: Status, *, note: str = "") -> Row:
    return Row(
        name=str(entry["name"]),
        tool=tool.name,
        status=status,
        effect_class=entry.get("effect_class"),
        high_risk=entry.get("high_risk"),
        idempotent=tool.idempotent,
        fingerprint=tool.fingerprint,
        note=note,
    )
