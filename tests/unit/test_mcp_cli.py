"""`trustbus tools` with MCP tools, and `tools import-mcp` refusing what it cannot do (nothing is written)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from trustbus.cli import app

Invoke = Callable[..., Result]
REGISTRY = {
    "mcp_servers": [{"name": "notebook", "command": ["notebook-server"]}],
    "tools": [
        {"name": "local", "system": "s", "owner": "o", "effect_class": "read"},
        {
            "name": "add_note",
            "system": "notebook",
            "owner": "ops",
            "effect_class": "irreversible",
            "mcp": {"server": "notebook", "tool": "add_note", "fingerprint": "0" * 64},
        },
    ],
}


@pytest.fixture
def trustbus() -> Iterator[Invoke]:
    """``trustbus ARGS`` in this process; the trustbus logger its root callback configures is put back after."""
    logger = logging.getLogger("trustbus")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield lambda *args: CliRunner().invoke(app, list(args), prog_name="trustbus", env={"COLUMNS": "200"})
    logger.handlers[:], logger.level, logger.propagate = saved


def test_the_inventory_names_the_server_of_an_mcp_tool(trustbus: Invoke, tmp_path: Path) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text(yaml.safe_dump(REGISTRY))
    local, served = (json.loads(line) for line in trustbus("tools", "-f", str(registry), "--json").output.splitlines())
    assert "mcp" not in local and served["mcp"]["server"] == "notebook" and served["mcp"]["idempotent"] is False
    assert "MCP notebook/add_note" in trustbus("tools", "-f", str(registry)).output


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--command", "x", "--url", "http://h/mcp"], 2, "give --command or --url, not both"),
        (["--command", "x", "--compensate", "add_note"], 2, "--compensate takes TOOL=UNDO"),
        ([], 1, "server 'notebook' is not in"),
        (["--url", "ftp://h"], 1, "mcp_servers.0.url: Value error, 'ftp://h' is not an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:1/mcp"], 1, "MCP server notebook could not be listed"),
    ],
)
def test_import_refuses_what_it_cannot_do(
    trustbus: Invoke, tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    registry = tmp_path / "tools.yaml"
    result = trustbus("tools", "import-mcp", "--server", "notebook", "-f", str(registry), *args)
    assert result.exit_code == code and said in " ".join(result.output.split()), result.output
    assert not registry.exists()


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("tools.toml", "", "import-mcp writes YAML registries"),
        ("tools.yaml", "[1, 2]", "not a tool registry"),
        ("tools.yaml", "tools: [fetch_page]", "tools: not a list of mappings"),
        ("tools.yaml", "tools: [", "is not valid YAML"),
    ],
)
def test_import_refuses_a_file_it_cannot_merge_into(
    trustbus: Invoke, tmp_path: Path, name: str, text: str, said: str
) -> None:
    registry = tmp_path / name
    registry.write_text(text)
    result = trustbus("tools", "import-mcp", "--server", "n", "--command", "x", "-f", str(registry))
    assert result.exit_code == 1 and said in result.output, result.output
    assert registry.read_text() == text
