"""The tool registry: the blast-radius inventory of every tool an agent may call, and an agent's bindings.

Written by people in YAML or TOML (see ``examples/tools.yaml``) and validated
with pydantic, so a mistake names its field: ``file: tools.2.compensating_tool:
...``. Each tool says which system it acts on and who owns it, what class of
effect it has (``read``, ``reversible`` with the tool that undoes it, or
``irreversible``), what taint its results carry (a fetched page is ``web``),
and whether it is high risk. Every effect record carries the class and the
compensating tool, so the ledger can plan a rollback without this file.

A :class:`Toolbox` binds an agent's implementations to registry entries; the
runtime calls them through ``Context.effect``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trustbus.agents._documents import load_document, problem, validation_problems
from trustbus.agents._errors import ToolRegistryError, UnknownTool
from trustbus.bus import LABEL_PATTERN, NAME_PATTERN

EffectClass = Literal["read", "reversible", "irreversible"]

_NAME = re.compile(NAME_PATTERN)
_LABEL = re.compile(LABEL_PATTERN)


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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    system: Annotated[str, Field(min_length=1)]
    owner: Annotated[str, Field(min_length=1)]
    effect_class: EffectClass
    compensating_tool: Annotated[str | None, Field(validate_default=True)] = None
    result_taint: tuple[str, ...] = ()
    high_risk: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a tool name: 1-64 letters, digits, '_' or '-'")
        return value

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
    tools: list[Tool] = []


class ToolRegistry:
    """The validated inventory: tool names are unique and every compensating tool is a write in it."""

    def __init__(self, tools: Iterable[Tool], *, source: str = "<tools>") -> None:
        """Check the tools against each other; ToolRegistryError lists every problem."""
        listed = list(tools)
        problems = _cross_check(listed, source)
        if problems:
            raise ToolRegistryError("invalid tool registry:\n  " + "\n  ".join(problems))
        self._tools = {tool.name: tool for tool in listed}

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


def parse_tools(data: Any, *, source: str = "<tools>") -> ToolRegistry:
    """Validate already-parsed data; a ToolRegistryError lists every problem as ``source: field.path: message``."""
    try:
        document = _RegistryFile.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, source=source)
        raise ToolRegistryError("invalid tool registry:\n  " + "\n  ".join(problems)) from None
    return ToolRegistry(document.tools, source=source)


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
