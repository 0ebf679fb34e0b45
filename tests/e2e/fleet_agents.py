"""Agents the process tests run with ``trustbus agent run tests.e2e.fleet_agents:<name>``."""

from __future__ import annotations

import asyncio

from agents import Agent, Context


class Recorder(Agent):
    """Tells the sender when it starts and finishes each delivery; a first attempt at ``"hang"`` never finishes."""

    async def handle(self, ctx: Context) -> None:
        """Report start, maybe hang, report done."""
        await ctx.reply({"event": "start", "id": ctx.envelope.id, "attempt": ctx.attempt})
        if ctx.json() == "hang" and ctx.attempt == 1:
            await asyncio.Event().wait()
        await ctx.reply({"event": "done", "id": ctx.envelope.id, "attempt": ctx.attempt})
