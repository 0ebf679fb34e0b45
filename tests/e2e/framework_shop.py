"""The fleet the framework adapters' process tests share: a shop agent of one framework, its boss, its system.

The agent (tests/e2e/pydantic_agents.py, tests/e2e/oai_agents.py, tests/e2e/langgraph_agents.py) is given a
prompt listing tool calls; its stand-in model asks for them one by one, counts its calls in a file and answers
``done: <the tool results>``; its tools act on the SQLite "system" of tests/e2e/fleet_agents.py, which tells
how often each was called.
The checks below are what every framework's process tests assert, each on its own fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

import nats
import pytest
import yaml

from tests.e2e.fleet import Fleet
from tests.e2e.fleet_agents import MODEL_CALLS, NO_MODEL, SYSTEM_DB
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from tests.processes import TRUSTBUS, one_shot_async
from trustbus._supervisor import Process
from trustbus.adapters._recording import MODEL_TOOL
from trustbus.bus import Bus, Decision, EmbeddedServer, Envelope, KeyDirectory, init_tenant

TOOLS = {
    "tools": [
        {"name": "record_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
        {"name": "issue_refund", "system": "books", "owner": "finance", "effect_class": "irreversible",
         "high_risk": True},
        {"name": "void_sale", "system": "till", "owner": "shop", "effect_class": "irreversible"},
    ]
}  # fmt: skip
"""The shop's registry. ``void_sale`` is not high risk here: an agent whose framework asks for approval raises it."""


@dataclass
class Shop:
    """The module's fleet, the agent's current process, and the boss who talks to it."""

    fleet: Fleet
    boss: Bus
    agent_id: str
    module: str
    example: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    process: Process | None = None

    @property
    def target(self) -> str:
        """The agent ``agent run`` is given: the framework's own agent object, unwrapped."""
        return f"{self.module}:agent"

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

    async def ask(self, *calls: dict[str, object], taint: tuple[str, ...] = (), **fields: object) -> str:
        """Send the agent a prompt listing ``calls`` (``fields``: the envelope's, as a correlation); its id."""
        prompt = prompt_of(*calls)
        return await self.fleet.send(self.boss, [self.agent_id], prompt, kind="event", taint=list(taint), **fields)

    async def answer(
        self, correlation: str, to: str = "boss", *, after: str | None = None, kind: str | None = None
    ) -> Envelope:
        """The first envelope to ``to`` in ``correlation`` (caused by ``after``, of ``kind``, if given)."""

        def mine(r: str, e: Envelope) -> bool:
            return (
                r == to
                and e.correlation_id == correlation
                and (after is None or e.causation_id == after)
                and (kind is None or e.kind == kind)
            )

        read = await self.fleet.inbox(lambda read: any(mine(r, e) for r, e in read), limit_s=60)
        return next(e for r, e in read if mine(r, e))

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
    module: str,
    example: str,
    extra_env: Mapping[str, str] | None = None,
    rules: Iterable[Mapping[str, object]] = (),
) -> AsyncIterator[Shop]:
    """A fleet on a new tenant (coordinator, operator ``ops``) with ``module``'s ``agent`` running as ``agent_id``.

    ``module`` also has ``changed``, the agent with other instructions; ``example`` names the docs example
    (``examples/frameworks/<example>_after.py``), run as ``support``, whom ``customer`` may send events.
    ``rules``: more rules of the coordinator's policy.
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
            *rules,
        ]
    }
    try:
        await fleet.coordinator(policy)
        await fleet.key("ops", role="operator")
        await fleet.key(agent_id)
        shop = Shop(fleet, await fleet.bus("boss"), agent_id, module, example, extra_env or {})
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


async def answers_a_message_and_its_tool_call_is_an_effect(shop: Shop) -> Envelope:
    """One run: a model call, the tool call, a model call, each requested and completed; the reply tainted llm.

    The reply, which a conversation may go on from.
    """
    lamp = {"tool": "record_sale", "args": {"item": "lamp"}}
    request = await shop.ask(lamp)
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: [{"sale": 1}]' and answer.content_type == "text/plain"
    assert answer.taint == ("llm",)  # what the model said taints what the agent sends
    records = [r for e, r in await effect_records(shop.fleet, shop.agent_id) if e.correlation_id == request]
    assert [(r.tool, r.phase) for r in records] == [
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
        ("record_sale", "requested"), ("record_sale", "completed"),
        (MODEL_TOOL, "requested"), (MODEL_TOOL, "completed"),
    ]  # fmt: skip
    assert records[0].effect_class == "read" and records[3].effect_class == "irreversible"
    assert json.loads(records[2].args) == {"item": "lamp"}
    assert shop.model_calls(prompt_of(lamp)) == 2 and shop.system_calls("sale:lamp") == (1, 1)
    return answer


async def killed_mid_tool_call_it_repeats_no_completed_call_after_restart(shop: Shop) -> None:
    """SIGKILL while a tool call hangs: after a restart the completed calls come from the ledger."""
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
    assert answer.payload.decode() == 'done: [{"sale": 2}, {"sale": 3}]'
    assert shop.system_calls("sale:vase") == (1, 1)  # completed before the crash: not called again
    assert shop.system_calls("sale:kettle") == (1, 2)  # cut off mid-call: called again with its key, stored once
    assert shop.model_calls(prompt_of(vase, kettle)) == 3  # the two answered before the crash came from the ledger


async def tainted_high_risk_call_is_held_runs_once_on_approval_and_replays_without_the_model(shop: Shop) -> None:
    """A refund under taint waits for ops, runs once when approved; replay calls no model, a changed agent diverges."""
    refund = {"tool": "issue_refund", "args": {"order": 7, "amount": 50}}
    request = await shop.ask(refund, taint=("web",))
    hold = await held(shop.fleet, request)
    assert hold.reasons == ("effect_requested", "tainted_high_risk") and hold.effective_taint == ("llm", "web")
    rc, out, err = await cli(shop.fleet, "approvals", "list", "-t", shop.fleet.tenant, "--json")
    assert rc == 0, err
    [listed] = [json.loads(line) for line in out.splitlines() if json.loads(line)["envelope_id"] == hold.envelope_id]
    assert listed["request"] == 'issue_refund {"amount":50,"order":7}'
    assert not (shop.fleet.tmp / "system.db").exists() or shop.system_calls("refund:7/50") == (0, 0)

    rc, _, err = await cli(shop.fleet, "approve", hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(request)
    assert answer.payload.decode().startswith('done: [{"refund": ')
    assert shop.system_calls("refund:7/50") == (1, 1) and shop.model_calls(prompt_of(refund)) == 2

    # Re-executed from the ledger with a model that raises if called: the same answer, no model call.
    # A version with other instructions asks the model something else: a divergence, still no model call.
    env = {**shop.env, NO_MODEL: "1"}
    targets = ["--execute", f"{shop.agent_id}={shop.target}", "--execute", f"{shop.agent_id}={shop.module}:changed"]
    args = [*TRUSTBUS, "ledger", "replay", "-t", shop.fleet.tenant, "--correlation", request, *targets, "--json"]
    result = await one_shot_async(args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    same, changed = json.loads(result.stdout)["executed"]
    assert same["agent"] == shop.agent_id and same["divergences"] == []
    effect, sent = changed["divergences"]  # it asked another question, so it never got to its reply
    assert effect["what"] == "effect" and effect["replayed"].startswith(f"{MODEL_TOOL}(") and sent["what"] == "sent"
    assert shop.model_calls(prompt_of(refund)) == 2


async def the_docs_example_runs_on_the_bus_where_its_refund_waits_for_an_operator(shop: Shop) -> None:
    """examples/frameworks/<framework>_after.py, as docs/FRAMEWORKS.md runs it."""
    fleet = shop.fleet
    await fleet.key("support")
    await fleet.spawn("agent", "run", f"examples.frameworks.{shop.example}_after:app", "--id", "support",
                      "-t", fleet.tenant, "--tools", "examples/frameworks/tools.yaml", env=shop.env)  # fmt: skip
    customer = await fleet.bus("customer")
    question = await fleet.send(customer, ["support"], "Where is order A-1?")
    answer = await shop.answer(question, to="customer")
    assert answer.payload.decode() == "lookup_order: {'status': 'shipped', 'amount': 25}"  # as when run alone

    refund = await fleet.send(customer, ["support"], "Please refund A-2")
    hold = await held(fleet, refund)  # untainted request, but the model chose the call: taint llm, high risk
    assert hold.effective_taint == ("llm",)
    rc, _, err = await cli(fleet, "deny", hold.envelope_id, "-t", fleet.tenant, "--as", "ops")
    assert rc == 0, err
    answer = await shop.answer(refund, to="customer")
    assert answer.payload.decode() == "refund_order: refund_order was not run: denied by ops"


async def approve_or_deny(shop: Shop, hold: Decision, verb: str) -> None:
    """``trustbus approve`` (or ``deny``) the hold as ``ops``."""
    rc, _, err = await cli(shop.fleet, verb, hold.envelope_id, "-t", shop.fleet.tenant, "--as", "ops")
    assert rc == 0, err


async def a_held_call_ends_the_run_the_agent_answers_others_meanwhile_and_a_denial_reaches_the_model(
    shop: Shop,
) -> None:
    """A held refund does not block the agent: another request is answered while it waits; denied, it never runs."""
    refund = {"tool": "issue_refund", "args": {"order": 9, "amount": 70}}
    request = await shop.ask(refund, taint=("web",))
    hold = await held(shop.fleet, request)

    mug = {"tool": "record_sale", "args": {"item": "mug"}}
    meanwhile = await shop.ask(mug)
    answer = await shop.answer(meanwhile)  # while the refund waits for ops
    assert answer.payload.decode().startswith('done: [{"sale": ') and shop.system_calls("sale:mug") == (1, 1)

    await approve_or_deny(shop, hold, "deny")
    answer = await shop.answer(request)
    assert answer.payload.decode() == 'done: ["issue_refund was not run: denied by ops"]'
    assert shop.system_calls("refund:9/70") == (0, 0) and shop.model_calls(prompt_of(refund)) == 2
    [failed] = [r for e, r in await effect_records(shop.fleet, shop.agent_id)
                if e.correlation_id == request and r.tool == "issue_refund" and r.phase != "requested"]  # fmt: skip
    assert failed.phase == "failed" and failed.error is not None and "denied by ops" in failed.error


async def killed_while_a_call_is_held_the_approval_resumes_the_run_once(
    shop: Shop, call: dict[str, object], what: str
) -> None:
    """SIGKILL while ``call`` (untainted: the framework says it needs approval) is held; approved after the restart.

    ``what``: how the system names what the call does (``void:3``).
    """
    request = await shop.ask(call)
    hold = await held(shop.fleet, request)
    assert hold.effective_taint == ("llm",)  # untainted request: held because the framework asks for approval
    assert shop.process is not None
    shop.process.send_signal(signal.SIGKILL)
    await shop.process.exited()
    await shop.start_agent()

    await approve_or_deny(shop, hold, "approve")
    answer = await shop.answer(request)
    assert answer.payload.decode().startswith("done: [{")
    assert shop.system_calls(what) == (1, 1) and shop.model_calls(prompt_of(call)) == 2
    records = [r for e, r in await effect_records(shop.fleet, shop.agent_id) if e.correlation_id == request]
    [key] = {r.idempotency_key for r in records if r.tool == call["tool"]}  # held, then run: one key
    assert [r.phase for r in records if r.idempotency_key == key] == ["requested", "completed"]
