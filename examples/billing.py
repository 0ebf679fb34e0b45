"""A billing agent written as decorated handlers.

trustbus agent run examples.billing:app --id billing --tenant demo
"""

from __future__ import annotations

from agents import Context, Handlers

app = Handlers()


@app.on("instruction", verb="refund")
async def refund(ctx: Context) -> None:
    """Acknowledge a refund request (effects and their ledger records come with the effects work)."""
    order = ctx.json().get("order")
    await ctx.reply({"refund": "accepted", "order": order})


@app.on("instruction", verb="lookup")
async def lookup(ctx: Context) -> None:
    """Answer a balance lookup."""
    await ctx.reply({"balance": 0, "account": ctx.json().get("account")})
