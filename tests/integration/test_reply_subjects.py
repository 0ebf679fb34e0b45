"""The server never stores its answer to an agent, whatever reply subject the agent gives.

nats-server does not check a request's reply subject against the requester's
permissions and publishes its answer there; a stream capturing that subject
stores it. Each agent is therefore the one user of an account of its own that
imports its services from the tenant's account (bus/_nats_config.py): every
answer is delivered in the agent's account, where nothing captures a tenant
subject. Every JetStream request an agent may make is sent from alice's own
seed with a reply address of every tenant subject class, and no stream or
bucket of the tenant stores anything new. One server per module, under the
config rendered from the keyring (the deployment of test_mediation_enforced).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from tests.integration.test_mediation_enforced import (
    MEMORY,
    STREAM,
    TIMEOUT,
    Conn,
    Connect,
    Deployment,
    T,
    connect,
    deployment,
    signed,
)
from trustbus.bus import AGENT_API_PREFIX, Bus, new_envelope, new_key, subjects

__all__ = ["connect", "deployment"]  # fixtures, shared with test_mediation_enforced

KEYS = f"KV_{subjects.keyring_bucket(T)}"
LEASES = f"KV_{subjects.coordinator_bucket(T)}"
STORES = (STREAM, KEYS, MEMORY, LEASES, subjects.given_up_stream(T))
API = AGENT_API_PREFIX
CONSUMER = subjects.inbox_consumer("alice")


def reply_addresses(deployment: Deployment) -> dict[str, str]:
    """One tenant subject of every class a stored answer would corrupt, by class."""
    return {
        "decision": subjects.decision(T, 0),
        "approval": subjects.approval(T, 0),
        "inbox": subjects.inbox(T, "bob"),
        "outbox": subjects.outbox(T, "bob", 0),
        "effect": subjects.effect_record(T, "bob", 0, "k1"),
        "checkpoint": subjects.checkpoint(T),
        "memory key": f"$KV.{subjects.memory_bucket(T)}.bob.note",
        "agent checkpoint key": f"$KV.{subjects.memory_bucket(T)}.bob.checkpoint",  # agents/_runtime.read_checkpoint
        "lease key": f"$KV.{subjects.coordinator_bucket(T)}.partition-0",  # agents/_partitions
        "keyring key": f"$KV.{subjects.keyring_bucket(T)}.{deployment.identity('bob').key_id}",
    }


def own_subjects() -> dict[str, str]:
    """The subjects alice may publish to herself, by class: an answer there is stored like her own publish."""
    return {
        "quarantine": subjects.quarantine(T),
        "its own outbox": subjects.outbox(T, "alice", 0),
        "its own effect": subjects.effect_record(T, "alice", 0, "k3"),
    }


@dataclass(frozen=True)
class Request:
    """One request an agent may make: its subject and body, given the ack subjects of its fetched messages."""

    subject: Callable[[list[str]], str]
    body: bytes
    stores: int = 0  # what the legitimate request itself adds to the tenant stream (a publish)


def _publish(subject: str) -> Request:
    """A publish with a JetStream ack (its body is a fresh signed envelope each time)."""
    return Request(lambda _: subject, b"", stores=1)


REQUESTS: dict[str, Request] = {
    "fetch, nothing waiting": Request(
        lambda _: f"{API}.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}", json.dumps({"batch": 1, "no_wait": True}).encode()
    ),
    "consumer info": Request(lambda _: f"{API}.CONSUMER.INFO.{STREAM}.{CONSUMER}", b""),
    "stream info, every subject listed": Request(
        lambda _: f"{API}.STREAM.INFO.{STREAM}", json.dumps({"subjects_filter": ">"}).encode()
    ),
    "keyring read": Request(lambda _: f"{API}.STREAM.MSG.GET.{KEYS}", json.dumps({"seq": 1}).encode()),
    "memory direct get": Request(
        lambda _: f"{API}.DIRECT.GET.{MEMORY}.$KV.{subjects.memory_bucket(T)}.alice.note", b""
    ),
    "effect record direct get": Request(
        lambda _: f"{API}.DIRECT.GET.{STREAM}.{subjects.effect_record(T, 'alice', 0, 'k1')}", b""
    ),
    "JetStream API of its own account": Request(lambda _: f"$JS.API.STREAM.INFO.{STREAM}", b""),
    "ack": Request(lambda acks: acks[0], b"+ACK"),
    "nak": Request(lambda acks: acks[1], b"-NAK"),
    "in progress": Request(lambda acks: acks[2], b"+WPI"),
    "term": Request(lambda acks: acks[3], b"+TERM"),
    "publish to its outbox": _publish(subjects.outbox(T, "alice", 0)),
    "publish an effect record": _publish(subjects.effect_record(T, "alice", 0, "k2")),
    "publish to quarantine": _publish(subjects.quarantine(T)),
}


async def last_sequences(admin: Conn) -> dict[str, int]:
    """The last sequence of every stream and bucket of the tenant."""
    return {name: (await admin.js.stream_info(name)).state.last_seq for name in STORES}


async def inbox_consumer(coordinator: Conn) -> None:
    """Alice's inbox consumer, made by the coordinator as in a deployment."""
    config = ConsumerConfig(
        durable_name=CONSUMER, filter_subject=subjects.inbox(T, "alice"), ack_policy=AckPolicy.EXPLICIT
    )
    await coordinator.js.add_consumer(STREAM, config)


async def deliveries(coordinator: Conn, alice: Conn, count: int) -> list[str]:
    """Deliver ``count`` envelopes to alice's inbox; she fetches them (legitimately): their ack subjects."""
    await inbox_consumer(coordinator)
    for _ in range(count):
        body, headers = signed(coordinator, "alice")
        await coordinator.js.publish(subjects.inbox(T, "alice"), body, headers=headers)
    sub = await alice.js.pull_subscribe_bind(CONSUMER, stream=STREAM)
    fetched = await sub.fetch(count, timeout=2)
    await sub.unsubscribe()
    return [msg.reply for msg in fetched]


OPERATOR_REQUESTS: dict[str, Request] = {
    "decision log read": Request(
        lambda _: f"{API}.STREAM.MSG.GET.{STREAM}",
        json.dumps({"seq": 1, "next_by_subj": subjects.all_decisions(T)}).encode(),
    ),
    "memory read": Request(lambda _: f"{API}.STREAM.MSG.GET.{MEMORY}", json.dumps({"seq": 1}).encode()),
    "stream info": Request(lambda _: f"{API}.STREAM.INFO.{STREAM}", b""),
    "keyring read": REQUESTS["keyring read"],
    "publish an approval": _publish(subjects.approval(T, 0)),
    "publish to its outbox": _publish(subjects.outbox(T, "ops", 0)),
}


async def stores_nothing(deployment: Deployment, user: Conn, admin: Conn, request: Request, acks: list[str]) -> None:
    """``user`` sends ``request`` with every reply address but its own publish subjects: nothing new is stored.

    A legitimate publish adds its own message (on its own subject) and nothing else.
    """
    subject = request.subject(acks)
    own = {subjects.approval(T, 0)} if user.owner == "ops" else set()
    targets = [target for target in reply_addresses(deployment).values() if target not in own]
    before = await last_sequences(admin)
    for target in targets:
        body, headers = signed(user, "bob") if request.stores else (request.body, None)
        await user.nc.publish(subject, body, reply=target, headers=headers)
    # The same request answered to the user's own inbox: the answers above were sent before this one.
    if not subject.startswith("$JS.API."):
        body, headers = signed(user, "bob") if request.stores else (request.body, None)
        await user.nc.request(subject, body, timeout=TIMEOUT * 2, headers=headers)
    after = await last_sequences(admin)
    grown = {name: after[name] - before[name] for name in STORES}
    assert grown == {**{name: 0 for name in STORES}, STREAM: request.stores * (len(targets) + 1)}, grown
    if request.stores:
        # What was stored is the publish itself, on its own subject.
        for seq in range(before[STREAM] + 1, after[STREAM] + 1):
            assert (await admin.js.get_msg(STREAM, seq)).subject == subject
    assert user.errors.empty()


@pytest.mark.parametrize("kind", list(REQUESTS))
async def test_reply_subject_pointed_at_a_tenant_subject_stores_nothing(
    deployment: Deployment, connect: Connect, kind: str
) -> None:
    """Alice's request, with each tenant subject class as its reply address, adds nothing to any stream or bucket."""
    alice, coordinator, admin = await connect("alice"), await connect("coordinator"), await connect("admin")
    await inbox_consumer(coordinator)
    acks = await deliveries(coordinator, alice, 4) if kind in ("ack", "nak", "in progress", "term") else []
    await stores_nothing(deployment, alice, admin, REQUESTS[kind], acks)


@pytest.mark.parametrize("kind", list(OPERATOR_REQUESTS))
async def test_an_operators_reply_subject_pointed_at_a_tenant_subject_stores_nothing(
    deployment: Deployment, connect: Connect, kind: str
) -> None:
    """An operator is an account of its own too: its requests' answers are never stored on a tenant subject."""
    ops, admin = await connect("ops"), await connect("admin")
    await stores_nothing(deployment, ops, admin, OPERATOR_REQUESTS[kind], [])


async def test_an_answer_pointed_at_a_subject_the_agent_may_publish_to_lands_there_only(connect: Connect) -> None:
    """Alice's own publish subjects are imported into her account, so an answer sent there is stored there.

    That stores no more than alice may publish herself (unsigned junk of hers, which readers treat as foreign):
    the answer never reaches a subject she may not publish to.
    """
    alice, coordinator, admin = await connect("alice"), await connect("coordinator"), await connect("admin")
    await inbox_consumer(coordinator)
    before = await last_sequences(admin)
    for target in own_subjects().values():
        await alice.nc.publish(f"{API}.CONSUMER.INFO.{STREAM}.{CONSUMER}", b"", reply=target)
    await alice.nc.request(f"{API}.CONSUMER.INFO.{STREAM}.{CONSUMER}", b"", timeout=TIMEOUT * 2)
    after = await last_sequences(admin)
    assert {name: after[name] - before[name] for name in STORES if name != STREAM} == {
        name: 0 for name in STORES if name != STREAM
    }
    stored = [(await admin.js.get_msg(STREAM, seq)).subject for seq in range(before[STREAM] + 1, after[STREAM] + 1)]
    assert stored and set(stored) <= set(own_subjects().values()), stored


async def test_the_check_sees_an_answer_stored_when_the_requester_is_in_the_tenant_account(
    connect: Connect,
) -> None:
    """The measure above is not blind: the ledger user, still in the tenant's account, gets its answer stored.

    This is the residual risk docs/THREAT_MODEL.md names for the users of the tenant account
    (coordinator, ledger): they cannot be moved out of it while they create consumers.
    """
    ledger, admin = await connect("ledger"), await connect("admin")
    before = await last_sequences(admin)
    await ledger.nc.publish(f"$JS.API.STREAM.INFO.{STREAM}", b"", reply=subjects.decision(T, 0))
    await ledger.nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=TIMEOUT * 2)
    after = await last_sequences(admin)
    assert after[STREAM] == before[STREAM] + 1
    stored = await admin.js.get_msg(STREAM, after[STREAM])
    assert stored.subject == subjects.decision(T, 0) and b"config" in (stored.data or b"")


async def test_an_agent_bus_works_through_its_account_and_follows_the_keyring(
    deployment: Deployment, connect: Connect
) -> None:
    """Twin: Bus.connect from alice's seed finds the imported API, publishes with an ack, fetches and acks
    its inbox, and learns a key issued after it connected (a keyring write is a notice, the read a message get).
    """
    coordinator = await connect("coordinator")
    alice = deployment.identity("alice")
    bus = await Bus.connect(
        deployment.url, tenant=T, name="alice", identity=alice, nkey_auth=True,
        inbox_prefix=subjects.reply_prefix("alice"),
    )  # fmt: skip
    try:
        envelope = new_envelope(tenant=T, kind="event", sender="alice", to=["bob"], payload=b"hello")
        ack = await bus.send(envelope)
        assert ack.stream == STREAM and not ack.duplicate

        await inbox_consumer(coordinator)
        body, headers = signed(coordinator, "alice")
        await coordinator.js.publish(subjects.inbox(T, "alice"), body, headers=headers)
        own = bus._js  # alice's own JetStream context: the API under her account's import prefix
        info = await own.consumer_info(STREAM, CONSUMER)
        sub = await own.pull_subscribe_bind(CONSUMER, stream=STREAM)
        fetched = await sub.fetch(info.num_pending, timeout=2)  # what earlier tests left, then ours
        for msg in fetched:
            await msg.ack_sync(timeout=2)
        await sub.unsubscribe()
        assert fetched[-1].data == body  # and every ack_sync above was confirmed by the server

        owner = f"late-{uuid.uuid4().hex[:8]}"
        grant = await new_key(
            [deployment.url], T, owner, role="operator", keys=deployment.keys, nkey_seed=deployment.admin.nkey_seed
        )
        async with asyncio.timeout(5):
            while not bus.keyring.keyring.knows(grant.key_id):  # noqa: ASYNC110 (the keyring has no event to await)
                await asyncio.sleep(0.01)
    finally:
        await bus.aclose()


@pytest.mark.parametrize("owner", ["alice", "ledger", "ops", "coordinator"])
async def test_a_push_consumer_on_the_keyring_pointed_at_the_decision_log_is_refused(
    connect: Connect, owner: str
) -> None:
    """Nobody but the admin may create a consumer on the keyring bucket: its deliver subject is not checked.

    The keyring is read by message get and followed by subscription (bus.KeyringStore), so no reader needs one.
    """
    user, admin = await connect(owner), await connect("admin")
    api = API if owner == "alice" else "$JS.API"
    before = await last_sequences(admin)
    config = {"deliver_subject": subjects.decision(T, 0), "deliver_policy": "all", "ack_policy": "none"}
    subject = f"{api}.CONSUMER.CREATE.{KEYS}"
    await user.nc.publish(
        subject, json.dumps({"stream_name": KEYS, "config": config}).encode(), reply=user.nc.new_inbox()
    )
    await user.nc.flush(timeout=TIMEOUT)
    await user.refused(subject)
    assert [c.name for c in await admin.js.consumers_info(KEYS)] == []
    assert await last_sequences(admin) == before
