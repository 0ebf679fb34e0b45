"""The fleet a framework adapter's process tests share: a shop agent that sells and refunds through its tools.

The agent (a framework's agent given to ``trustbus agent run`` as is) is asked, by ``boss``, a JSON prompt
listing tool calls (``prompt_of``); its stand-in model asks for each in turn and answers ``done: ...``.
Its model calls are counted in a file, its tools' calls in the SQLite system of tests/e2e/fleet_agents.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.fleet_agents import MODEL_CALLS, SYSTEM_DB
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from trustbus._supervisor import Process
from trustbus.adapters._recording import MODEL_TOOL
from trustbus.bus import Bus, Decision, EmbeddedServer, Envelope, KeyDirectory, init_tenant

TOOLS = {
    "tools": [
        {"name": "record_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
        {"name": "issue_refund", "system": "books", "owner": "finance", "effect_class": "irreversible",
         "high_risk": True},
    ]
}  # fmt: skip


def prompt_of(*calls: dict[str, object]) -> str:
    """The prompt that has the stand-in model ask for ``calls``, in order."""
    return json.dumps({"calls": list(calls)})


@dataclass
class Shop:
    """The module's fleet, the agent's current process, and the boss who talks to it."""

    fleet: Fleet
    boss: Bus
    agent: str
    target: str
    process: Process | None = None

    @property
    def env(self) -> dict[str, str]:
        tmp = self.fleet.tmp
        return {**self.fleet.env, SYSTEM_DB: str(tmp / "system.db"), MODEL_CALLS: str(tmp / "model-calls")}

    async def start_agent(self) -> None:
        tools = self.fleet.tmp / "tools.yaml"
        tools.write_text(yaml.safe_dump(TOOLS))
        self.process = await self.fleet.spawn("agent", "run", self.target, "--id", self.agent, "-t", self.fleet.tenant,
                                              "--tools", str(tools), env=self.env)  # fmt: skip

    async def ask(self, *calls: dict[str, object], taint: tuple[str, ...] = (), **fields: object) -> str:
        """Send the agent a prompt listing ``calls``; the envelope id."""
        prompt = prompt_of(*calls)
        return await self.fleet.send(self.boss, [self.agent], prompt, kind="event", taint=list(taint), **fields)

    async def answer(self, correlation: str, to: str = "boss", *, after: str | None = None) -> Envelope:
        """The first envelope to ``to`` in ``correlation`` (caused by ``after``, if given)."""

        def mine(r: str, e: Envelope) -> bool:
            return r == to and e.correlation_id == correlation and (after is None or e.causation_id == after)

        read = await self.fleet.inbox(lambda read: any(mine(r, e) for r, e in read), limit_s=60)
        return next(e for r, e in read if mine(r, e))

    def model_calls(self, prompt: str) -> int:
        path = self.fleet.tmp / "model-calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(json.loads(line) == prompt for line in lines)

    def system_calls(self, what: str) -> tuple[int, int]:
        """(rows stored, calls made) for ``what`` (``sale:lamp``), read from the system itself."""
        if not (self.fleet.tmp / "system.db").exists():
            return 0, 0
        with contextlib.closing(sqlite3.connect(self.fleet.tmp / "system.db")) as db:
            keys = [k for (k,) in db.execute("SELECT idempotency_key FROM sales WHERE item = ?", (what,))]
            calls = sum(
                db.execute("SELECT count(*) FROM calls WHERE idempotency_key = ?", (k,)).fetchone()[0] for k in keys
            )
        return len(keys), calls


@contextlib.asynccontextmanager
async def open_shop(server: EmbeddedServer, tmp: Path, *, agent: str, target: str) -> AsyncIterator[Shop]:
    """A tenant with a coordinator, an operator ``ops``, and ``agent`` (``target``) running; customers may ask
    ``support``."""
    tenant = f"{agent}{time.monotonic_ns() % 10**9}"
    keys = KeyDirectory(tmp / "keys")
    await init_tenant([server.url], tenant, keys=keys)
    fleet = Fleet(url=server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(server.url))
    policy = {
        "rules": [
            {"from": "boss", "to": [agent], "kinds": ["instruction", "event"]},
            {"from": "customer", "to": ["support"], "kinds": ["event"]},
            {"from": "*", "to": ["*"], "kinds": ["reply"]},
        ]
    }
    try:
        await fleet.coordinator(policy)
        await fleet.key("ops", role="operator")
        await fleet.key(agent)
        shop = Shop(fleet, await fleet.bus("boss"), agent, target)
        await shop.start_agent()
        yield shop
    finally:
        await fleet.close()


async def held(fleet: Fleet, correlation: str) -> Decision:
    """The coordinator's hold of an effect in ``correlation``."""

    def found(ds: list[Decision]) -> bool:
        return any(d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation for d in ds)

    decisions = await fleet.decisions(found)
    return next(d for d in decisions if d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation)


async def sell_a_lamp(shop: Shop) -> tuple[str, Envelope]:
    """Ask for one sale: its model requests and its tool call are effects, each made once. (request, answer)."""
    lamp = {"tool": "record_sale", "args": {"item": "lamp"}}
    request = await shop.ask(lamp)
    answer = await shop.answer(request)
    assert answer.content_type == "text/plain"
    assert answer.taint == ("llm",)  # what the model said taints what the agent sends
    records = [r for e, r in await effect_records(shop.fleet, shop.agent) if e.correlation_id == request]
    assert [(r.tool, r.phase) for r in records] == [
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
        ("record_sale", "requested"), ("record_sale", "completed"),
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
    ]  # fmt: skip
    assert records[0].effect_class == "read" and records[3].effect_class == "irreversible"
    assert json.loads(records[2].args) == {"item": "lamp"}
    assert shop.model_calls(prompt_of(lamp)) == 2 and shop.system_calls("sale:lamp") == (1, 1)
    return request, answer


async def sell_through_a_crash(shop: Shop) -> Envelope:
    """Ask for a vase and a kettle; SIGKILL the agent mid-call on the kettle and start it again; the answer.

    No completed call is made again: the vase is sold once, the kettle's cut-off call is made again with its
    key (stored once), and the two model requests answered before the crash come from the ledger.
    """
    vase = {"tool": "record_sale", "args": {"item": "vase"}}
    kettle = {"tool": "record_sale", "args": {"item": "kettle", "hang": True}}
    request = await shop.ask(vase, kettle)
    deadline = time.monotonic() + 30
    while shop.system_calls("sale:kettle") != (1, 1):  # the tool stored the sale and blocks: seen in the system
        assert time.monotonic() < deadline, "the kettle was never sold"
        await asyncio.sleep(0.05)
    assert shop.process is not None
    shop.process.send_signal(signal.SIGKILL)
    await shop.process.exited()
    await shop.start_agent()

    answer = await shop.answer(request)
    assert shop.system_calls("sale:vase") == (1, 1)
    assert shop.system_calls("sale:kettle") == (1, 2)
    assert shop.model_calls(prompt_of(vase, kettle)) == 3
    return answer


REFUND = {"tool": "issue_refund", "args": {"order": 7, "amount": 50}}


async def refund_held_then_approved(shop: Shop) -> str:
    """Ask, under taint ``web``, for a refund (high risk): it is held, listed, approved, then made once. Its request."""
    request = await shop.ask(REFUND, taint=("web",))
    hold = await held(shop.fleet, request)
    assert hold.reasons == ("effect_requested", "tainted_high_risk") and hold.effective_taint == ("llm", "web")
    rc, out, err = await cli(shop.fleet, "approvals", "list", "-t", shop.fleet.tenant, "--json")
    assert rc == 0, err
    [listed] = [json.loads(line) for line in out.splitlines() if json.loads(line)["envelope_id"] == hold.envelope_id]
    assert listed["request"] == 'issue_refund {"amount":50,"order":7}'
    assert shop.system_calls("refund:7/50") == (0, 0)

    rc, _, err = await cli(shop.fleet, "approve", hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(request)
    assert answer.payload.decode().startswith('done: [{"refund": ')
    assert shop.system_calls("refund:7/50") == (1, 1) and shop.model_calls(prompt_of(REFUND)) == 2
    return request


async def run_the_docs_example(shop: Shop, target: str) -> None:
    """The support assistant of docs/FRAMEWORKS.md (``target``) as ``support``: it answers as when run alone,
    and its refund waits for an operator, who denies it."""
    fleet = shop.fleet
    await fleet.key("support")
    await fleet.spawn("agent", "run", target, "--id", "support",
                      "-t", fleet.tenant, "--tools", "examples/frameworks/tools.yaml")  # fmt: skip
    customer = await fleet.bus("customer")
    question = await fleet.send(customer, ["support"], "Where is order A-1?")
    answer = await shop.answer(question, to="customer")
    assert answer.payload.decode() == "lookup_order: {'status': 'shipped', 'amount': 25}"

    refund = await fleet.send(customer, ["support"], "Please refund A-2")
    hold = await held(fleet, refund)  # untainted request, but the model chose the call: taint llm, high risk
    assert hold.effective_taint == ("llm",)
    rc, _, err = await cli(fleet, "deny", hold.envelope_id, "-t", fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(refund, to="customer")
    assert answer.payload.decode() == "refund_order: refund_order was not run: denied by ops"
