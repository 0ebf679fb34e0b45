"""A note-taking agent whose tools an MCP server serves: it implements none of them.

trustbus tools import-mcp --server notebook --command "python examples/notebook_server.py" --file notes.yaml --owner ops
trustbus agent run examples.notes:app --id notes --tenant demo --tools notes.yaml
"""

from __future__ import annotations

from trustbus.agents import Context, Handlers

app = Handlers()


@app.on("instruction", verb="note")
async def note(ctx: Context) -> None:
    """Add the note through the MCP server's add_note tool, then reply citing the recorded effect."""
    asked = ctx.json()
    added = await ctx.effect("add_note", {"title": asked["title"], "text": asked["text"]})
    await ctx.reply({"noted": added}, cites=ctx.effect_keys)
