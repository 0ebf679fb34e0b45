"""Mediation enforced by the server: a rendered tenant config, on a real server, refuses every bypass.

One server per module, started on the bootstrap config (only the tenant admin),
provisioned as the admin, then reloaded (SIGHUP) with the config rendered from
the keyring: agents alice, bob and carol, a coordinator and a ledger. Refusals reach a
client only through its ``error_cb`` (nats-py lowercases the server's message);
a denied request gets no reply. Connection attempts that the server is expected
to refuse use the raw protocol or a subprocess: nats-py leaks the socket of a
refused connection, which filterwarnings=error turns into a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.processes import one_shot, one_shot_async
from trustbus.agents._memory_outcomes import outcome_key
from trustbus.bus import (
    AGENT_API_PREFIX,
    Bus,
    EmbeddedServer,
    Identity,
    KeyDirectory,
    KeyringStore,
    TransportError,
    find_server_binary,
    init_tenant,
    list_keys,
    new_envelope,
    new_key,
    open_envelope,
    reload_until_wired,
    render_bootstrap_config,
    render_tenant_config,
    revoke_key,
    seal,
    subjects,
    tail,
)
from trustbus.bus._bucket import NatsBucket

T = "med"
STREAM = subjects.stream_name(T)
MEMORY = f"KV_{subjects.memory_bucket(T)}"
AGENTS = ("alice", "bob", "carol")
API = AGENT_API_PREFIX.lower()  # where an agent's client calls the tenant's JetStream API (its account imports it)
TIMEOUT = 1  # seconds; an int because nats-py types flush(timeout=) as int


@dataclass
class Deployment:
    """The module's server, its config file, the tenant's seed directory and the admin's seed."""

    server: EmbeddedServer
    config: Path
    keys: KeyDirectory
    admin: Identity

    @property
    def url(self) -> str:
        return self.server.url

    def identity(self, owner: str) -> Identity:
        return self.keys.load(T, owner)

    async def render_and_reload(
        self, *, until_accepted: Identity | None = None, until_refused: Identity | None = None
    ) -> None:
        """Render the config from the keyring, SIGHUP the server, wait until it applies (by a raw connect)."""
        grants = await list_keys([self.url], T, nkey_seed=self.admin.nkey_seed)
        self.config.write_text(render_tenant_config(T, grants))
        assert self.server.pid is not None
        if until_accepted is not None:  # an agent: two reloads, until its account's imports answer
            owner = next(g.owner for g in grants if g.key_id == until_accepted.key_id)
            await reload_until_wired(self.server.pid, self.url, tenant=T, agent=until_accepted, agent_name=owner)
            return
        os.kill(self.server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if until_accepted is not None and await raw_connect(self.server, until_accepted) == b"PONG\r\n":
                return
            if until_refused is not None and (await raw_connect(self.server, until_refused)).startswith(b"-ERR"):
                return
        pytest.fail("the server did not apply the reloaded config within 5s")


async def raw_connect(server: EmbeddedServer, identity: Identity | None) -> bytes:
    """Connect by the raw protocol (nkey signature over the server's nonce, or anonymous); the reply to PING."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), TIMEOUT))[len(b"INFO ") :])
        options: dict[str, object] = {"verbose": False, "pedantic": False, "protocol": 1}
        if identity is not None:
            options["nkey"] = identity.key_id
            options["sig"] = base64.b64encode(identity.sign(info["nonce"].encode())).decode()
        writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Bootstrap config -> server -> init and keys as the admin -> full config -> reload."""
    root = tmp_path_factory.mktemp("mediation")
    keys = KeyDirectory(root / "keys")
    admin = keys.admin(T)
    config = root / "nats.conf"
    config.write_text(render_bootstrap_config(T, admin.key_id))
    with EmbeddedServer(port=0, data_dir=root / "js", config=config) as server:
        deployment = Deployment(server=server, config=config, keys=keys, admin=admin)

        async def provision() -> None:
            await init_tenant([server.url], T, keys=keys, nkey_seed=admin.nkey_seed)
            for agent in AGENTS:
                await new_key([server.url], T, agent, role="agent", keys=keys, nkey_seed=admin.nkey_seed)
            await new_key([server.url], T, "coordinator", role="coordinator", keys=keys, nkey_seed=admin.nkey_seed)
            await new_key([server.url], T, "ledger", role="ledger", keys=keys, nkey_seed=admin.nkey_seed)
            await new_key([server.url], T, "ops", role="operator", keys=keys, nkey_seed=admin.nkey_seed)
            await deployment.render_and_reload(until_accepted=keys.load(T, "alice"))

        asyncio.run(provision())
        yield deployment


@dataclass
class Conn:
    """A raw nats-py connection as one user, with the errors its ``error_cb`` received."""

    owner: str
    identity: Identity
    nc: Client
    js: JetStreamContext
    errors: asyncio.Queue[Exception]
    closed: asyncio.Event

    async def next_error(self) -> str:
        """The next asynchronous error, lowercased; fails the test if none comes in time."""
        try:
            return str(await asyncio.wait_for(self.errors.get(), TIMEOUT)).lower()
        except TimeoutError:
            pytest.fail(f"{self.owner}: no asynchronous error within {TIMEOUT}s")

    async def refused(self, subject: str) -> None:
        """Assert the next error is a publish permissions violation on ``subject``."""
        error = await self.next_error()
        assert error == f'nats: permissions violation for publish to "{subject.lower()}"', error


Connect = Callable[[str], Awaitable[Conn]]


@pytest.fixture
async def connect(deployment: Deployment) -> AsyncIterator[Connect]:
    """Connect as a key owner with its nkey and, but for the admin, its own reply prefix."""
    opened: list[Client] = []

    async def _connect(owner: str) -> Conn:
        errors: asyncio.Queue[Exception] = asyncio.Queue()
        closed = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            errors.put_nowait(exc)

        async def on_closed() -> None:
            closed.set()

        options: dict[str, object] = {}
        if owner != "admin":
            options["inbox_prefix"] = subjects.reply_prefix(owner).encode()
        identity = deployment.identity(owner)
        nc = await nats.connect(
            deployment.url,
            nkeys_seed_str=identity.nkey_seed,
            error_cb=on_error,
            closed_cb=on_closed,
            connect_timeout=2,
            allow_reconnect=False,
            **options,  # type: ignore[arg-type]
        )
        opened.append(nc)
        # An agent or operator reaches the tenant's JetStream API through its account's imports
        # (bus._api.tenant_jetstream).
        prefix = AGENT_API_PREFIX if owner in (*AGENTS, "ops") else "$JS.API"
        return Conn(owner, identity, nc, nc.jetstream(timeout=TIMEOUT, prefix=prefix), errors, closed)

    yield _connect
    for nc in opened:
        await nc.close()


async def last_body(js: JetStreamContext, stream: str, subject: str) -> bytes | None:
    """The newest message on ``subject`` in ``stream``, or None."""
    try:
        return (await js.get_last_msg(stream, subject)).data
    except nats.js.errors.NotFoundError:
        return None


async def message_count(js: JetStreamContext) -> int:
    return (await js.stream_info(STREAM)).state.messages


def signed(conn: Conn, to: str) -> tuple[bytes, dict[str, str]]:
    """A fresh envelope signed by ``conn``'s owner, addressed to ``to``: its body and headers."""
    envelope = new_envelope(tenant=T, kind="event", sender=conn.owner, to=[to], payload=uuid.uuid4().hex.encode())
    sealed = seal(envelope, conn.identity)
    return sealed.body, dict(sealed.headers)


# -- the config itself -----------------------------------------------------


def test_rendered_configs_pass_the_server_check(deployment: Deployment, tmp_path: Path) -> None:
    """nats-server -t accepts the running config, the bootstrap config and the accounts-only block included."""
    binary = str(find_server_binary())
    bootstrap = tmp_path / "bootstrap.conf"
    bootstrap.write_text(render_bootstrap_config(T, deployment.admin.key_id))
    fragment = tmp_path / "accounts.conf"
    grants = asyncio.run(list_keys([deployment.url], T, nkey_seed=deployment.admin.nkey_seed))
    fragment.write_text(render_tenant_config(T, grants, standalone=False))
    including = tmp_path / "including.conf"
    including.write_text("jetstream {}\ninclude ./accounts.conf\n")
    for config in (deployment.config, bootstrap, including):
        result = one_shot([binary, "-c", str(config), "-t"], timeout_s=30)
        assert result.returncode == 0, result.stdout + result.stderr


async def test_anonymous_and_unknown_keys_are_refused(deployment: Deployment) -> None:
    """Only keys in the rendered config may connect: no anonymous users, no unknown nkeys."""
    refused = b"-ERR 'Authorization Violation'\r\n"
    assert await raw_connect(deployment.server, None) == refused
    assert await raw_connect(deployment.server, Identity.generate()) == refused
    assert await raw_connect(deployment.server, deployment.identity("bob")) == b"PONG\r\n"


# -- legitimate traffic ----------------------------------------------------
# nats-py directly, with the same library calls bus.Bus makes (Bus.connect = nats.connect with the nkey and
# reply prefix + KeyringStore.open; publish = a JetStream publish with ack; ensure_consumer = a durable create).


async def test_agent_loads_the_keyring_and_publishes_to_own_outbox(connect: Connect) -> None:
    """Alice loads the keyring as Bus.connect does; her signed envelope to her outbox is acked and stored."""
    alice, admin = await connect("alice"), await connect("admin")
    async with await KeyringStore.open(alice.js, T) as keyring:
        assert keyring.keyring.resolve(alice.identity.key_id).owner == "alice"
    body, headers = signed(alice, "bob")
    ack = await alice.js.publish(subjects.outbox(T, "alice", 0), body, headers=headers)
    assert ack.stream == STREAM and not ack.duplicate
    assert await last_body(admin.js, STREAM, subjects.outbox(T, "alice", 0)) == body
    assert alice.errors.empty()


async def test_coordinator_delivers_to_an_inbox_the_agent_fetches_and_acks(connect: Connect) -> None:
    """The coordinator reads outboxes, makes in-alice and delivers; alice binds, fetches, verifies and acks."""
    alice, coordinator = await connect("alice"), await connect("coordinator")
    sent, headers = signed(alice, "bob")
    await alice.js.publish(subjects.outbox(T, "alice", 0), sent, headers=headers)
    async with await KeyringStore.open(coordinator.js, T) as keyring:
        read = [
            item
            async for item in tail(
                coordinator.js, keyring, T, subject=subjects.outbox(T, "alice", 0), idle_timeout_s=0.2
            )
        ]
    assert read[-1].opened is not None and read[-1].opened.envelope.sender == "alice"

    consumer = subjects.inbox_consumer("alice")
    await coordinator.js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=consumer, filter_subject=subjects.inbox(T, "alice"), ack_policy=AckPolicy.EXPLICIT),
    )
    delivered, headers = signed(coordinator, "alice")
    await coordinator.js.publish(subjects.inbox(T, "alice"), delivered, headers=headers)

    async with await KeyringStore.open(alice.js, T) as keyring:
        sub = await alice.js.pull_subscribe_bind(consumer, stream=STREAM)
        info = await alice.js.consumer_info(STREAM, consumer)
        assert info.config.filter_subject == subjects.inbox(T, "alice")
        [msg] = await sub.fetch(1, timeout=2)
        opened = open_envelope(msg.data, msg.headers or {}, keyring=keyring.keyring, received_ns=time.time_ns())
        assert opened.envelope.sender == "coordinator" and msg.data == delivered
        await msg.ack_sync(timeout=2)
        await sub.unsubscribe()
    after = await coordinator.js.consumer_info(STREAM, consumer)
    assert after.num_ack_pending == 0 and after.delivered.stream_seq == msg.metadata.sequence.stream
    assert alice.errors.empty() and coordinator.errors.empty()


async def test_agent_reads_its_own_memory_key(connect: Connect) -> None:
    """The coordinator writes alice's memory; alice reads her own key by direct get (twin of the bob attack)."""
    coordinator = await connect("coordinator")
    key = f"$KV.{subjects.memory_bucket(T)}.alice.note"
    await coordinator.js.publish(key, b"alice's note")
    alice = await connect("alice")
    assert (await alice.js.get_last_msg(MEMORY, key, direct=True)).data == b"alice's note"
    assert alice.errors.empty() and coordinator.errors.empty()


async def test_ledger_reads_through_its_own_consumer_and_may_delete_only_that(connect: Connect) -> None:
    """The ledger service's calls: make `ledger` from a sequence, fetch, ack all, delete it, make it anew.

    Deleting any other consumer (an agent's inbox consumer, the coordinator's) is refused.
    """
    ledger, coordinator, admin = await connect("ledger"), await connect("coordinator"), await connect("admin")
    await coordinator.js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name="in-bob", filter_subject=subjects.inbox(T, "bob"), ack_policy=AckPolicy.EXPLICIT),
    )
    body, headers = signed(coordinator, "bob")
    for _ in range(3):
        await coordinator.js.publish(subjects.inbox(T, "bob"), body, headers=headers)
    last = (await admin.js.stream_info(STREAM)).state.last_seq

    def config(start: int) -> ConsumerConfig:
        return ConsumerConfig(
            name="ledger", durable_name="ledger", filter_subject=f"tb.{T}.>", ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, ack_wait=600, max_ack_pending=1000,
        )  # fmt: skip

    await ledger.js.add_consumer(STREAM, config(last - 2))  # $JS.API.CONSUMER.CREATE.TB_med.ledger.tb.med.>
    sub = await ledger.js.pull_subscribe_bind("ledger", stream=STREAM)
    msgs = await sub.fetch(3, timeout=2)
    assert [m.metadata.sequence.stream for m in msgs] == [last - 2, last - 1, last]
    await msgs[-1].ack_sync(timeout=2)
    info = await ledger.js.consumer_info(STREAM, "ledger")
    assert info.ack_floor is not None and info.ack_floor.stream_seq == last and info.num_ack_pending == 0
    assert await ledger.js.delete_consumer(STREAM, "ledger")  # $JS.API.CONSUMER.DELETE.TB_med.ledger
    await ledger.js.add_consumer(STREAM, config(last))
    [again] = await sub.fetch(1, timeout=2)
    assert again.metadata.sequence.stream == last and again.metadata.sequence.consumer == 1
    await sub.unsubscribe()
    assert await ledger.js.delete_consumer(STREAM, "ledger")
    assert ledger.errors.empty()

    for other in ("in-bob", "coordinator"):
        await ledger.nc.publish(f"$JS.API.CONSUMER.DELETE.{STREAM}.{other}", b"", reply=ledger.nc.new_inbox())
        await ledger.nc.flush(timeout=TIMEOUT)
        await ledger.refused(f"$JS.API.CONSUMER.DELETE.{STREAM}.{other}")
    assert (await coordinator.js.consumer_info(STREAM, "in-bob")).config.filter_subject == subjects.inbox(T, "bob")


# -- attacks, each refused by the server -----------------------------------


async def test_agent_cannot_publish_to_another_agents_inbox_outbox_or_decisions(connect: Connect) -> None:
    """Alice's signed envelopes to bob's inbox and outbox and to decisions are refused and not stored."""
    alice, admin = await connect("alice"), await connect("admin")
    before = await message_count(admin.js)
    forged = {
        subject: signed(alice, "bob")
        for subject in (subjects.inbox(T, "bob"), subjects.outbox(T, "bob", 0), subjects.decision(T, 0))
    }
    for subject, (body, headers) in forged.items():
        await alice.nc.publish(subject, body, headers=headers)
    await alice.nc.flush(timeout=TIMEOUT)
    for subject in forged:
        await alice.refused(subject)

    # A legitimate publish after the forged ones is stored; nothing else was.
    body, headers = signed(alice, "bob")
    await alice.js.publish(subjects.outbox(T, "alice", 0), body, headers=headers)
    assert await message_count(admin.js) == before + 1
    for subject, (body, _) in forged.items():
        assert await last_body(admin.js, STREAM, subject) != body


async def test_a_bus_publish_the_server_refuses_fails_at_once_with_the_reason(deployment: Deployment) -> None:
    """Bus.publish gets no answer to a refused publish; it fails on the server's error, not after its re-sends."""
    alice = deployment.identity("alice")
    bus = await Bus.connect(
        deployment.url, tenant=T, name="alice", identity=alice, nkey_auth=True,
        inbox_prefix=subjects.reply_prefix("alice"), publish_timeout_s=10.0,
    )  # fmt: skip
    try:
        envelope = new_envelope(tenant=T, kind="event", sender="alice", to=["bob"], payload=b"1")
        with pytest.raises(TransportError, match=r"(?i)refused by the server: .*permissions violation") as refused:
            await bus.publish(subjects.outbox(T, "bob", 0), bus.seal(envelope))
        assert subjects.outbox(T, "bob", 0) in str(refused.value)
        # The twin: her own outbox is acked, on the same connection.
        ack = await bus.publish(subjects.outbox(T, "alice", 0), bus.seal(envelope))
        assert ack.stream == STREAM
    finally:
        await bus.aclose()


async def test_coordinator_cannot_forge_an_agents_outbox_or_touch_the_stream(connect: Connect) -> None:
    """Even the mediator cannot publish as an agent, nor delete or purge the stream."""
    coordinator, admin = await connect("coordinator"), await connect("admin")
    before = await message_count(admin.js)
    body, headers = signed(coordinator, "bob")
    await coordinator.nc.publish(subjects.outbox(T, "alice", 0), body, headers=headers)
    await coordinator.nc.publish(f"$JS.API.STREAM.DELETE.{STREAM}", b"")
    await coordinator.nc.publish(f"$JS.API.STREAM.PURGE.{STREAM}", b"")
    await coordinator.nc.flush(timeout=TIMEOUT)
    for subject in (
        subjects.outbox(T, "alice", 0),
        f"$JS.API.STREAM.DELETE.{STREAM}",
        f"$JS.API.STREAM.PURGE.{STREAM}",
    ):
        await coordinator.refused(subject)
    assert await message_count(admin.js) == before


async def test_operator_sends_only_through_its_own_outbox_and_reads_memory_without_writing_it(
    connect: Connect,
) -> None:
    """An operator's rollback goes through the coordinator: its own outbox, never an agent's, an inbox or memory."""
    ops, admin = await connect("ops"), await connect("admin")
    memory_subject = f"$KV.{subjects.memory_bucket(T)}.alice.notes"
    await admin.js.publish(memory_subject, b"before")
    before = await message_count(admin.js)
    forged = {subject: signed(ops, "alice") for subject in (subjects.outbox(T, "alice", 0), subjects.inbox(T, "alice"))}
    for subject, (body, headers) in forged.items():
        await ops.nc.publish(subject, body, headers=headers)
    await ops.nc.publish(memory_subject, b"poisoned")
    await ops.nc.flush(timeout=TIMEOUT)
    for subject in (*forged, memory_subject):
        await ops.refused(subject)
    assert await message_count(admin.js) == before
    assert await last_body(admin.js, MEMORY, memory_subject) == b"before"

    # What a rollback needs: its own outbox (mediated like any sender) and reading memory.
    body, headers = signed(ops, "alice")
    await ops.js.publish(subjects.outbox(T, "ops", 0), body, headers=headers)
    assert await last_body(admin.js, STREAM, subjects.outbox(T, "ops", 0)) == body
    assert await last_body(ops.js, MEMORY, memory_subject) == b"before"


@pytest.mark.parametrize("subject", [f"tb.{T}.>", subjects.inbox(T, "bob"), "_INBOX.>", "_INBOX_bob.>", ">"])
async def test_agent_cannot_subscribe_beyond_its_reply_prefix(connect: Connect, subject: str) -> None:
    """Alice cannot listen to the tenant's subjects, bob's inbox, or anyone else's replies."""
    alice = await connect("alice")
    await alice.nc.subscribe(subject)
    await alice.nc.flush(timeout=TIMEOUT)
    error = await alice.next_error()
    assert error == f'nats: permissions violation for subscription to "{subject.lower()}"', error


async def test_agent_cannot_create_or_hijack_a_consumer_on_the_tenant_stream(connect: Connect) -> None:
    """Alice can neither create a consumer on TB_<tenant> (any form) nor re-point bob's, nor fetch from it."""
    alice, coordinator = await connect("alice"), await connect("coordinator")
    await coordinator.js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=subjects.inbox_consumer("bob"),
            filter_subject=subjects.inbox(T, "bob"),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    spy = {"name": "spy", "durable_name": "spy", "filter_subject": f"tb.{T}.>", "ack_policy": "explicit"}
    widened = {**spy, "name": "in-bob", "durable_name": "in-bob"}
    attempts = {
        f"$JS.API.CONSUMER.CREATE.{STREAM}": widened,  # the unnamed form: would update in-bob
        f"$JS.API.CONSUMER.CREATE.{STREAM}.spy": spy,
        f"$JS.API.CONSUMER.CREATE.{STREAM}.spy.tb.{T}.>": spy,
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.spy": spy,
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.in-bob": {"batch": 1},
    }
    for subject, config in attempts.items():
        body = {"stream_name": STREAM, "config": config} if "MSG.NEXT" not in subject else config
        await alice.nc.publish(subject, json.dumps(body).encode(), reply=alice.nc.new_inbox())
    await alice.nc.flush(timeout=TIMEOUT)
    for subject in attempts:
        await alice.refused(subject)
    with pytest.raises(nats.js.errors.NotFoundError):
        await coordinator.js.consumer_info(STREAM, "spy")
    info = await coordinator.js.consumer_info(STREAM, "in-bob")
    assert info.config.filter_subject == subjects.inbox(T, "bob") and info.delivered.stream_seq == 0

    # Through nats-py the refusal is only a timeout.
    with pytest.raises(nats.errors.TimeoutError):
        await alice.js.add_consumer(STREAM, ConsumerConfig(durable_name="spy2", filter_subject=f"tb.{T}.>"))
    await alice.refused(f"{AGENT_API_PREFIX}.CONSUMER.DURABLE.CREATE.{STREAM}.spy2")


async def test_agent_cannot_delete_purge_or_update_the_stream(connect: Connect) -> None:
    """The destructive JetStream API is denied to an agent; the stream and its messages stay."""
    alice, admin = await connect("alice"), await connect("admin")
    before = await admin.js.stream_info(STREAM)
    outcomes = await asyncio.gather(
        alice.js.delete_stream(STREAM), alice.js.purge_stream(STREAM), return_exceptions=True
    )
    assert all(isinstance(o, nats.errors.TimeoutError) for o in outcomes), outcomes
    refused = {await alice.next_error(), await alice.next_error()}
    assert refused == {
        f'nats: permissions violation for publish to "{API}.stream.delete.{STREAM.lower()}"',
        f'nats: permissions violation for publish to "{API}.stream.purge.{STREAM.lower()}"',
    }
    for subject in (f"$JS.API.STREAM.UPDATE.{STREAM}", f"$JS.API.STREAM.MSG.DELETE.{MEMORY}"):
        await alice.nc.publish(subject, b"{}")
        await alice.nc.flush(timeout=TIMEOUT)
        await alice.refused(subject)
    after = await admin.js.stream_info(STREAM)
    assert after.config == before.config and after.state.messages == before.state.messages


async def cannot_read_memory(conn: Conn, subject: str) -> None:
    """Assert ``conn`` can read memory ``subject`` neither by direct get nor by the body-addressed message get."""
    outcomes = await asyncio.gather(
        conn.js.get_last_msg(MEMORY, subject, direct=True),
        conn.js.get_last_msg(MEMORY, subject),
        return_exceptions=True,
    )
    assert all(isinstance(o, nats.errors.TimeoutError) for o in outcomes), outcomes
    refused = {await conn.next_error(), await conn.next_error()}
    assert refused == {
        f'nats: permissions violation for publish to "{API}.direct.get.{MEMORY}.{subject}"'.lower(),
        f'nats: permissions violation for publish to "{API}.stream.msg.get.{MEMORY}"'.lower(),
    }


async def test_agent_cannot_read_another_agents_memory(connect: Connect) -> None:
    """Bob's memory key is out of alice's reach, by direct get and by the body-addressed message get."""
    coordinator, alice = await connect("coordinator"), await connect("alice")
    bobs = f"$KV.{subjects.memory_bucket(T)}.bob.secret"
    await coordinator.js.publish(bobs, b"bob's secret")
    await cannot_read_memory(alice, bobs)
    # Writing memory directly is refused too: only the coordinator writes it.
    await alice.nc.publish(f"$KV.{subjects.memory_bucket(T)}.alice.note", b"self-granted")
    await alice.nc.flush(timeout=TIMEOUT)
    await alice.refused(f"$KV.{subjects.memory_bucket(T)}.alice.note")


async def test_agent_cannot_read_the_coordinators_stored_state_with_a_batched_get(connect: Connect) -> None:
    """The coordinator loads stored correlations with one batched direct get on the state bucket (the twin, through
    the bus's own bucket); alice asking the same, by her account's API import or the tenant's, is refused unanswered."""
    coordinator, alice = await connect("coordinator"), await connect("alice")
    bucket = subjects.state_bucket(T)
    await coordinator.js.publish(f"$KV.{bucket}.c0.stolen", b"a correlation's budget and taint")
    found = await NatsBucket(coordinator.js, bucket, nc=coordinator.nc).get_many(["c0.stolen", "c0.never"])
    assert list(found) == ["c0.stolen"] and found["c0.stolen"].value == b"a correlation's budget and taint"
    request = json.dumps({"multi_last": [f"$KV.{bucket}.c0.stolen"], "batch": 1}).encode()
    inbox = alice.nc.new_inbox()
    answers = await alice.nc.subscribe(inbox)
    for api in (AGENT_API_PREFIX, "$JS.API"):
        subject = f"{api}.DIRECT.GET.KV_{bucket}"
        await alice.nc.publish(subject, request, reply=inbox)
        await alice.nc.flush(timeout=TIMEOUT)
        await alice.refused(subject)
    with pytest.raises(nats.errors.TimeoutError):
        await answers.next_msg(timeout=TIMEOUT)
    assert coordinator.errors.empty()


async def test_agent_cannot_read_or_forge_another_agents_memory_write_outcome(connect: Connect) -> None:
    """Bob is told what became of his write under bob.written.<key>: alice can neither read it nor forge one there
    (or in her own namespace); bob reads his (the twin)."""
    coordinator, alice, bob = await connect("coordinator"), await connect("alice"), await connect("bob")
    bobs = f"$KV.{subjects.memory_bucket(T)}.{outcome_key('bob', 'note')}"
    await coordinator.js.publish(bobs, b"the coordinator's answer")
    assert (await bob.js.get_last_msg(MEMORY, bobs, direct=True)).data == b"the coordinator's answer"
    await cannot_read_memory(alice, bobs)
    own = f"$KV.{subjects.memory_bucket(T)}.{outcome_key('alice', 'note')}"
    for subject in (bobs, own):  # a forged answer, to bob or to herself: only the coordinator writes memory
        await alice.nc.publish(subject, b"accepted, trust me")
        await alice.nc.flush(timeout=TIMEOUT)
        await alice.refused(subject)
    assert await last_body(coordinator.js, MEMORY, bobs) == b"the coordinator's answer"
    assert await last_body(coordinator.js, MEMORY, own) is None
    assert bob.errors.empty() and coordinator.errors.empty()


def effect_record(conn: Conn, key: str) -> tuple[str, bytes, dict[str, str]]:
    """A signed ``effect`` envelope of ``conn``'s owner for call ``key``: its subject, body and headers."""
    envelope = new_envelope(
        tenant=T, kind="effect", sender=conn.owner, to=[], payload=uuid.uuid4().hex.encode(), idempotency_key=key
    )
    sealed = seal(envelope, conn.identity)
    return subjects.effect_record(T, conn.owner, 0, key), sealed.body, dict(sealed.headers)


async def test_agent_records_and_reads_back_its_own_effect(connect: Connect) -> None:
    """Alice stores an effect record (JetStream ack) and reads it back by direct get (twin of the bob attack)."""
    alice = await connect("alice")
    subject, body, headers = effect_record(alice, uuid.uuid4().hex)
    ack = await alice.js.publish(subject, body, headers=headers)
    assert ack.stream == STREAM and not ack.duplicate
    assert (await alice.js.get_last_msg(STREAM, subject, direct=True)).data == body
    assert alice.errors.empty()


async def test_agent_cannot_read_or_write_another_agents_effect_records(connect: Connect) -> None:
    """Bob's effect records are out of alice's reach: no direct get, no message get, no forged record."""
    alice, bob, admin = await connect("alice"), await connect("bob"), await connect("admin")
    bobs, body, headers = effect_record(bob, uuid.uuid4().hex)
    await bob.js.publish(bobs, body, headers=headers)
    outcomes = await asyncio.gather(
        alice.js.get_last_msg(STREAM, bobs, direct=True), alice.js.get_last_msg(STREAM, bobs), return_exceptions=True
    )
    assert all(isinstance(o, nats.errors.TimeoutError) for o in outcomes), outcomes
    refused = {await alice.next_error(), await alice.next_error()}
    assert refused == {
        f'nats: permissions violation for publish to "{API}.direct.get.{STREAM}.{bobs}"'.lower(),
        f'nats: permissions violation for publish to "{API}.stream.msg.get.{STREAM}"'.lower(),
    }
    # A "completed" record alice forges for bob's call (which would stop bob's runtime from running it) is refused.
    _, forged, forged_headers = effect_record(alice, bobs.rsplit(".", 1)[1])
    await alice.nc.publish(bobs, forged, headers=forged_headers)
    await alice.nc.flush(timeout=TIMEOUT)
    await alice.refused(bobs)
    assert await last_body(admin.js, STREAM, bobs) == body
    assert bob.errors.empty()


async def test_revoked_agent_key_is_disconnected_and_cannot_connect(deployment: Deployment, connect: Connect) -> None:
    """Revoke carol's key, re-render, reload: her live connection is closed and a new one refused."""
    carol = await connect("carol")
    await revoke_key(
        [deployment.url], T, carol.identity.key_id, keys=deployment.keys, nkey_seed=deployment.admin.nkey_seed
    )
    await deployment.render_and_reload(until_refused=carol.identity)
    await asyncio.wait_for(carol.closed.wait(), 5)
    assert carol.identity.key_id not in deployment.config.read_text()

    # A real client, in a subprocess (a refused nats-py connect leaks its socket).
    script = (
        "import asyncio, sys, nats\n"
        "async def main():\n"
        "    try:\n"
        "        await nats.connect(sys.argv[1], nkeys_seed_str=sys.stdin.read(), allow_reconnect=False,\n"
        "                           max_reconnect_attempts=0, connect_timeout=2)\n"
        "    except Exception as exc:\n"
        "        print(exc)\n"
        "        sys.exit(3)\n"
        "asyncio.run(main())\n"
    )
    refused = await one_shot_async(
        [sys.executable, "-c", script, deployment.url], stdin=carol.identity.nkey_seed, timeout_s=30
    )
    assert refused.returncode == 3 and "Authorization Violation" in refused.stdout, refused.stdout + refused.stderr
    # The others are unaffected.
    assert await raw_connect(deployment.server, deployment.identity("alice")) == b"PONG\r\n"
