"""A handler slower than its inbox's ack wait (a model call) keeps what was fetched behind it: none comes twice."""

from __future__ import annotations

import json

from tests.e2e.fleet import Fleet

POLICY = {"rules": [{"from": "*", "to": ["*"], "kinds": ["event", "reply"]}]}


async def test_deliveries_waiting_behind_a_slow_handler_are_not_delivered_again(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    await fleet.agent("tests.e2e.fleet_agents:Slow", "thinker")  # 5 s per delivery; its inbox's ack wait is 4 s
    alice = await fleet.bus("alice")
    sent = [await fleet.send(alice, ["thinker"], {"q": i}) for i in range(3)]  # fetched together, handled in turn

    replies = await fleet.inbox(lambda read: sum(r == "alice" for r, _ in read) == 3, limit_s=60)

    assert sorted(json.loads(e.payload)["done"] for r, e in replies if r == "alice") == sorted(sent)
    info = await fleet.nc.jetstream().consumer_info(f"TB_{fleet.tenant}", "in-thinker")
    assert info.delivered.consumer_seq == 3  # each delivered once: the two waiting were kept in progress
