"""A sender may not make the server keep a consumer per recipient name it invents."""

from __future__ import annotations

import nats.js.errors
import pytest

from tests.e2e.fleet import Fleet

POLICY = {"limits": {"fanout_per_envelope": 32}, "rules": [{"from": "*", "to": ["*"], "kinds": ["event"]}]}


async def test_names_that_own_no_key_get_their_forwards_stored_but_no_inbox_consumer(fleet: Fleet) -> None:
    await fleet.coordinator(POLICY)
    await fleet.key("bob")  # an agent of the tenant
    mallory = await fleet.bus("mallory")
    invented = [f"ghost-{i}" for i in range(20)]
    await fleet.send(mallory, ["bob", *invented], {"spam": True})

    await fleet.inbox(lambda read: len(read) == 21)
    counts = await fleet.inbox_counts()

    js = fleet.nc.jetstream()
    assert (await js.consumer_info(f"TB_{fleet.tenant}", "in-bob")).name == "in-bob"  # the twin: a real agent's
    for name in invented:
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(f"TB_{fleet.tenant}", f"in-{name}")
    assert counts["bob"] == 1 and all(counts[name] == 1 for name in invented)  # every forward stored
