"""``trustbus --help`` and ``trustbus <command> --help``: complete, plain, and the same by either path.

``trustbus NAME ... --help`` goes straight to the command, past the root's
options (``CommandGroup`` in trustbus/_cli_common.py); its text must be the one
the ordinary path prints. How long help takes is bench/startup.py's; what it
loads, tests/unit/test_structure.py's.
"""

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from trustbus.cli import app


def _commands(command: Any, prefix: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield prefix, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*prefix, name])


EVERY = {" ".join(path): (path, command) for path, command in _commands(typer.main.get_command(app), [])}
PATHS = [path for path, _ in EVERY.values() if path]
GROUPS = [path for path, command in EVERY.values() if hasattr(command, "commands")]


@pytest.fixture
def runner() -> Iterator[CliRunner]:
    """A runner; the root's callback configures the trustbus logger, which is put back afterwards."""
    logger = logging.getLogger("trustbus")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield CliRunner()
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_command_help_is_the_text_the_ordinary_path_prints(runner: CliRunner, path: list[str]) -> None:
    direct = runner.invoke(app, [*path, "--help"], prog_name="trustbus")
    ordinary = runner.invoke(app, ["--log-level", "warning", *path, "--help"], prog_name="trustbus")
    assert direct.exit_code == ordinary.exit_code == 0, direct.output
    assert direct.output == ordinary.output
    assert direct.output.startswith(f"Usage: trustbus {' '.join(path)} [OPTIONS]")


@pytest.mark.parametrize("path", GROUPS, ids=lambda path: " ".join(path) or "(root)")
def test_a_group_lists_each_command_with_its_whole_summary(runner: CliRunner, path: list[str]) -> None:
    # Compared without whitespace: the wrapping may break a line at a hyphen.
    listed = "".join(runner.invoke(app, [*path, "--help"], prog_name="trustbus").output.split())
    for name, command in EVERY[" ".join(path)][1].commands.items():
        assert name + "".join(command.help.split("\n\n")[0].split()) in listed


def test_bad_usage_names_the_mistake_and_the_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["keys", "new", "--bogus"], prog_name="trustbus")
    assert result.exit_code == 2
    assert "Usage: trustbus keys new [OPTIONS]" in result.output
    assert "Try 'trustbus keys new --help' for help." in result.output
    assert "Error: No such option: --bogus" in result.output
    misspelt = runner.invoke(app, ["ledgr", "verify", "--help"], prog_name="trustbus")
    assert misspelt.exit_code == 2 and "No such command 'ledgr'. Did you mean 'ledger'?" in misspelt.output
