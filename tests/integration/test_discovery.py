"""Service discovery answers an inbox, never a reply subject that names the stream.

A `$SRV.PING` whose reply subject is a tenant stream subject would otherwise
make the answering process publish an unsigned message into that stream.
"""

from __future__ import annotations

import json

from tests.conftest import Tenant
from trustbus.bus import subjects


async def test_a_discovery_request_naming_a_stream_subject_as_its_reply_is_not_answered(tenant: Tenant) -> None:
    coordinator = await tenant.bus("coordinator")
    before = (await tenant.js.stream_info(subjects.stream_name(tenant.name))).state.last_seq
    stream_reply = subjects.outbox(tenant.name, "alice", 0)
    async with coordinator.discoverable("coordinator", lambda: {"ready": "ready"}):
        await tenant.nc.flush()
        await tenant.nc.publish("$SRV.PING", b"", reply=stream_reply)  # the attack: answer into the stream
        answer = await tenant.nc.request("$SRV.PING", b"", timeout=5)  # a legitimate ask, handled after it
    assert json.loads(answer.data)["name"] == "trustbus-coordinator"  # the inbox is answered
    after = (await tenant.js.stream_info(subjects.stream_name(tenant.name))).state.last_seq
    assert after == before  # the stream subject is not: nothing was stored
