"""The fleet the framework adapters' process tests share: a shop agent of one framework, its boss, its system.

The agent (tests/e2e/pydantic_agents.py, tests/e2e/oai_agents.py) is given a prompt listing tool calls; its
stand-in model asks for them one by one and counts its calls in a file; its tools act on the SQLite "system"
of tests/e2e/fleet_agents.py, which tells how often each was called.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import nats
import pytest
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


@dataclass
class Shop:
    """The module's fleet, the agent's current process, and the boss who talks to it."""

    fleet: Fleet
    boss: Bus
    agent_id: str
    target: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    process: Process | None = None

    @property
    def env(self) -> dict[str, str]:
        tmp = self.fleet.tmp
        return {**self.fleet.env, SYSTEM_DB: str(tmp / "system.db"), MODEL_CALLS: str(tmp / "model-calls"),
                **self.extra_env}  # fmt: skip

    async def start_agent(self) -> None:
        tools = self.fleet.tmp / "tools.yaml"
        tools.write_text(yaml.safe_dump(TOOLS))
        self.process = await self.fleet.spawn("agent", "run", self.target, "--id", self.agent_id,
                                              "-t", self.fleet.tenant, "--tools", str(tools), env=self.env)  # fmt: skip

    async def ask(self, *calls: dict[str, object], taint: tuple[str, ...] = ()) -> str:
        """Send the agent a prompt listing ``calls``; the envelope id (its correlation)."""
        return await self.fleet.send(self.boss, [self.agent_id], prompt_of(*calls), kind="event", taint=list(taint))

    async def answer(self, correlation: str, to: str = "boss") -> Envelope:
        def arrived(read: list[tuple[str, Envelope]]) -> bool:
            return any(r == to and e.correlation_id == correlation for r, e in read)

        read = await self.fleet.inbox(arrived, limit_s=60)
        return next(e for r, e in read if r == to and e.correlation_id == correlation)

    def model_calls(self, correlation_prompt: str) -> int:
        path = self.fleet.tmp / "model-calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(json.loads(line) == correlation_prompt for line in lines)

    def system_calls(self, what: str) -> tuple[int, int]:
        """(rows stored, calls made) for ``what`` (``sale:lamp``), read from the system itself."""
        with contextlib.closing(sqlite3.connect(self.fleet.tmp / "system.db")) as db:
            keys = [k for (k,) in db.execute("SELECT idempotency_key FROM sales WHERE item = ?", (what,))]
            calls = sum(
                db.execute("SELECT count(*) FROM calls WHERE idempotency_key = ?", (k,)).fetchone()[0] for k in keys
            )
        return len(keys), calls


@contextlib.asynccontextmanager
async def open_shop(
    server: EmbeddedServer,
    tmp_path_factory: pytest.TempPathFactory,
    agent_id: str,
    target: str,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Shop]:
    """A fleet on a new tenant (coordinator, operator ``ops``) with the shop agent ``target`` running as ``agent_id``.

    Its policy also lets ``customer`` send events to ``support``, for a docs example run next to it.
    """
    tmp = tmp_path_factory.mktemp(agent_id)
    tenant = f"{agent_id}{time.monotonic_ns() % 10**9}"
    keys = KeyDirectory(tmp / "keys")
    await init_tenant([server.url], tenant, keys=keys)
    fleet = Fleet(url=server.url, tenant=tenant, keys=keys, tmp=tmp, nc=await nats.connect(server.url))
    policy = {
        "rules": [
            {"from": "boss", "to": [agent_id], "kinds": ["instruction", "event"]},
            {"from": "customer", "to": ["support"], "kinds": ["event"]},
            {"from": "*", "to": ["*"], "kinds": ["reply"]},
        ]
    }
    try:
        await fleet.coordinator(policy)
        await fleet.key("ops", role="operator")
        await fleet.key(agent_id)
        shop = Shop(fleet, await fleet.bus("boss"), agent_id, target, extra_env or {})
        await shop.start_agent()
        yield shop
    finally:
        await fleet.close()


def prompt_of(*calls: dict[str, object]) -> str:
    """The prompt asking the stand-in model for ``calls``."""
    return json.dumps({"calls": list(calls)})


async def held(fleet: Fleet, correlation: str) -> Decision:
    """The coordinator's hold of an effect of the request ``correlation``, once it is decided."""

    def found(ds: list[Decision]) -> bool:
        return any(d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation for d in ds)

    decisions = await fleet.decisions(found)
    return next(d for d in decisions if d.kind == "effect" and d.verdict == "hold" and d.correlation_id == correlation)
