"""The fleet a framework adapter's process tests share: a shop agent that sells and refunds through its tools.

The agent (a framework's agent given to ``trustbus agent run`` as is) is asked, by ``boss``, a JSON prompt
listing tool calls (``prompt_of``); its stand-in model asks for each in turn and answers ``done: ...``.
Its model calls are counted in a file, its tools' calls in the SQLite system of tests/e2e/fleet_agents.py.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.fleet_agents import MODEL_CALLS, SYSTEM_DB
from trustbus._supervisor import Process
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
