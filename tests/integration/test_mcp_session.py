"""An agent process's MCP session against a real server (tests/fixtures/mcp_server.py over stdio): results,
errors, and a server that dies between calls."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

from tests.fixtures import mcp_server
from trustbus.adapters.mcp import McpToolError, McpTools
from trustbus.agents import load_tools
from trustbus.bus import TransientError

SERVER = Path(mcp_server.__file__).resolve()


def servers_of_this_process() -> list[int]:
    """The MCP server children of this process (read from /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and str(SERVER).encode() in command:
            found.append(int(pid))
    return found


async def test_a_lost_server_is_a_transient_error_and_the_next_call_opens_a_new_session(tmp_path: Path) -> None:
    registry = tmp_path / "tools.yaml"
    registry.write_text(yaml.safe_dump(await mcp_server.registry(tmp_path / "store.json")))

    async with McpTools(load_tools(registry), source=registry) as tools:
        added = await tools["add_note"]({"title": "a", "text": "x"}, idempotency_key="k1")
        assert added == {"added": "a", "notes": 1}
        assert await tools["read_note"]({"title": "a"}, idempotency_key="k2") == {"result": "x"}
        with pytest.raises(McpToolError, match=r"notebook/add_note: .*validation error"):
            await tools["add_note"]({"title": "b"}, idempotency_key="k3")

        [server] = servers_of_this_process()
        os.kill(server, signal.SIGKILL)
        with pytest.raises(TransientError, match="MCP server notebook"):
            await tools["add_note"]({"title": "b", "text": "y"}, idempotency_key="k4")
        again = await tools["add_note"]({"title": "b", "text": "y"}, idempotency_key="k4")
        assert again == {"added": "b", "notes": 2}
        assert servers_of_this_process() != [server]
    assert servers_of_this_process() == []  # closed with the tools
