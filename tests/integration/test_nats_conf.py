"""The development server config, nats.conf: it parses, and its permissions hold on a real server.

One server per module. Permission violations reach a client only through its
``error_cb`` (nats-py lowercases the server's message, subject included); a
denied JetStream API request just times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
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
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from trustbus.bus import EmbeddedServer, find_server_binary

REPO = Path(__file__).resolve().parents[2]
NATS_CONF = REPO / "nats.conf"
STREAM = "TB_dev"
# Users confined to their own reply subjects (admin and coordinator use the shared _INBOX.>).
OWN_INBOX = ("alice", "bob", "ledger", "operator")
NON_ADMINS = ("coordinator", "ledger", "operator", "alice", "bob")
TIMEOUT = 1  # seconds; an int because nats-py types flush(timeout=) as int


@dataclass
class Conn:
    """A connection as one config user, with the errors its ``error_cb`` received."""

    user: str
    nc: Client
    js: JetStreamContext
    errors: asyncio.Queue[Exception]

    async def next_error(self) -> str:
        """The next asynchronous error, lowercased; fails the test if none comes in time."""
        try:
            return str(await asyncio.wait_for(self.errors.get(), TIMEOUT)).lower()
        except TimeoutError:
            pytest.fail(f"{self.user}: no asynchronous error within {TIMEOUT}s")


Connect = Callable[[str], Awaitable[Conn]]


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """A nats-server running nats.conf on a free port, shared by the module."""
    with EmbeddedServer(port=0, config=NATS_CONF) as srv:
        yield srv


@pytest.fixture
async def connect(server: EmbeddedServer) -> AsyncIterator[Connect]:
    """Connect as a config user (password ``dev-<user>``), with its own inbox prefix where the config wants one."""
    opened: list[Client] = []

    async def _connect(user: str) -> Conn:
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            errors.put_nowait(exc)

        options: dict[str, object] = {}
        if user in OWN_INBOX:
            options["inbox_prefix"] = f"_INBOX_{user}".encode()
        nc = await nats.connect(
            server.url,
            user=user,
            password=f"dev-{user}",
            error_cb=on_error,
            connect_timeout=2,
            allow_reconnect=False,
            **options,
        )
        opened.append(nc)
        return Conn(user, nc, nc.jetstream(timeout=TIMEOUT), errors)

    yield _connect
    for nc in opened:
        await nc.close()


def tenant_stream() -> StreamConfig:
    """TB_dev as provisioning makes it: every tenant subject, append-only."""
    return StreamConfig(name=STREAM, subjects=["tb.dev.>"], deny_delete=True, deny_purge=True)


@pytest.fixture
async def admin(connect: Connect) -> Conn:
    """The admin, with TB_dev in place (creating a stream that matches is a no-op)."""
    conn = await connect("admin")
    await conn.js.add_stream(tenant_stream())
    return conn


async def last_payload(js: JetStreamContext, subject: str) -> bytes | None:
    """The payload of the newest message on ``subject`` in TB_dev, or None."""
    try:
        return (await js.get_last_msg(STREAM, subject)).data
    except nats.js.errors.NotFoundError:
        return None


async def message_count(js: JetStreamContext) -> int:
    """How many messages TB_dev holds."""
    return (await js.stream_info(STREAM)).state.messages


async def wait_until_stored(js: JetStreamContext, subject: str, payload: bytes) -> None:
    """Poll TB_dev (bounded) until ``payload`` is the newest message on ``subject``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * TIMEOUT
    while loop.time() < deadline:
        if await last_payload(js, subject) == payload:
            return
    pytest.fail(f"{payload!r} was not stored on {subject} within {2 * TIMEOUT}s")


def unique(label: str) -> bytes:
    """A payload no other test publishes."""
    return f"{label}-{uuid.uuid4().hex}".encode()


def test_nats_conf_passes_server_config_check() -> None:
    """nats-server -t accepts nats.conf."""
    result = subprocess.run(
        [str(find_server_binary()), "-c", str(NATS_CONF), "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_admin_connects_and_creates_stream(connect: Connect) -> None:
    """The admin creates the append-only tenant stream and publishes into it with an ack."""
    admin = await connect("admin")
    info = await admin.js.add_stream(tenant_stream())
    assert info.config.deny_delete and info.config.deny_purge
    ack = await admin.js.publish("tb.dev.out.alice.0", unique("admin"))
    assert ack.stream == STREAM and ack.seq >= 1
    assert admin.errors.empty()


async def test_agent_can_publish_to_own_outbox(admin: Conn, connect: Connect) -> None:
    """Alice's core publish to her own outbox is stored in TB_dev."""
    alice = await connect("alice")
    before = await message_count(admin.js)
    payload = unique("alice-out")
    await alice.nc.publish("tb.dev.out.alice.0", payload)
    await alice.nc.flush(timeout=TIMEOUT)
    await wait_until_stored(admin.js, "tb.dev.out.alice.0", payload)
    assert await message_count(admin.js) == before + 1
    assert alice.errors.empty()


async def test_agent_cannot_publish_to_another_agents_inbox(admin: Conn, connect: Connect) -> None:
    """Alice's publishes to bob's inbox and outbox and to decisions are refused and not stored."""
    alice = await connect("alice")
    before = await message_count(admin.js)
    forged = {subject: unique("forged") for subject in ("tb.dev.in.bob", "tb.dev.out.bob.0", "tb.dev.decision.0")}
    for subject, payload in forged.items():
        await alice.nc.publish(subject, payload)
    await alice.nc.flush(timeout=TIMEOUT)
    refused = [await alice.next_error() for _ in forged]
    for subject, error in zip(forged, refused, strict=True):
        assert "permissions violation" in error and f'"{subject}"' in error, error

    # A legitimate publish sent after the forged ones is stored; nothing else was.
    marker = unique("alice-marker")
    await alice.nc.publish("tb.dev.out.alice.0", marker)
    await alice.nc.flush(timeout=TIMEOUT)
    await wait_until_stored(admin.js, "tb.dev.out.alice.0", marker)
    assert await message_count(admin.js) == before + 1
    for subject, payload in forged.items():
        assert await last_payload(admin.js, subject) != payload


async def test_non_admin_cannot_delete_stream(admin: Conn, connect: Connect) -> None:
    """No user but admin can delete or purge TB_dev: the requests are refused and the stream stays."""
    users = [await connect(user) for user in NON_ADMINS]
    before = await message_count(admin.js)
    attempts = [conn.js.delete_stream(STREAM) for conn in users] + [conn.js.purge_stream(STREAM) for conn in users]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    for outcome in outcomes:
        # A denied JetStream API request is dropped by the server: the client sees a timeout.
        assert isinstance(outcome, nats.errors.TimeoutError | nats.js.errors.APIError), outcome
    for conn in users:
        refused = {await conn.next_error(), await conn.next_error()}
        assert refused == {
            'nats: permissions violation for publish to "$js.api.stream.delete.tb_dev"',
            'nats: permissions violation for publish to "$js.api.stream.purge.tb_dev"',
        }, (conn.user, refused)
    info = await admin.js.stream_info(STREAM)
    assert info.config.name == STREAM
    assert info.state.messages == before


async def test_admin_can_delete_a_stream(admin: Conn) -> None:
    """The admin may delete a stream (twin of the refusal above, on a scratch stream)."""
    await admin.js.add_stream(StreamConfig(name="SCRATCH_dev", subjects=["scratch.dev.>"]))
    assert await admin.js.delete_stream("SCRATCH_dev")
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.js.stream_info("SCRATCH_dev")
    assert admin.errors.empty()


@pytest.mark.parametrize("subject", ["tb.dev.in.bob", "tb.dev.>", "_INBOX.>", "_INBOX_bob.>"])
async def test_agent_cannot_subscribe_to_other_inboxes(connect: Connect, subject: str) -> None:
    """Alice's subscription to another agent's inbox, or to everything, is refused."""
    alice = await connect("alice")
    await alice.nc.subscribe(subject)
    await alice.nc.flush(timeout=TIMEOUT)
    error = await alice.next_error()
    assert "permissions violation for subscription" in error and f'"{subject.lower()}"' in error, error


async def test_agent_can_subscribe_to_own_inbox_prefix(connect: Connect) -> None:
    """Alice subscribes under _INBOX_alice without error and receives what is sent there."""
    alice = await connect("alice")
    admin = await connect("admin")
    sub = await alice.nc.subscribe("_INBOX_alice.x")
    await alice.nc.flush(timeout=TIMEOUT)
    await admin.nc.publish("_INBOX_alice.x", b"reply")
    msg = await sub.next_msg(timeout=TIMEOUT)
    assert msg.data == b"reply"
    assert alice.errors.empty()


async def test_reader_cannot_repoint_agent_consumer_via_unnamed_create(admin: Conn, connect: Connect) -> None:
    """The operator cannot widen in-alice through the unnamed consumer-create API, which would update it."""
    await admin.js.add_consumer(
        STREAM, ConsumerConfig(durable_name="in-alice", filter_subject="tb.dev.in.alice", ack_policy=AckPolicy.EXPLICIT)
    )
    operator = await connect("operator")
    widened = {"name": "in-alice", "filter_subject": "tb.dev.>", "ack_policy": "explicit"}
    body = {"stream_name": STREAM, "config": widened}
    await operator.nc.publish(f"$JS.API.CONSUMER.CREATE.{STREAM}", json.dumps(body).encode())
    await operator.nc.flush(timeout=TIMEOUT)
    error = await operator.next_error()
    assert error == 'nats: permissions violation for publish to "$js.api.consumer.create.tb_dev"', error
    info = await admin.js.consumer_info(STREAM, "in-alice")
    assert info.config.filter_subject == "tb.dev.in.alice"


async def test_reader_can_create_its_own_named_consumer(admin: Conn, connect: Connect) -> None:
    """The operator creates and reads from its own consumer, named `operator` (twin of the refusal above)."""
    operator = await connect("operator")
    marker = unique("approval")
    await operator.js.publish("tb.dev.approval.0", marker)
    await operator.js.add_consumer(
        STREAM,
        ConsumerConfig(name="operator", filter_subject="tb.dev.approval.0", ack_policy=AckPolicy.NONE),
    )
    sub = await operator.js.pull_subscribe_bind("operator", stream=STREAM)
    messages = await sub.fetch(1, timeout=TIMEOUT)
    assert [m.data for m in messages] == [marker]
    assert operator.errors.empty()


async def test_anonymous_client_is_refused(server: EmbeddedServer) -> None:
    """A client without credentials is refused (the config has no no_auth_user)."""
    # Raw protocol: nats-py leaks its socket when a connect is refused, which filterwarnings=error turns into a failure.
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert info.startswith(b"INFO ") and json.loads(info[5:])["auth_required"] is True
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nPING\r\n')
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), TIMEOUT)
        assert reply == b"-ERR 'Authorization Violation'\r\n", reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
