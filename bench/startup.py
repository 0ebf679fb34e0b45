"""Startup benchmark: how long ``trustbus --help`` and ``trustbus <command> --help`` take, and what they import.

Run: ``python bench/startup.py [--runs 10] [--json]``.

Measured, each in a fresh interpreter (``python -m trustbus ...``, this
interpreter, the working directory a temp dir), after compiling the trustbus
package's bytecode as an install does (with ``PYTHONDONTWRITEBYTECODE`` set,
every run would otherwise compile the CLI's modules again):

1. **wall**: the wall time of ``trustbus --help`` and of ``--help`` of every
   command and command group (``keys new``, ``ledger verify``, ...), best of
   ``--runs`` interleaved runs each (the best run is the one least disturbed by
   other load on the machine). ``help_s`` is the root's, ``command_help_max_s``
   the slowest command's, each also as a multiple of ``python -c pass``
   (``python_s``: the interpreter's own start). Beside them, for scale:
   ``python -c "import click"`` (``click_s``) and ``python -c "import typer"``
   (``typer_s``: the floor of any typer command line, help formatting not
   included).
2. **imports**: ``python -X importtime -m trustbus ... --help`` of the root and
   of the slowest command: the sum of every module's own import time
   (``import_ms``, ``command_import_ms``), the slowest command's heaviest
   top-level imports, and whether nats-py, DuckDB, PyNaCl, rich or pydantic
   were imported at all (``heavy_loaded``; tests/unit/test_structure.py
   asserts it stays empty for every command).

Target: ``help_s`` and ``command_help_max_s`` < 0.12 s. With ``--json`` the
last line of stdout is one JSON object with every figure; the table then goes
to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (where ledger.py would shadow the ledger package): use the root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import compileall
import subprocess
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench._harness import run_bench, verdict

TARGET_S = 0.12
HEAVY = ("nats", "duckdb", "nacl", "rich", "pydantic")
TOP_IMPORTS = 8
BASELINES = {"python": "pass", "click": "import click", "typer": "import typer"}


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


def compile_package() -> None:
    """Write the trustbus package's bytecode, as ``pip install`` does."""
    import trustbus

    compileall.compile_dir(Path(trustbus.__file__).parent, quiet=1)


def wall_times(paths: list[list[str]], runs: int, cwd: str) -> dict[str, float]:
    """Best-of-``runs`` seconds of each path's ``--help`` (keyed by the path joined), and of the baselines."""
    programs = {name: ["-c", code] for name, code in BASELINES.items()}
    programs |= {" ".join(path): ["-m", "trustbus", *path, "--help"] for path in paths}
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(runs):
        for key, argv in programs.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
            best[key] = min(best[key], time.perf_counter() - started)
    return best


def import_profile(path: list[str], cwd: str) -> tuple[float, dict[str, float], set[str]]:
    """``-X importtime`` of ``trustbus <path> --help``: total self ms, the heaviest top-level imports, heavy modules."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trustbus", *path, "--help"],
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
    heavy = {n.split(".")[0] for n in names} & set(HEAVY)
    return round(total_us / 1000, 1), {name: round(us / 1000, 1) for us, name in top[:TOP_IMPORTS]}, heavy


def measure(args: argparse.Namespace, stderr: Console) -> dict[str, Any]:
    compile_package()
    paths = commands()
    with tempfile.TemporaryDirectory(prefix="trustbus-startup-") as cwd:
        with stderr.status(f"{len(paths)} commands x {args.runs} runs"):
            helps = wall_times(paths, args.runs, cwd)
        baselines = {name: helps.pop(name) for name in BASELINES}
        slowest = max((key for key in helps if key), key=helps.__getitem__)
        import_ms, _, root_heavy = import_profile([], cwd)
        command_import_ms, top, command_heavy = import_profile(slowest.split(), cwd)
    python_s = baselines["python"]
    return {
        "python_s": round(python_s, 3),
        "click_s": round(baselines["click"], 3),
        "typer_s": round(baselines["typer"], 3),
        "help_s": round(helps[""], 3),
        "help_x_python": round(helps[""] / python_s, 1),
        "command_help_max_s": round(helps[slowest], 3),
        "command_help_max_x_python": round(helps[slowest] / python_s, 1),
        "command_help_max": slowest,
        "commands": len(paths),
        "runs": args.runs,
        "import_ms": import_ms,
        "command_import_ms": command_import_ms,
        "top_imports_ms": top,
        "heavy_loaded": sorted(root_heavy | command_heavy),
        "target_s": TARGET_S,
        "help_pass": helps[""] < TARGET_S,
        "command_help_pass": helps[slowest] < TARGET_S,
    }


def report_table(r: dict[str, Any]) -> Table:
    table = Table(
        title=f"trustbus --help: {r['commands']} commands, best of {r['runs']} runs",
        caption=f"heaviest imports of {r['command_help_max']} --help (cumulative ms): {r['top_imports_ms']}",
    )
    for column in ("figure", "s", "x python -c pass", "target"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row("python -c pass", f"{r['python_s']:.3f}", "1.0", "")
    table.add_row('python -c "import click"', f"{r['click_s']:.3f}", f"{r['click_s'] / r['python_s']:.1f}", "")
    table.add_row('python -c "import typer"', f"{r['typer_s']:.3f}", f"{r['typer_s'] / r['python_s']:.1f}", "")
    table.add_row(
        "trustbus --help",
        f"{r['help_s']:.3f}",
        f"{r['help_x_python']:.1f}",
        f"< {TARGET_S} {verdict(r['help_pass'])}",
    )
    table.add_row(
        f"slowest: trustbus {r['command_help_max']} --help",
        f"{r['command_help_max_s']:.3f}",
        f"{r['command_help_max_x_python']:.1f}",
        f"< {TARGET_S} {verdict(r['command_help_pass'])}",
    )
    table.add_row("own import time, --help (ms)", f"{r['import_ms']}", "", "")
    table.add_row(f"own import time, {r['command_help_max']} --help (ms)", f"{r['command_import_ms']}", "", "")
    table.add_row("heavy modules loaded", str(r["heavy_loaded"]), "", f"[] {verdict(not r['heavy_loaded'])}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (the best counts)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    run_bench(measure, report_table, args)


if __name__ == "__main__":
    main()
