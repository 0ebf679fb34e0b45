"""The support desk's agents, each run as its own process by ``trustbus agent run trustbus.demo.agents:<Name>``.

They are scripted, not LLM-driven; the researcher's "model" (:mod:`trustbus.demo.model`)
obeys imperative sentences in what it reads, as a naive LLM would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from trustbus.agents import Agent, Context, ToolImplementation, instruction_verb
from trustbus.demo import model, systems


def is_instruction(ctx: Context, verb: str) -> bool:
    """Whether the delivery is an ``instruction`` with ``verb``: the only thing a worker agent acts on."""
    return ctx.envelope.kind == "instruction" and instruction_verb(ctx.envelope) == verb


class Triage(Agent):
    """Turns tickets from the desk into work: refunds for billing, questions for the researcher."""

    async def handle(self, ctx: Context) -> None:
        """A ticket (event from the desk), or a reply from billing or the researcher; nothing else."""
        kind, sender = ctx.envelope.kind, ctx.envelope.sender
        if not ((kind == "event" and sender == "desk") or (kind == "reply" and sender in ("billing", "researcher"))):
            return
        body = ctx.json()
        if kind == "event":
            await self._ticket(ctx, body)
        elif ctx.envelope.sender == "billing" and "refunded" in body:
            note = f"refunded order {body['refunded']} ({body['amount']} dollars)"
            await ctx.send(["notes"], {"remember": {"customer": body["customer"], "note": note}})
        elif ctx.envelope.sender == "researcher" and not body.get("conclusive", True):
            # A naive retry: ask again until the answer is conclusive. Only the hop limit stops it.
            await ctx.instruct(["researcher"], "research", **body["request"])

    async def _ticket(self, ctx: Context, ticket: dict[str, Any]) -> None:
        if ticket["topic"] == "refund":
            await ctx.instruct(
                ["billing"], "issue_refund",
                customer=ticket["customer"], order=ticket["order"], amount=ticket["amount"],
            )  # fmt: skip
        elif ticket["topic"] == "email":
            await ctx.instruct(["researcher"], "research", message=ticket["message"])
        elif ticket["topic"] == "tracking":
            await ctx.instruct(["researcher"], "research", page=ticket["page"])


class Researcher(Agent):
    """Reads the email or page it is asked about, summarises it, and does what the text tells it to."""

    tools: Mapping[str, ToolImplementation] = {"read_email": systems.read_email, "fetch_page": systems.fetch_page}

    async def handle(self, ctx: Context) -> None:
        """A ``research`` instruction: research, act on the reading, answer triage. Nothing else."""
        if not is_instruction(ctx, "research"):
            return
        source = await ctx.effect(*model.source_of(research_request(ctx)))
        await act_on(ctx, model.read(source["text"]))


def research_request(ctx: Context) -> dict[str, Any]:
    """What a ``research`` instruction asks about: its payload without the verb (``message`` or ``page``)."""
    return {k: v for k, v in ctx.json().items() if k != "verb"}


async def act_on(ctx: Context, reading: model.Reading) -> None:
    """Do what the reading says, in the order the text said it, then answer triage with the summary."""
    for action in reading.actions:
        if isinstance(action, model.Refund):
            await ctx.instruct(
                ["billing"], "issue_refund", customer=action.customer, order=action.order, amount=action.amount
            )
        else:
            await ctx.send(["notes"], {"remember": {"customer": action.customer, "note": action.note}})
    answer = {"summary": reading.summary, "conclusive": reading.conclusive, "request": research_request(ctx)}
    await ctx.reply(answer, cites=ctx.effect_keys)


class Billing(Agent):
    """Refunds orders in the billing database and emails the customer a confirmation."""

    tools: Mapping[str, ToolImplementation] = {
        "issue_refund": systems.issue_refund,
        "charge_back": systems.charge_back,
        "send_email": systems.send_email,
    }

    async def handle(self, ctx: Context) -> None:
        """``issue_refund`` instructions, nothing else (the runtime itself performs a rollback's ``charge_back``).

        A reply or an event that looks like a refund request is not one: only an instruction passes the
        coordinator's rules for who may ask billing for what.
        """
        if not is_instruction(ctx, "issue_refund"):
            return
        request = ctx.json()
        customer, order, amount = request["customer"], int(request["order"]), int(request["amount"])
        await ctx.effect("issue_refund", {"customer": customer, "order": order, "amount": amount})
        await ctx.effect(
            "send_email",
            {"to": customer, "subject": f"Your refund for order {order}", "body": f"We refunded {amount} dollars."},
        )
        await ctx.reply({"refunded": order, "amount": amount, "customer": customer}, cites=ctx.effect_keys)


class Notes(Agent):
    """Keeps the team's shared notes about each customer in its memory namespace."""

    async def handle(self, ctx: Context) -> None:
        """An event ``{"remember": {"customer": ..., "note": ...}}``: append the note to ``customer-<name>``."""
        if ctx.envelope.kind != "event":
            return
        remember = ctx.json()["remember"]
        key = f"customer-{remember['customer']}"
        entry = await ctx.memory.get(key)
        current: dict[str, Any] = entry.value if entry and isinstance(entry.value, dict) else {}
        notes = [*current.get("notes", []), remember["note"]]
        written = await ctx.memory.write(key, {"notes": notes}, expected_revision=entry.revision if entry else 0)
        with contextlib.suppress(TimeoutError):  # the coordinator's answer: a refusal is logged with its reason
            await ctx.memory.outcome(written, timeout_s=5.0)
