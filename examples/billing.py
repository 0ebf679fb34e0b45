"""A billing agent written as decorated handlers, refunding through a recorded effect.

trustbus agent run examples.billing:app --id billing --tenant demo --tools examples/tools.yaml
"""

from __future__ import annotations

from typing import Any

from trustbus.agents import Context, Handlers

app = Handlers()

# Stands in for the payments system. A real one takes the idempotency key with
# the request and refuses to act twice on it: that is what makes a refund
# happen exactly once even if this process dies in the middle of the call.
_refunds: dict[str, dict[str, Any]] = {}


@app.tool("issue_refund")
async def issue_refund(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Refund an order (registry: reversible, compensated by charge_back, high risk)."""
    refund = _refunds.setdefault(idempotency_key, {"refund_id": f"rf-{len(_refunds) + 1}", "order": args["order"]})
    return refund


@app.on("instruction", verb="refund")
async def refund(ctx: Context) -> None:
    """Refund the order and reply citing the completed effect, so the claim can be checked."""
    order = ctx.json().get("order")
    receipt = await ctx.effect("issue_refund", {"order": order})
    await ctx.reply({"refund": "submitted", "refund_id": receipt["refund_id"]}, cites=ctx.effect_keys)


@app.on("instruction", verb="lookup")
async def lookup(ctx: Context) -> None:
    """Answer a balance lookup."""
    await ctx.reply({"balance": 0, "account": ctx.json().get("account")})
