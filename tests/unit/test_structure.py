"""The layering holds: what each part may import, and what importing it costs.

Imports are read statically (``ast``, every import in a file, function bodies
included); what a module loads at run time is checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("bus", "agents", "ledger")
CLI = ROOT / "trustbus"

PURE = (
    "trustbus.agents._decision",
    "trustbus.bus._envelope",
    "trustbus.bus._seal",
    "trustbus.ledger._chain",
    "trustbus.ledger._proof_checking",
    "trustbus.ledger._proof_making",
    "trustbus.ledger._projection",
    "trustbus.ledger._projector",
    "trustbus.ledger._rollback",
)
"""Decision, wire and ledger logic: no I/O, so neither nats-py nor DuckDB is loaded with them."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


def _cli_files() -> list[Path]:
    """The command's own modules: trustbus/ without the library packages linked into it."""
    return [p for p in _files(CLI) if p.relative_to(CLI).parts[0] not in LIBRARY]


def _package(path: Path) -> str:
    """The dotted package a file belongs to (for relative imports)."""
    if path.is_relative_to(CLI):
        parts = path.relative_to(ROOT).parent.parts
    else:
        parts = ("trustbus", *path.relative_to(ROOT).parent.parts)
    return ".".join(parts)


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``; ``from a import b`` gives ``a.b`` and ``a``."""
    package = _package(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _is_cli(module: str) -> bool:
    """Whether ``module`` is part of the command (trustbus.cli, trustbus._*_cli, the demo, ...)."""
    parts = module.split(".")
    return parts[0] == "trustbus" and len(parts) > 1 and parts[1] not in LIBRARY


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_without_nats_or_duckdb(module: str) -> None:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); "
    code += "print(json.dumps([m for m in ('nats', 'duckdb') if m in sys.modules]))"
    assert json.loads(_run_python(code)) == [], f"{module} loads them"


def test_the_library_never_imports_the_command() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for package in LIBRARY
        for path in _files(ROOT / package)
        for line, module in imported(path)
        if _is_cli(module)
    ]
    assert found == []


def test_command_modules_import_the_shared_leaf_not_the_root() -> None:
    """Only the entry point imports trustbus.cli; the other CLI modules share trustbus._cli_common."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _cli_files()
        if path.name != "__main__.py"
        for line, module in imported(path)
        if module == "trustbus.cli" or module.startswith("trustbus.cli.")
    ]
    assert found == []
    leaf = CLI / "_cli_common.py"
    assert [m for _, m in imported(leaf) if _is_cli(m)] == [], "the leaf imports no other CLI module"


def test_the_command_speaks_nats_only_through_the_bus() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _cli_files()
        for line, module in imported(path)
        if module == "nats" or module.startswith("nats.")
    ]
    assert found == []


HELP_CHECK = """
import json, sys
import typer.main
from trustbus.cli import app

HEAVY = ("nats", "duckdb", "nacl", "rich", "pydantic", "starlette", "uvicorn", "pydantic_ai")

def paths(command, prefix):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, [*prefix, name])

loaded = {}
for path in paths(typer.main.get_command(app), []):
    try:
        app([*path, "--help"], prog_name="trustbus")
    except SystemExit:
        pass
    now = [m for m in HEAVY if m in sys.modules]
    if now:
        loaded[" ".join(path) or "(root)"] = now
        break
print(json.dumps({"loaded": loaded, "commands": sum(1 for _ in paths(typer.main.get_command(app), []))}))
"""


def test_help_loads_neither_the_library_nor_rich_nor_pydantic() -> None:
    """``trustbus --help`` and every ``trustbus <command> --help`` load no nats, duckdb, nacl, rich or pydantic.

    Nor the console's web server (``trustbus console --help`` included).

    Its timing is bench/startup.py's.
    """
    result = json.loads(_run_python(HELP_CHECK))
    assert result["loaded"] == {}
    assert result["commands"] > 20


def test_command_annotations_are_evaluated_once_at_import() -> None:
    """Typer reads every command's signature on each start; string annotations would be compiled there each time."""
    import __future__

    import typer.main

    from trustbus.cli import app

    def callbacks(command: Any) -> Iterator[Any]:
        if command.callback is not None:
            yield command.callback
        for sub in getattr(command, "commands", {}).values():
            yield from callbacks(sub)

    modules = {callback.__module__ for callback in callbacks(typer.main.get_command(app))}
    assert "trustbus._ledger_cli" in modules
    stringified = sorted(m for m in modules if getattr(sys.modules[m], "annotations", None) is __future__.annotations)
    assert stringified == []


@pytest.mark.parametrize("package", LIBRARY)
def test_lazy_namespace_lists_each_public_name_once_everywhere(package: str) -> None:
    """``__all__``, the imports the type checker reads, and the table __getattr__ imports from, agree."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    exported: list[str] = []
    typed: dict[str, str] = {}
    origins: dict[str, str] = {}
    eager: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "__all__":
                exported = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_ORIGINS":
            assert node.value is not None
            origins = ast.literal_eval(node.value)
        elif isinstance(node, ast.ImportFrom):
            eager |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                typed |= {alias.asname or alias.name: imp.module for alias in imp.names}
    eager -= {"annotations", "TYPE_CHECKING"} | ({"lazy_names"} if package != "bus" else set())
    assert len(exported) == len(set(exported))
    assert sorted(exported) == sorted([*typed, *eager])
    assert origins == typed


def _layer_of(path: Path) -> str:
    """``bus``, ``agents``, ``ledger`` or ``cli``: the part of the project a file belongs to."""
    first = path.relative_to(ROOT).parts[0]
    return first if first in LIBRARY else "cli"


def _project_files() -> list[Path]:
    return [*(path for package in LIBRARY for path in _files(ROOT / package)), *_cli_files()]


CONSOLE_ONLY = ("starlette", "uvicorn")
"""The ``console`` extra: only trustbus/console imports them, so the core install runs without them."""


def test_only_the_console_imports_the_console_extra() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _project_files()
        if not path.is_relative_to(CLI / "console")
        for line, module in imported(path)
        if module.split(".")[0] in CONSOLE_ONLY
    ]
    assert found == []
    assert any(m.split(".")[0] == "starlette" for p in _files(CLI / "console") for _, m in imported(p))


FRAMEWORKS = ("pydantic_ai", "agents", "langgraph", "langchain_core")
"""Optional extras: only their adapters (trustbus/adapters/<framework>.py) import them.

``agents`` is the OpenAI Agents SDK's top-level package (trustbus's own is ``trustbus.agents``).
"""
FRAMEWORK_DEMOS = (CLI / "demo" / "pydantic_ai_agents.py",)
"""The demo's agents written with a framework, loaded only by ``trustbus demo --framework``."""


def test_only_the_adapters_import_the_frameworks() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _project_files()
        if not path.is_relative_to(CLI / "adapters") and path not in FRAMEWORK_DEMOS
        for line, module in imported(path)
        if module.partition(".")[0] in FRAMEWORKS
    ]
    assert found == []


def test_the_core_and_the_adapter_lookup_load_no_framework() -> None:
    """The core install runs without the extras: importing it, or the lookup ``agent run`` does, loads none."""
    modules = ("trustbus.bus", "trustbus.agents", "trustbus.ledger", "trustbus.adapters._frameworks", "trustbus.cli")
    code = "import importlib, json, sys; " + "; ".join(f"importlib.import_module({m!r})" for m in modules)
    code += f"; print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    assert json.loads(_run_python(code)) == []


def test_only_the_bus_speaks_nats() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _project_files()
        if _layer_of(path) != "bus"
        for line, module in imported(path)
        if module == "nats" or module.startswith("nats.")
    ]
    assert found == []


def test_no_part_imports_another_parts_private_modules() -> None:
    """agents, ledger and the command use what bus (and each other) export, never their ``_`` modules."""
    found = []
    for path in _project_files():
        for line, module in imported(path):
            parts = module.split(".")
            if len(parts) >= 3 and parts[0] == "trustbus" and parts[1] in LIBRARY and parts[1] != _layer_of(path):
                if parts[2].startswith("_"):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {'.'.join(parts[:3])}")
    assert found == []


def test_bus_imports_neither_agents_nor_ledger() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _files(ROOT / "bus")
        for line, module in imported(path)
        if module.split(".")[:2] in (["trustbus", "agents"], ["trustbus", "ledger"])
    ]
    assert found == []


def test_agents_and_ledger_do_not_import_each_other() -> None:
    """They meet in bus types and over the bus; the command wires them where a feature needs both."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for package, other in (("agents", "ledger"), ("ledger", "agents"))
        for path in _files(ROOT / package)
        for line, module in imported(path)
        if module.split(".")[:2] == ["trustbus", other]
    ]
    assert found == []


MCP_ADAPTER = ("trustbus/adapters/mcp.py", "trustbus/adapters/_mcp_import.py", "trustbus/adapters/_mcp_sessions.py")


def test_only_the_mcp_adapter_imports_the_mcp_sdk() -> None:
    """bus, agents, ledger and the command never import ``mcp`` (an optional extra); the adapter alone does."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _project_files()
        if str(path.relative_to(ROOT)) not in MCP_ADAPTER
        for line, module in imported(path)
        if module.split(".")[0] in ("mcp", "mcp_types")
    ]
    assert found == []
    code = "import sys, trustbus.bus, trustbus.agents, trustbus.ledger, trustbus.cli, trustbus.agents._process; "
    code += "print(json.dumps(sorted(m for m in ('mcp', 'mcp_types', 'trustbus.adapters.mcp') if m in sys.modules)))"
    assert json.loads(_run_python("import json; " + code)) == []


def test_tracing_off_loads_no_opentelemetry() -> None:
    """Every module of the library and the command, imported without OTEL_* set, loads none of the otel extra.

    Not the framework adapters nor the demo's framework agents: they load their framework, which may use
    the OpenTelemetry API itself (pydantic-ai does).
    """
    files = [path for package in LIBRARY for path in _files(ROOT / package)]
    files += [
        path for path in _cli_files() if not path.is_relative_to(CLI / "adapters") and path not in FRAMEWORK_DEMOS
    ]
    modules = [
        ".".join(("trustbus", *path.relative_to(ROOT).with_suffix("").parts[path.is_relative_to(CLI) :]))
        for path in files
        if path.name != "__main__.py"
    ]
    code = f"import importlib, json, sys; [importlib.import_module(m) for m in {modules!r}]; "
    code += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if m.startswith('opentelemetry')})))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
