"""Two agents that answer each other forever: the coordinator's hop limit is what stops them.

Run each side as its own process::

    trustbus agent run examples.pingpong:Player --id ping --tenant demo
    trustbus agent run examples.pingpong:Player --id pong --tenant demo
"""

from __future__ import annotations

from typing import Any

from trustbus.agents import Agent, Context


class Player(Agent):
    """Replies to every event or reply it gets, counting the rallies in its checkpoint."""

    def __init__(self) -> None:
        """Start with no rallies."""
        self.rallies = 0

    async def on_start(self, checkpoint: dict[str, Any] | None) -> None:
        """Resume the count from the last checkpoint."""
        self.rallies = int((checkpoint or {}).get("rallies", 0))

    async def handle(self, ctx: Context) -> None:
        """Hit the ball back."""
        self.rallies += 1
        await ctx.reply({"rally": self.rallies})
        await ctx.checkpoint({"rallies": self.rallies})
