"""Startup benchmark: how long ``trustbus --help`` and ``trustbus <command> --help`` take, and what they import.

Run: ``python bench/startup.py [--runs 10] [--json]``.

Measured, each in a fresh interpreter (``python -m trustbus ...``, this
interpreter, the working directory a temp dir):

1. **wall**: the wall time of ``trustbus --help`` and of ``--help`` of every
   command and command group (``keys new``, ``ledger verify``, ...), best of
   ``--runs`` interleaved runs each (the best run is the one least disturbed by
   other load on the machine). ``help_s`` is the root's, ``command_help_max_s``
   the slowest command's. For scale, the same of ``python -c pass``
   (``python_s``: the interpreter's own start) and of ``--help`` of a command of
   an empty typer app with one option on its root (``typer_floor_s``: what
   typer's rich help costs with nothing of trustbus loaded, pydantic included,
   which typer loads to parse the root's options).
2. **imports**: ``python -X importtime -m trustbus --help``: the sum of every
   module's own import time (``import_ms``), the heaviest top-level imports,
   and whether nats-py, DuckDB or PyNaCl were imported at all
   (``heavy_loaded``; tests/unit/test_structure.py asserts it stays empty).

Target: ``help_s`` and ``command_help_max_s`` < 0.12 s. With ``--json`` the
last line of stdout is one JSON object with every figure; the human tables then
go to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_S = 0.12
HEAVY = ("nats", "duckdb", "nacl")
TOP_IMPORTS = 8
TYPER_FLOOR = """
import typer

app = typer.Typer()

@app.callback()
def main(level: str = "warning") -> None:
    pass

@app.command()
def command(name: str = "x") -> None:
    pass

app(["command", "--help"])
"""


def commands() -> list[list[str]]:
    """Every command path of the ``trustbus`` app, the root (``[]``) first."""
    import typer.main

    from trustbus.cli import app

    def walk(command: Any, prefix: list[str]) -> list[list[str]]:
        found = [prefix]
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found += walk(sub, [*prefix, name])
        return found

    return walk(typer.main.get_command(app), [])


def wall_times(paths: list[list[str]], runs: int, cwd: str) -> dict[str, float]:
    """Best-of-``runs`` seconds of each path's ``--help`` (keyed by the path joined), and of the two references."""
    programs = {"python": ["-c", "pass"], "typer": ["-c", TYPER_FLOOR]}
    programs |= {" ".join(path): ["-m", "trustbus", *path, "--help"] for path in paths}
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(runs):
        for key, argv in programs.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
            best[key] = min(best[key], time.perf_counter() - started)
    return best


def import_profile(cwd: str) -> dict[str, Any]:
    """``-X importtime`` of ``trustbus --help``: total self time, the heaviest top-level imports, heavy modules."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trustbus", "--help"],
        check=True,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    total_us = 0
    top: list[tuple[int, str]] = []
    names: set[str] = set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        total_us += int(own)
        names.add(name.strip())
        if not name.startswith("  "):  # imported by __main__, not by another module
            top.append((int(cumulative), name.strip()))
    top.sort(reverse=True)
    return {
        "import_ms": round(total_us / 1000, 1),
        "top_imports_ms": {name: round(us / 1000, 1) for us, name in top[:TOP_IMPORTS]},
        "heavy_loaded": sorted({n.split(".")[0] for n in names} & set(HEAVY)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (the best counts)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = parser.parse_args()
    stderr = Console(stderr=True)
    paths = commands()
    with tempfile.TemporaryDirectory(prefix="trustbus-startup-") as cwd:
        with stderr.status(f"{len(paths)} commands x {args.runs} runs"):
            helps = wall_times(paths, args.runs, cwd)
        profile = import_profile(cwd)
    python_s, floor_s = helps.pop("python"), helps.pop("typer")
    slowest = max((key for key in helps if key), key=helps.__getitem__)
    result: dict[str, Any] = {
        "python_s": round(python_s, 3),
        "typer_floor_s": round(floor_s, 3),
        "help_s": round(helps[""], 3),
        "command_help_max_s": round(helps[slowest], 3),
        "command_help_max": slowest,
        "commands": len(paths),
        **profile,
    }
    console = stderr if args.json else Console()
    table = Table("figure", "value", "target")
    targets = {"help_s": f"< {TARGET_S}", "command_help_max_s": f"< {TARGET_S}", "heavy_loaded": "[]"}
    for key, value in result.items():
        if key != "top_imports_ms":
            table.add_row(key, str(value), targets.get(key, ""))
    console.print(table)
    imports = Table("imported by trustbus --help", "cumulative ms")
    for name, ms in result["top_imports_ms"].items():
        imports.add_row(name, str(ms))
    console.print(imports)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
