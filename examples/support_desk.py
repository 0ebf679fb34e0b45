"""A support desk agent: refunds an order, emails the customer, remembers the refund, replies citing both effects.

Run it with the example tool registry (its tools are issue_refund, charge_back
and send_email there)::

    trustbus agent run examples.support_desk:app --id support --tenant demo --tools examples/tools.yaml

docs/WRITING_AGENTS.md walks through it line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trustbus.agents import Context, Handlers

app = Handlers()


@dataclass
class Desk:
    """What this process remembers between deliveries; saved in checkpoints, so it survives a restart."""

    handled: int = 0


desk = Desk()

# The systems the tools act on. Stand-ins: a real payments API or mail relay takes
# the idempotency key with the request and drops a repeat, which is what makes a
# refund happen once even if this process dies in the middle of the call.
PAYMENTS: dict[str, dict[str, Any]] = {}
MAIL: dict[str, dict[str, Any]] = {}


@app.tool("issue_refund")
async def issue_refund(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Pay an order back (registry: reversible, compensated by charge_back)."""
    refund = {"refund_id": f"rf-{idempotency_key[:8]}", "order": args["order"], "amount": args["amount"]}
    return PAYMENTS.setdefault(idempotency_key, refund)


@app.tool("charge_back")
async def charge_back(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Take a refund back: what a rollback calls, with ``{"compensates", "original", "result"}`` as arguments."""
    charge = {"charge_back_id": f"cb-{idempotency_key[:8]}", "refund_id": args["result"]["refund_id"]}
    return PAYMENTS.setdefault(idempotency_key, charge)


@app.tool("send_email")
async def send_email(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Send the customer an email (registry: irreversible, so a rollback lists it for a person)."""
    return MAIL.setdefault(idempotency_key, {"message_id": f"m-{idempotency_key[:8]}", "to": args["to"]})


@app.on_startup
async def resume(checkpoint: dict[str, Any] | None) -> None:
    """Start from the last checkpoint, if this agent ever made one."""
    desk.handled = int((checkpoint or {}).get("handled", 0))


@app.on("instruction", verb="refund")
async def refund(ctx: Context) -> None:
    """``{"verb": "refund", "customer": ..., "order": ..., "amount": ...}``: refund, confirm, remember, reply."""
    request = ctx.json()
    customer = request["customer"]
    key = f"refunds-{customer}"  # memory keys: 1-64 letters, digits, '_' or '-'
    known = await ctx.memory.get(key)
    refunds: list[str] = known.value if known else []

    # Effects, always in the same order: a redelivery makes the same calls under the same keys
    # and gets the recorded results back instead of refunding or emailing again.
    receipt = await ctx.effect("issue_refund", {"order": request["order"], "amount": request["amount"]})
    text = f"Order {request['order']}: {request['amount']} refunded ({receipt['refund_id']})."
    await ctx.effect("send_email", {"to": customer, "text": text})

    # A proposal: the coordinator applies it only if the key is still at this revision.
    if receipt["refund_id"] not in refunds:  # a redelivery may already see its own write
        refunds = [*refunds, receipt["refund_id"]]
        await ctx.memory.write(key, refunds, expected_revision=known.revision if known else 0)

    # "Refund submitted", naming the completed effects that back the claim.
    await ctx.reply({"refund_id": receipt["refund_id"], "refunds_for_customer": len(refunds)}, cites=ctx.effect_keys)

    desk.handled += 1
    await ctx.checkpoint({"handled": desk.handled})
