"""Held effects under a rendered per-tenant config: the attack from the agent's own seed, the server enforcing.

Billing (``NaiveBilling``, which refunds on any envelope) reads the coordinator's answer to its held call
with nothing but its own rights (a direct get of its own memory namespace); the coordinator stores it with
its own; the operator lists and approves with its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.fleet_agents import SYSTEM_DB
from tests.e2e.test_fleet_under_rendered_config import rendered
from tests.e2e.test_held_effects import MALLORY, TOOLS
from tests.processes import run
from trustbus.agents import connect_agent
from trustbus.bus import KeyDirectory, new_envelope

T = "held"
POLICY = {
    "rules": [{"from": "desk", "to": ["billing"], "kinds": ["event"]}, {"from": "*", "to": ["*"], "kinds": ["reply"]}]
}


def test_held_refund_under_a_rendered_config_from_the_agents_own_seeds(tmp_path: Path) -> None:
    roles = {"coordinator": "coordinator", "billing": "agent", "desk": "agent", "ops": "operator"}
    with rendered(tmp_path, T, roles) as deployment:
        env = deployment.env
        keys = KeyDirectory(tmp_path / "keys")
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
        (tmp_path / "tools.yaml").write_text(yaml.safe_dump(TOOLS))
        env[SYSTEM_DB] = str(tmp_path / "books.db")
        deployment.serve(["coordinator", "run", "-t", T, "--policy", str(tmp_path / "policy.yaml"), "--nkey-auth"],
                         tmp_path / "c.err")  # fmt: skip
        deployment.serve(["agent", "run", "tests.e2e.fleet_agents:NaiveBilling", "--id", "billing", "-t", T,
                          "--tools", str(tmp_path / "tools.yaml"), "--nkey-auth"], tmp_path / "b.err")  # fmt: skip

        async def as_desk() -> tuple[str, str]:
            """The attack as the desk, connected with its own nkey: a refund as a reply, then as a tainted event."""
            desk = await connect_agent(deployment.url, tenant=T, agent_id="desk", identity=keys.load(T, "desk"),
                                       nkey_auth=True)  # fmt: skip
            async with desk:
                sent = []
                for kind, taint in (("reply", ("web",)), ("event", ("web",))):
                    envelope = new_envelope(tenant=T, kind=kind, sender="desk", to=("billing",), taint=taint,
                                            payload=json.dumps(MALLORY).encode())  # fmt: skip
                    await desk.send(envelope)
                    sent.append(envelope.id)
            return sent[0], sent[1]

        reply, event = asyncio.run(as_desk())
        decisions: dict[str, dict[str, Any]] = {}

        def both_decided(envelope: dict[str, Any]) -> bool:
            for decision in envelope["decisions"]:  # one record may hold several (a batch's)
                decisions[decision["envelope_id"]] = decision
            return reply in decisions and any(d["kind"] == "effect" for d in decisions.values())

        deployment.follow(f"tb.{T}.decision.*", both_decided, idle_s=60)
        assert decisions[reply]["verdict"] == "reject" and decisions[reply]["reasons"] == ["unsolicited_reply"]
        [held] = [d for d in decisions.values() if d["kind"] == "effect"]
        assert held["verdict"] == "hold" and held["causation_id"] == event and held["sender"] == "billing"

        ops = ("--nkey", str(keys.path(T, "ops")))
        listed = run(*ops, "approvals", "list", "-t", T, "--as", "ops", "--json", env=env)
        [waiting] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert waiting["envelope_id"] == held["envelope_id"]
        assert waiting["request"] == 'issue_refund {"amount":500,"order":777}'
        assert refunds(tmp_path) == 0
        run(*ops, "approve", held["envelope_id"], "-t", T, "--as", "ops", env=env)
        answer = deployment.follow(f"tb.{T}.in.desk", lambda envelope: envelope["sender"] == "billing", idle_s=60)
        assert answer["payload"]["refunded"] == 777 and refunds(tmp_path) == 1
        for err in ("c.err", "b.err"):
            assert "Permissions Violation" not in (tmp_path / err).read_text()


def refunds(tmp_path: Path) -> int:
    path = tmp_path / "books.db"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            [count] = db.execute("SELECT count(*) FROM movements WHERE kind = 'refund'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(count)
