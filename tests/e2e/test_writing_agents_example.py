"""docs/WRITING_AGENTS.md's example, exactly as shipped, as real processes.

A coordinator and `trustbus agent run examples.support_desk:app --tools
examples/tools.yaml`; the test plays the triage agent and the operator, and
checks what anyone could observe: the reply, the effect records in the
stream, the memory value, the checkpoint across a restart, a re-execution
of the handler, and a rollback.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Any

import msgspec

from tests.e2e.fleet import ROOT, Fleet
from tests.e2e.test_approvals import cli
from tests.e2e.test_effects import effect_records
from trustbus._supervisor import Process
from trustbus.agents._memory import Memory, MemoryEntry
from trustbus.bus import Decision, Envelope, KeyringStore, decode_envelope, subjects
from trustbus.bus._bucket import NatsBucket

POLICY = {
    "rules": [
        {"from": "triage", "to": ["support"], "kinds": ["instruction"], "verbs": ["refund"]},
        {"from": "ops", "to": ["support"], "kinds": ["instruction"], "verbs": ["charge_back"]},
        {"from": "*", "to": ["*"], "kinds": ["event", "reply"]},
    ]
}
AGENT = ("agent", "run", "examples.support_desk:app", "--id", "support", "--tools", "examples/tools.yaml")
KEY = "refunds-c-42"


async def _memory(fleet: Fleet, key: str) -> MemoryEntry | None:
    """The support desk's ``key``, read with the direct gets an agent is allowed, verified as the agent does."""
    js = fleet.nc.jetstream()
    bucket = NatsBucket(js, subjects.memory_bucket(fleet.tenant), direct=True)
    async with await KeyringStore.open(js, fleet.tenant, follow=False) as keys:
        return await Memory(bucket, "support", None, keys=keys).get(key)  # type: ignore[arg-type]


async def start_desk(fleet: Fleet) -> Process:
    return await fleet.spawn(*AGENT, "-t", fleet.tenant)


async def reply_to(fleet: Fleet, instruction: str) -> dict[str, Any]:
    """The JSON body of the support desk's reply to ``instruction``."""

    def answered(read: list[tuple[str, Envelope]]) -> bool:
        return any(r == "triage" and e.causation_id == instruction for r, e in read)

    read = await fleet.inbox(answered)
    [reply] = [e for r, e in read if r == "triage" and e.causation_id == instruction]
    assert reply.kind == "reply" and reply.sender == "support"
    body: dict[str, Any] = json.loads(reply.payload)
    return body


async def memory_after(fleet: Fleet, instruction: str) -> object:
    """The memory value once the write that handling ``instruction`` proposed has been stored."""

    def proposed(ds: list[Decision]) -> bool:
        return any(d.kind == "memory_write" and d.causation_id == instruction for d in ds)

    [write] = [d for d in await fleet.decisions(proposed) if d.kind == "memory_write" and d.causation_id == instruction]
    assert write.verdict == "accept" and write.reasons == ("memory_write",)
    await fleet.memory_written("support", KEY, write.envelope_id)
    entry = await _memory(fleet, KEY)
    assert entry is not None and entry.envelope_id == write.envelope_id
    return entry.value


async def checkpoint_stored(fleet: Fleet, state: dict[str, Any]) -> None:
    """Wait until the coordinator has stored the agent's checkpoint ``state``."""
    bucket = subjects.memory_bucket(fleet.tenant)
    sub = await fleet.nc.jetstream().subscribe(
        f"$KV.{bucket}.support.checkpoint", stream=f"KV_{bucket}", ordered_consumer=True
    )

    async def follow() -> None:
        while True:
            record = msgspec.msgpack.decode((await sub.next_msg(timeout=30)).data)
            if json.loads(decode_envelope(record["body"]).payload) == state:
                return

    try:
        await asyncio.wait_for(follow(), 30)
    finally:
        await sub.unsubscribe()


async def test_support_desk_refunds_remembers_replies_with_cited_effects_and_resumes(fleet: Fleet) -> None:
    await fleet.key("ops", role="operator")
    await fleet.key("support")
    await fleet.coordinator(POLICY, extra=("--tools", "examples/tools.yaml"))
    desk = await start_desk(fleet)
    triage = await fleet.bus("triage")

    # The reply names the refund and cites the two completed effects behind it.
    first = await fleet.send(triage, ["support"], {"verb": "refund", "customer": "c-42", "order": "A-1", "amount": 25},
                             kind="instruction")  # fmt: skip
    body = await reply_to(fleet, first)
    refund_id = body["refund_id"]
    assert refund_id.startswith("rf-") and body["refunds_for_customer"] == 1
    refund_key, email_key = body["cites"]
    for key, tool in ((refund_key, "issue_refund"), (email_key, "send_email")):
        records = await effect_records(fleet, "support", key)
        assert [(r.phase, r.tool) for _, r in records] == [("requested", tool), ("completed", tool)]
        assert {e.causation_id for e, _ in records} == {first}
    [(_, completed)] = [(e, r) for e, r in await effect_records(fleet, "support", refund_key) if r.phase == "completed"]
    assert json.loads(completed.result or b"") == {"refund_id": refund_id, "order": "A-1", "amount": 25}
    assert (completed.effect_class, completed.compensating_tool) == ("reversible", "charge_back")

    # The memory write went through the coordinator; the checkpoint too.
    assert await memory_after(fleet, first) == [refund_id]
    await checkpoint_stored(fleet, {"handled": 1})

    # A new process of the same agent resumes from its checkpoint and its memory.
    desk.send_signal(signal.SIGTERM)
    assert await desk.exited(30) == 0
    await start_desk(fleet)
    second = await fleet.send(triage, ["support"], {"verb": "refund", "customer": "c-42", "order": "A-2", "amount": 7},
                              kind="instruction")  # fmt: skip
    again = await reply_to(fleet, second)
    assert again["refunds_for_customer"] == 2 and again["refund_id"] != refund_id
    assert await memory_after(fleet, second) == [refund_id, again["refund_id"]]
    await checkpoint_stored(fleet, {"handled": 2})

    # Re-executing the handler on the first incident's recorded input gives the same outputs, touching nothing.
    rc, out, err = await cli(fleet, "ledger", "replay", "-t", fleet.tenant, "--correlation", first, "--json",
                             "--execute", "support=examples.support_desk:app")  # fmt: skip
    assert rc == 0, err
    [executed] = json.loads(out)["executed"]
    assert executed["delivery"] == first and executed["divergences"] == []

    # Rolling back the second incident charges its refund back, lists its email for a person, and restores memory.
    rc, out, err = await cli(fleet, "ledger", "rollback", "-t", fleet.tenant, "--correlation", second,
                             "--as", "ops", "--json")  # fmt: skip
    assert rc == 0, err
    plan = json.loads(out)
    assert [(c["tool"], c["compensating_tool"]) for c in plan["compensate"]] == [("issue_refund", "charge_back")]
    assert [c["tool"] for c in plan["for_a_person"]] == ["send_email"]
    assert plan["compensated_now"] == [again["cites"][0], f"memory:support.{KEY}"]
    charge_backs = [r for _, r in await effect_records(fleet, "support") if r.tool == "charge_back"]
    assert [r.phase for r in charge_backs] == ["requested", "completed"]
    assert json.loads(charge_backs[-1].result or b"")["refund_id"] == again["refund_id"]

    def reverted(ds: list[Decision]) -> bool:
        return any(d.kind == "memory_write" and d.sender == "ops" for d in ds)

    [revert] = [d for d in await fleet.decisions(reverted) if d.kind == "memory_write" and d.sender == "ops"]
    await fleet.memory_written("support", KEY, revert.envelope_id)
    entry = await _memory(fleet, KEY)
    assert entry is not None and entry.value == [refund_id] and entry.envelope_id == revert.envelope_id


def test_the_guide_shows_the_example_as_shipped() -> None:
    guide = (ROOT / "docs" / "WRITING_AGENTS.md").read_text()
    shown = re.search(r"```python\n(.*?)```", guide, re.S)
    assert shown is not None
    source = (ROOT / "examples" / "support_desk.py").read_text()
    assert shown.group(1).strip() == source[source.index("from dataclasses") :].strip()
