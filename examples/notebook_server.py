"""A small MCP server (the mcp SDK, over stdio): a notebook kept in ``notebook.json`` beside where it runs.

It serves what ``examples/notes.py`` calls:

    trustbus tools import-mcp --server notebook --command "python examples/notebook_server.py" \
        --file notes.yaml --owner ops

``add_note`` honours the idempotency key trustbus sends in the request's ``_meta``: a call
made again under the same key (a redelivery after a crash) stores nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

STORE = Path("notebook.json")
KEY_META = "dev.trustbus/idempotency-key"

server = MCPServer("notebook")


def _load() -> dict[str, Any]:
    return json.loads(STORE.read_text()) if STORE.exists() else {"notes": {}, "keys": []}


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_note(title: str) -> str:
    """Read a note."""
    return str(_load()["notes"].get(title, ""))


@server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
def add_note(title: str, text: str, ctx: Context) -> dict[str, Any]:
    """Add a note."""
    state = _load()
    key = (ctx.request_context.meta or {}).get(KEY_META)
    if key is None or key not in state["keys"]:
        state["notes"][title] = text
        state["keys"].append(key)
        STORE.write_text(json.dumps(state))
    return {"added": title, "notes": len(state["notes"])}


if __name__ == "__main__":
    server.run()
