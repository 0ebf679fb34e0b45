"""The coordinator and agents as real processes on a real server.

Each test provisions its own tenant, starts `trustbus coordinator run` (and
agents) as child processes, drives traffic with the library, and reads the
decision log and the inboxes back from the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.client import Client as NATS

from agents import Decision, decode_decision
from bus import (
    Bus,
    EmbeddedServer,
    Envelope,
    KeyDirectory,
    KeyringStore,
    decode_envelope,
    init_tenant,
    new_envelope,
    new_key,
    subjects,
    tail,
)

ROOT = Path(__file__).resolve().parents[2]
_numbers = itertools.count(1)


@dataclass
class Fleet:
    """One tenant on the session server, its keys, and the processes started for it."""

    url: str
    tenant: str
    keys: KeyDirectory
    tmp: Path
    nc: NATS
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    buses: list[Bus] = field(default_factory=list)
    deciders: Counter[str] = field(default_factory=Counter)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "NATS_URL": self.url, "TRUSTBUS_KEYS": str(self.keys.root)}

    async def key(self, owner: str, role: str = "agent") -> None:
        await new_key([self.url], self.tenant, owner, role=role, keys=self.keys)  # type: ignore[arg-type]

    async def spawn(self, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        """Start `trustbus <args>` and wait for its ready line."""
        errors = (self.tmp / f"proc{len(self.procs)}.err").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trustbus", *args,
            cwd=ROOT, env=env or self.env, stdout=asyncio.subprocess.PIPE, stderr=errors,
        )  # fmt: skip
        errors.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (self.tmp / f"proc{len(self.procs) - 1}.err").read_text()
        assert json.loads(line)["ready"]
        return proc

    async def coordinator(self, policy: dict[str, object], *, name: str = "coordinator") -> asyncio.subprocess.Process:
        if not self.keys.path(self.tenant, name).exists():
            await self.key(name, role="coordinator")
        file = self.tmp / f"policy-{name}.yaml"
        file.write_text(yaml.safe_dump(policy))
        return await self.spawn("coordinator", "run", "-t", self.tenant, "--policy", str(file), "--name", name)

    async def agent(self, target: str, agent_id: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        if not self.keys.path(self.tenant, agent_id).exists():
            await self.key(agent_id)
        return await self.spawn("agent", "run", target, "--id", agent_id, "-t", self.tenant, env=env)

    async def bus(self, owner: str) -> Bus:
        if not self.keys.path(self.tenant, owner).exists():
            await self.key(owner)
        bus = await Bus.connect(self.url, tenant=self.tenant, name=owner, identity=self.keys.load(self.tenant, owner))
        self.buses.append(bus)
        return bus

    async def send(self, bus: Bus, to: list[str], payload: object = None, **fields: object) -> str:
        envelope = new_envelope(
            tenant=self.tenant, kind=fields.pop("kind", "event"), sender=bus.name, to=to,  # type: ignore[arg-type]
            payload=json.dumps(payload).encode(), **fields,  # type: ignore[arg-type]
        )  # fmt: skip
        await bus.publish(subjects.outbox(self.tenant, bus.name), bus.seal(envelope))
        return envelope.id

    async def decisions(self, until: Callable[[list[Decision]], bool], *, limit_s: float = 30) -> list[Decision]:
        """Read the decision log until ``until(decisions)`` holds."""
        js = self.nc.jetstream()
        seen: list[Decision] = []

        async def follow() -> None:
            async with await KeyringStore.open(js, self.tenant) as keyring:
                async for item in tail(js, keyring, self.tenant, subject=subjects.decision(self.tenant)):
                    assert item.opened is not None, item.error
                    seen.append(decode_decision(item.opened.envelope.payload))
                    self.deciders[item.opened.envelope.sender] += 1
                    if until(seen):
                        return

        await asyncio.wait_for(follow(), limit_s)
        return seen

    async def inbox_counts(self) -> Counter[str]:
        """Messages stored in each inbox right now."""
        info = await self.nc.jetstream().stream_info(f"TB_{self.tenant}", subjects_filter=f"tb.{self.tenant}.in.*")
        return Counter({s.rsplit(".", 1)[1]: n for s, n in (info.state.subjects or {}).items()})

    async def inbox(
        self, until: Callable[[list[tuple[str, Envelope]]], bool], *, limit_s: float = 30
    ) -> list[tuple[str, Envelope]]:
        """Read every inbox in stream order, as (recipient, envelope), until ``until(read)`` holds."""
        read: list[tuple[str, Envelope]] = []
        sub = await self.nc.jetstream().subscribe(
            f"tb.{self.tenant}.in.*", stream=f"TB_{self.tenant}", ordered_consumer=True
        )

        async def follow() -> None:
            while not until(read):
                msg = await sub.next_msg(timeout=limit_s)
                read.append((msg.subject.rsplit(".", 1)[1], decode_envelope(msg.data)))

        try:
            await asyncio.wait_for(follow(), limit_s)
        finally:
            await sub.unsubscribe()
        return read

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for bus in self.buses:
            await bus.aclose()
        await self.nc.close()


@pytest.fixture
async def fleet(nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    tenant = f"m{os.getpid()}x{next(_numbers)}"
    keys = KeyDirectory(tmp_path / "keys")
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(nats_server.url))
    try:
        yield fleet
    finally:
        await fleet.close()


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
    await bob.publish(subjects.outbox(fleet.tenant, "bob"), sealed)
    honest = await fleet.send(bob, ["carol"], "from bob")
    [decision] = await fleet.decisions(lambda ds: len(ds) == 1)
    assert decision.envelope_id == honest
    js = fleet.nc.jetstream()
    raw = await js.get_last_msg(f"TB_{fleet.tenant}", subjects.quarantine(fleet.tenant))
    async with await KeyringStore.open(js, fleet.tenant) as keyring:
        from bus import decode_quarantine_record, open_envelope

        record = decode_quarantine_record(
            open_envelope(raw.data, raw.headers, keyring=keyring.keyring, received_ns=time.time_ns()).envelope.payload
        )
    assert record.reason == "wrong_outbox" and record.claimed_sender == "alice"


async def test_coordinator_killed_under_load_delivers_every_accepted_envelope_exactly_once(fleet: Fleet) -> None:
    first = await fleet.coordinator({"rules": [OPEN]})
    load = await fleet.bus("load")
    total = 1500
    for i in range(total):
        env = new_envelope(tenant=fleet.tenant, kind="event", sender="load", to=["x", "y"], payload=b"%d" % i)
        await load.publish_pipelined(subjects.outbox(fleet.tenant, "load"), load.seal(env))
    await load.flush()
    await fleet.decisions(lambda ds: len(ds) >= 200)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    await fleet.coordinator({"rules": [OPEN]})

    decisions = await fleet.decisions(lambda ds: len({d.envelope_id for d in ds}) == total, limit_s=90)
    assert len(decisions) == total  # no envelope decided twice
    assert all(d.verdict == "accept" for d in decisions)

    delivered = await fleet.inbox(lambda read: len(read) >= 2 * total, limit_s=60)
    assert Counter((r, e.id) for r, e in delivered).most_common(1)[0][1] == 1  # nothing twice
    assert await fleet.inbox_counts() == Counter({"x": total, "y": total})  # nothing lost, nothing more


async def test_two_coordinators_never_decide_or_deliver_twice(fleet: Fleet) -> None:
    await fleet.coordinator({"limits": {"budget_per_correlation": 250}, "rules": [OPEN]}, name="coord-a")
    await fleet.coordinator({"limits": {"budget_per_correlation": 250}, "rules": [OPEN]}, name="coord-b")
    load = await fleet.bus("load")
    origin = await fleet.send(load, ["x"], "origin")
    for i in range(399):
        env = new_envelope(
            tenant=fleet.tenant, kind="event", sender="load", to=["x"], payload=b"%d" % i, correlation_id=origin
        )
        await load.publish_pipelined(subjects.outbox(fleet.tenant, "load"), load.seal(env))
    await load.flush()
    decisions = await fleet.decisions(lambda ds: len(ds) == 400, limit_s=60)
    assert set(fleet.deciders) == {"coord-a", "coord-b"}  # both did share the work
    assert len({d.envelope_id for d in decisions}) == 400
    assert Counter(d.verdict for d in decisions) == Counter({"accept": 250, "reject": 150})  # budget spent once

    delivered = await fleet.inbox(lambda read: len(read) >= 250)
    assert len({e.id for _, e in delivered}) == 250
    assert (await fleet.inbox_counts())["x"] == 250


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
    await worker.wait()
    await fleet.agent("tests.e2e.fleet_agents:Recorder", "worker")
    read = await fleet.inbox(lambda read: {("done", stuck, 2), ("done", after, 1)} <= set(reports(read)))
    done = [(i, a) for event, i, a in reports(read) if event == "done"]
    assert sorted(done) == sorted([(stuck, 2), (after, 1)])  # handled again after the crash, nothing lost or repeated


async def test_coordinator_refuses_to_start_on_a_bad_policy(fleet: Fleet) -> None:
    await fleet.key("coordinator", role="coordinator")
    bad = fleet.tmp / "bad.yaml"
    bad.write_text("limits:\n  fanout_per_envelope: 0\nrules:\n  - {from: a, to: [b], kinds: [shout]}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trustbus", "coordinator", "run", "-t", fleet.tenant, "--policy", str(bad),
        cwd=ROOT, env=fleet.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and out == b""
    message = err.decode()
    assert "limits.fanout_per_envelope: Input should be greater than or equal to 1" in message
    assert "rules.0.kinds.0" in message


async def test_agent_key_cannot_run_the_coordinator(fleet: Fleet) -> None:
    await fleet.key("impostor")
    policy = fleet.tmp / "p.yaml"
    policy.write_text("rules: []\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trustbus", "coordinator", "run", "-t", fleet.tenant, "--policy", str(policy),
        "--name", "impostor", cwd=ROOT, env=fleet.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and "role 'agent'" in err.decode()
