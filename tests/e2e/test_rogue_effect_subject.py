"""A rogue agent's own effect subject: what it puts there that is not its effect record is a recorded rejection.

An agent may publish to its own effect subjects. It re-publishes a
researcher-signed reply there, and a self-signed non-effect envelope with the
incident's correlation id. The coordinator refuses both (``wrong_outbox``) and
records it; `ledger verify` stays ok with them counted, and `ledger replay`
and `ledger rollback --dry-run` of the incident show them as rejected steps and
plan the rollback of the real effect all the same.
"""

from __future__ import annotations

import json

import nats.js.errors

from tests.e2e.fleet import Fleet
from tests.e2e.test_approvals import cli
from trustbus.bus import Bus, EffectRecord, encode_effect, new_envelope, subjects

POLICY = {"rules": [{"from": "*", "to": ["*"], "kinds": ["event", "reply"]}]}


async def _incident(fleet: Fleet) -> tuple[str, Bus, str]:
    """A correlation in which the rogue completed a reversible refund: (correlation, rogue, the researcher's reply)."""
    await fleet.coordinator(POLICY)
    rogue, researcher = await fleet.bus("rogue"), await fleet.bus("researcher")
    correlation = await fleet.send(rogue, ["researcher"], {"ask": "order 7"})
    reply = await fleet.send(researcher, ["rogue"], {"order": 7}, kind="reply", correlation_id=correlation,
                             causation_id=correlation)  # fmt: skip
    record = EffectRecord(
        phase="completed", tool="issue_refund", idempotency_key="refund-7", args=b'{"order": 7}',
        result=b'{"ok": true}', effect_class="reversible", compensating_tool="charge_back",
    )  # fmt: skip
    effect = new_envelope(
        tenant=fleet.tenant, kind="effect", sender="rogue", to=(), correlation_id=correlation,
        causation_id=reply, content_type="application/msgpack", payload=encode_effect(record),
    )  # fmt: skip
    await rogue.publish(subjects.effect_record(fleet.tenant, "rogue", 0, "refund-7"), rogue.seal(effect))
    await fleet.decisions(lambda ds: any("effect_recorded" in d.reasons for d in ds))
    return correlation, rogue, reply


async def _replay_and_plan(fleet: Fleet, correlation: str) -> tuple[dict[str, object], dict[str, object]]:
    rc, out, err = await cli(fleet, "ledger", "replay", "--correlation", correlation, "-t", fleet.tenant, "--json")
    assert rc == 0, err
    tree = json.loads(out)
    rc, out, err = await cli(fleet, "ledger", "rollback", "--correlation", correlation, "-t", fleet.tenant,
                             "--dry-run", "--json")  # fmt: skip
    assert rc == 0, err
    plan = json.loads(out)
    assert [c["idempotency_key"] for c in plan["compensate"]] == ["refund-7"]
    return tree, plan


def _flatten(steps: list[dict[str, object]]) -> list[dict[str, object]]:
    return [s for step in steps for s in (step, *_flatten(step["children"]))]  # type: ignore[arg-type]


async def test_foreign_and_non_effect_messages_on_an_agents_own_effect_subject_are_recorded_rejections(
    fleet: Fleet,
) -> None:
    correlation, rogue, reply = await _incident(fleet)
    js = fleet.nc.jetstream()
    # 1. The researcher's signed reply, bytes and headers as stored, re-published on the rogue's effect subject.
    [stored] = [m for m in await _outbox_copies(fleet, reply)]
    signed = {k: v for k, v in (stored.headers or {}).items() if k.startswith("Tb-")}  # a fresh Nats-Msg-Id
    copied = (await js.publish(subjects.effect_record(fleet.tenant, "rogue", 0, "k-copy"), stored.data,
                               headers=signed)).seq  # fmt: skip
    # 2. The rogue's own event (not an effect) there, in the incident's correlation.
    own = new_envelope(tenant=fleet.tenant, kind="event", sender="rogue", to=(), correlation_id=correlation,
                       payload=b'{"phase": "completed"}')  # fmt: skip
    mine = (await rogue.publish(subjects.effect_record(fleet.tenant, "rogue", 0, "k-own"), rogue.seal(own))).seq
    # Both refused as misplaced: the copy is signed by another agent than the subject's (the coordinator reads
    # each sender's subjects apart, docs/COORDINATOR.md, so it is not checked against the researcher's ids),
    # the rogue's own event is no effect record.
    assert (await fleet.quarantined(lambda r: r.stream_seq == copied)).reason == "wrong_outbox"
    assert (await fleet.quarantined(lambda r: r.stream_seq == mine)).reason == "wrong_outbox"

    rc, out, _ = await cli(fleet, "ledger", "verify", "-t", fleet.tenant, "--json")
    report = json.loads(out.splitlines()[-1])
    assert rc == 0 and report["ok"] and report["recorded_rejections"] == 2, report

    tree, plan = await _replay_and_plan(fleet, correlation)
    rejected = {s["seq"]: s["quarantined"] for s in _flatten(tree["tree"]) if s["seq"] in (copied, mine)}
    assert rejected == {copied: "wrong_outbox by coordinator", mine: "wrong_outbox by coordinator"}
    assert {r["seq"] for r in plan["rejected"]} == {copied, mine}  # type: ignore[union-attr]


async def test_an_incident_with_only_the_agents_own_effect_records_replays_and_plans_cleanly(fleet: Fleet) -> None:
    """The twin: the same incident without the rogue's extra messages."""
    correlation, _, _ = await _incident(fleet)
    rc, out, _ = await cli(fleet, "ledger", "verify", "-t", fleet.tenant, "--json")
    report = json.loads(out.splitlines()[-1])
    assert rc == 0 and report["ok"] and report["recorded_rejections"] == 0, report
    tree, plan = await _replay_and_plan(fleet, correlation)
    assert not any(s["quarantined"] for s in _flatten(tree["tree"])) and plan["rejected"] == []


async def _outbox_copies(fleet: Fleet, envelope_id: str) -> list[object]:
    """The stored message of ``envelope_id`` in its sender's outbox (the bytes and headers an agent could copy)."""
    js = fleet.nc.jetstream()
    found = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(f"TB_{fleet.tenant}", seq, subject=f"tb.{fleet.tenant}.out.>", next=True)
        except nats.js.errors.NotFoundError:
            return found
        if (raw.headers or {}).get("Nats-Msg-Id") == envelope_id:
            found.append(raw)
        assert raw.seq is not None
        seq = raw.seq + 1
