"""Agents the cluster tests run with ``trustbus agent run tests.e2e.cluster_agents:<name>``."""

from __future__ import annotations

from trustbus.agents import Agent, Context


class Echo(Agent):
    """Answers every envelope with one reply naming it."""

    async def handle(self, ctx: Context) -> None:
        """Reply with the id of what arrived."""
        await ctx.reply({"echo": ctx.envelope.id})
