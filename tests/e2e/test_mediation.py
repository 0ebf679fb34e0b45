"""The coordinator and agents as real processes on a real server.

Each test provisions its own tenant, starts `trustbus coordinator run` (and
agents) as child processes, drives traffic with the library, and reads the
decision log and the inboxes back from the stream.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

from tests.e2e.fleet import Fleet
from tests.processes import TRUSTBUS, one_shot_async
from trustbus.bus import Decision, Envelope, new_envelope, subjects

OPEN = {"from": "*", "to": ["*", "topic:*"], "kinds": ["event", "reply", "checkpoint"]}


async def test_ping_pong_loop_is_stopped_by_the_hop_limit(fleet: Fleet) -> None:
    await fleet.coordinator({"limits": {"hop_limit": 5}, "rules": [OPEN]})
    await fleet.agent("examples.pingpong:Player", "ping")
    await fleet.agent("examples.pingpong:Player", "pong")
    serve = await fleet.bus("ping")
    await fleet.send(serve, ["pong"], {"serve": 1})

    def stopped(ds: list[Decision]) -> bool:
        return any("hop_limit" in d.reasons for d in ds)

    decisions = await fleet.decisions(stopped)
    rallies = [d for d in decisions if d.kind in ("event", "reply")]
    stop = next(d for d in rallies if d.verdict == "reject")
    assert stop.reasons == ("hop_limit",) and stop.hop == 6
    assert [d.hop for d in rallies if d.verdict == "accept"] == [0, 1, 2, 3, 4, 5]
    counts = await fleet.inbox_counts()
    assert counts["ping"] + counts["pong"] == 6  # every accepted rally delivered once, nothing after the stop


async def test_fan_out_to_a_thousand_is_cut_to_the_limit(fleet: Fleet) -> None:
    await fleet.coordinator({"limits": {"fanout_per_envelope": 10}, "rules": [OPEN]})
    crier = await fleet.bus("crier")
    await fleet.send(crier, [f"r{i}" for i in range(1000)], "hear ye")
    [decision] = await fleet.decisions(lambda ds: len(ds) == 1)
    assert decision.verdict == "accept" and decision.reasons == ("fanout",)
    assert decision.deliver_to == tuple(f"r{i}" for i in range(10))
    assert len(decision.dropped) == 990
    delivered = await fleet.inbox(lambda read: len(read) >= 10)
    assert sorted(r for r, _ in delivered) == sorted(f"r{i}" for i in range(10))
    assert await fleet.inbox_counts() == Counter({f"r{i}": 1 for i in range(10)})


async def test_correlation_budget_stops_the_conversation_not_the_next_one(fleet: Fleet) -> None:
    await fleet.coordinator({"limits": {"budget_per_correlation": 3}, "rules": [OPEN]})
    chatty = await fleet.bus("chatty")
    first = await fleet.send(chatty, ["quiet"], 0)
    for i in range(1, 5):
        await fleet.send(chatty, ["quiet"], i, correlation_id=first)
    await fleet.send(chatty, ["quiet"], "new conversation")
    decisions = await fleet.decisions(lambda ds: len(ds) == 6)
    assert [d.verdict for d in decisions] == ["accept"] * 3 + ["reject"] * 2 + ["accept"]
    assert {d.reasons for d in decisions if d.verdict == "reject"} == {("budget",)}
    await fleet.inbox(lambda read: len(read) >= 4)
    assert (await fleet.inbox_counts())["quiet"] == 4


async def test_sender_over_its_rate_is_rejected(fleet: Fleet) -> None:
    await fleet.coordinator({"limits": {"rate": {"per_second": 0.01, "burst": 3}}, "rules": [OPEN]})
    flood = await fleet.bus("flood")
    for i in range(6):
        await fleet.send(flood, ["sink"], i)
    decisions = await fleet.decisions(lambda ds: len(ds) == 6)
    assert [d.verdict for d in decisions] == ["accept"] * 3 + ["reject"] * 3
    assert {d.reasons for d in decisions[3:]} == {("rate_limit",)}
    await fleet.inbox(lambda read: len(read) >= 3)
    assert (await fleet.inbox_counts())["sink"] == 3


async def test_sender_over_its_rate_is_slowed_when_the_policy_says_delay(fleet: Fleet) -> None:
    rate = {"per_second": 10, "burst": 2, "over_limit": "delay"}
    await fleet.coordinator({"limits": {"rate": rate}, "rules": [OPEN]})
    eager = await fleet.bus("eager")
    started = time.time_ns()
    for i in range(6):
        await fleet.send(eager, ["sink"], i)
    decisions = await fleet.decisions(lambda ds: len(ds) == 6)
    assert [d.verdict for d in decisions] == ["accept"] * 6
    # 4 envelopes beyond the burst at 10/s: the last cannot be decided before ~0.4 s
    assert decisions[-1].decided_ns - started >= 300_000_000
    await fleet.inbox(lambda read: len(read) >= 6)
    assert (await fleet.inbox_counts())["sink"] == 6


async def test_instruction_verb_not_allowed_between_the_pair_is_rejected(fleet: Fleet) -> None:
    rule = {"from": "triage", "to": ["billing"], "kinds": ["instruction"], "verbs": ["refund"]}
    await fleet.coordinator({"rules": [rule]})
    triage = await fleet.bus("triage")
    await fleet.send(triage, ["billing"], {"verb": "refund", "order": 7}, kind="instruction")
    await fleet.send(triage, ["billing"], {"verb": "wire_money", "to": "mallory"}, kind="instruction")
    await fleet.send(triage, ["support"], {"verb": "refund"}, kind="instruction")
    decisions = await fleet.decisions(lambda ds: len(ds) == 3)
    assert [(d.verdict, d.reasons) for d in decisions] == [
        ("accept", ()),
        ("reject", ("verb_not_allowed",)),
        ("reject", ("not_allowed",)),
    ]
    [(recipient, delivered)] = await fleet.inbox(lambda read: len(read) >= 1)
    assert recipient == "billing" and json.loads(delivered.payload)["verb"] == "refund"
    assert await fleet.inbox_counts() == Counter({"billing": 1})


async def test_envelope_replayed_into_another_outbox_is_quarantined(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN]})
    alice, bob = await fleet.bus("alice"), await fleet.bus("bob")
    sealed = alice.seal(new_envelope(tenant=fleet.tenant, kind="event", sender="alice", to=["carol"], payload=b"1"))
    # bob re-publishes alice's signed envelope from his own outbox (a dev server without permissions lets him)
    await bob.publish(subjects.outbox(fleet.tenant, "bob", 0), sealed)
    honest = await fleet.send(bob, ["carol"], "from bob")
    [decision] = await fleet.decisions(lambda ds: len(ds) == 1)
    assert decision.envelope_id == honest
    record = await fleet.quarantined(lambda r: r.claimed_id == sealed.envelope.id)
    assert record.reason == "wrong_outbox" and record.claimed_sender == "alice"


async def test_coordinator_killed_under_load_delivers_every_accepted_envelope_exactly_once(fleet: Fleet) -> None:
    first = await fleet.coordinator({"rules": [OPEN]})
    load = await fleet.bus("load")
    total = 1500
    for i in range(total):
        env = new_envelope(tenant=fleet.tenant, kind="event", sender="load", to=["x", "y"], payload=b"%d" % i)
        await load.publish_pipelined(subjects.outbox(fleet.tenant, "load", 0), load.seal(env))
    await load.flush()
    await fleet.decisions(lambda ds: len(ds) >= 200)
    first.send_signal(signal.SIGKILL)
    await first.exited()
    await fleet.coordinator({"rules": [OPEN]})

    decisions = await fleet.decisions(lambda ds: len({d.envelope_id for d in ds}) == total, limit_s=90)
    assert len(decisions) == total  # no envelope decided twice
    assert all(d.verdict == "accept" for d in decisions)

    delivered = await fleet.inbox(lambda read: len(read) >= 2 * total, limit_s=60)
    assert Counter((r, e.id) for r, e in delivered).most_common(1)[0][1] == 1  # nothing twice
    assert await fleet.inbox_counts() == Counter({"x": total, "y": total})  # nothing lost, nothing more


async def test_agent_killed_mid_handler_handles_the_message_again_after_restart(fleet: Fleet) -> None:
    await fleet.coordinator({"rules": [OPEN]})
    worker = await fleet.agent("tests.e2e.fleet_agents:Recorder", "worker")
    boss = await fleet.bus("boss")
    stuck = await fleet.send(boss, ["worker"], "hang")
    after = await fleet.send(boss, ["worker"], "next")

    def reports(read: list[tuple[str, Envelope]]) -> list[tuple[str, str, int]]:
        return [
            (r["event"], r["id"], r["attempt"])
            for recipient, e in read
            if recipient == "boss" and (r := json.loads(e.payload))
        ]

    await fleet.inbox(lambda read: ("start", stuck, 1) in reports(read))
    worker.send_signal(signal.SIGKILL)
    await worker.exited()
    await fleet.agent("tests.e2e.fleet_agents:Recorder", "worker")

    def finished(read: list[tuple[str, Envelope]]) -> list[str]:
        return [i for event, i, _ in reports(read) if event == "done"]

    read = await fleet.inbox(lambda read: ("done", stuck, 2) in reports(read) and after in finished(read))
    # Handled again after the crash, nothing lost or repeated. ``after`` may have been fetched by the
    # killed process too (one fetch can take both), so its attempt is 1 or 2; it is finished once.
    assert sorted(finished(read)) == sorted([stuck, after])
    assert ("done", stuck, 2) in reports(read)


async def test_a_hung_handler_is_cancelled_and_retried_and_the_inbox_flows_on(fleet: Fleet) -> None:
    """No kill needed: the runtime cancels a delivery that outlives the agent's handler_timeout_s and retries it."""
    await fleet.coordinator({"rules": [OPEN]})
    await fleet.agent("tests.e2e.fleet_agents:ImpatientRecorder", "worker")
    boss = await fleet.bus("boss")
    stuck = await fleet.send(boss, ["worker"], "hang")
    after = await fleet.send(boss, ["worker"], "next")

    def events(read: list[tuple[str, Envelope]]) -> list[tuple[str, str, int]]:
        return [
            (r["event"], r["id"], r["attempt"]) for who, e in read if who == "boss" and (r := json.loads(e.payload))
        ]

    read = await fleet.inbox(lambda read: {("done", stuck, 2), ("done", after, 1)} <= set(events(read)))
    assert ("done", stuck, 1) not in events(read)  # the hung attempt never finished: it was cancelled
    assert sorted(i for event, i, _ in events(read) if event == "done") == sorted([stuck, after])


async def test_coordinator_refuses_to_start_on_a_bad_policy(fleet: Fleet) -> None:
    await fleet.key("coordinator", role="coordinator")
    bad = fleet.tmp / "bad.yaml"
    bad.write_text("limits:\n  fanout_per_envelope: 0\nrules:\n  - {from: a, to: [b], kinds: [shout]}\n")
    refused = await one_shot_async(
        [*TRUSTBUS, "coordinator", "run", "-t", fleet.tenant, "--policy", str(bad)], env=fleet.env, timeout_s=30
    )
    assert refused.returncode == 1 and refused.stdout == ""
    message = refused.stderr
    assert "limits.fanout_per_envelope: Input should be greater than or equal to 1" in message
    assert "rules.0.kinds.0" in message


async def test_agent_key_cannot_run_the_coordinator(fleet: Fleet) -> None:
    await fleet.key("impostor")
    policy = fleet.tmp / "p.yaml"
    policy.write_text("rules: []\n")
    refused = await one_shot_async(
        [*TRUSTBUS, "coordinator", "run", "-t", fleet.tenant, "--policy", str(policy), "--name", "impostor"],
        env=fleet.env, timeout_s=30,
    )  # fmt: skip
    assert refused.returncode == 1 and "role 'agent'" in refused.stderr
