"""Tenants as NATS accounts: two tenants on one server, and the server keeps each out of the other.

One server per module whose config holds the accounts of tenants A and B,
each rendered from its own keyring and merged into one ``accounts { }`` block
the way docs/OPERATIONS.md ("Several tenants on one server") says: bootstrap
both (each account's only user its admin), provision each tenant inside its
account with its admin seed, issue keys, render both full accounts, merge,
reload. Both tenants have users with the same names (admin, coordinator,
alice, bob).

Each attack is refused by the server: a user without the grant gets a
permissions violation (in ``error_cb``); A's admin, who may publish and
subscribe to anything, only ever reaches account A, where B's subjects have
no subscribers and B's stream and buckets do not exist. And nothing reaches
B: its stream, consumers and buckets are unchanged, its subscribers see
nothing of A. Each attack has a twin: the same operation inside the user's
own tenant succeeds.
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
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from trustbus.bus import (
    AGENT_API_PREFIX,
    EmbeddedServer,
    Identity,
    KeyDirectory,
    KeyringStore,
    find_server_binary,
    init_tenant,
    list_keys,
    new_envelope,
    new_key,
    reload_until_wired,
    render_bootstrap_config,
    render_tenant_config,
    seal,
    subjects,
)

A, B = "A", "B"
TENANTS = (A, B)
AGENTS = ("alice", "bob")
TIMEOUT = 1  # seconds: how long a refused request goes unanswered; an int because nats-py types flush(timeout=) as int
ARRIVES_S = 10  # seconds at most for what must happen (an error, a message, a flush): a bound, not a wait


def stream(tenant: str) -> str:
    return subjects.stream_name(tenant)


def keyring_stream(tenant: str) -> str:
    return f"KV_{subjects.keyring_bucket(tenant)}"


def memory_stream(tenant: str) -> str:
    return f"KV_{subjects.memory_bucket(tenant)}"


def memory_key(tenant: str, agent: str, key: str) -> str:
    return f"$KV.{subjects.memory_bucket(tenant)}.{agent}.{key}"


def account_block(rendered: str) -> str:
    """The tenant's ``"T" { ... }`` block out of ``render --accounts-only`` output.

    What ``sed -e '/^accounts {$/d' -e '$d'`` does in docs/OPERATIONS.md: drop
    the ``accounts {`` line and the closing brace on the last line.
    """
    lines = rendered.splitlines()
    assert lines.count("accounts {") == 1 and lines[-1] == "}", rendered
    return "\n".join(line for line in lines[:-1] if line != "accounts {") + "\n"


MAIN_CONFIG = """\
# Two trustbus tenants on one server: one account each, merged into one accounts block.
max_payload: 1MB
jetstream {}
accounts {
  SYS {}
  include ./tenants/A.conf
  include ./tenants/B.conf
}
system_account: SYS
"""


@dataclass
class Deployment:
    """The module's server, its config dir and the tenants' seeds."""

    server: EmbeddedServer
    root: Path
    keys: KeyDirectory

    @property
    def url(self) -> str:
        return self.server.url

    def identity(self, tenant: str, owner: str) -> Identity:
        return self.keys.load(tenant, owner)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Bootstrap both accounts -> server -> provision each as its admin -> render both, merge -> reload."""
    root = tmp_path_factory.mktemp("tenants")
    keys = KeyDirectory(root / "keys")
    (root / "tenants").mkdir()
    config = root / "nats.conf"
    config.write_text(MAIN_CONFIG)
    for tenant in TENANTS:
        bootstrap = render_bootstrap_config(tenant, keys.admin(tenant).key_id, standalone=False)
        (root / "tenants" / f"{tenant}.conf").write_text(account_block(bootstrap))
    with EmbeddedServer(port=0, data_dir=root / "js", config=config) as server:

        async def provision() -> None:
            for tenant in TENANTS:
                seed = keys.admin(tenant).nkey_seed
                await init_tenant([server.url], tenant, keys=keys, nkey_seed=seed)
                for agent in AGENTS:
                    await new_key([server.url], tenant, agent, role="agent", keys=keys, nkey_seed=seed)
                await new_key([server.url], tenant, "coordinator", role="coordinator", keys=keys, nkey_seed=seed)
            for tenant in TENANTS:
                grants = await list_keys([server.url], tenant, nkey_seed=keys.admin(tenant).nkey_seed)
                rendered = render_tenant_config(tenant, grants, standalone=False)
                (root / "tenants" / f"{tenant}.conf").write_text(account_block(rendered))
            assert server.pid is not None
            for tenant in TENANTS:  # agents are accounts of their own: applied by two reloads (bus._reload)
                alice = keys.load(tenant, "alice")
                await reload_until_wired(server.pid, server.url, tenant=tenant, agent=alice, agent_name="alice")

        asyncio.run(provision())
        yield Deployment(server=server, root=root, keys=keys)


@dataclass
class Conn:
    """A nats-py connection as one user of one tenant, with the errors its ``error_cb`` received."""

    tenant: str
    owner: str
    identity: Identity
    nc: Client
    js: JetStreamContext
    errors: asyncio.Queue[Exception]

    async def next_error(self) -> str:
        """The next asynchronous error, lowercased; fails the test if none comes in time."""
        try:
            return str(await asyncio.wait_for(self.errors.get(), ARRIVES_S)).lower()
        except TimeoutError:
            pytest.fail(f"{self.tenant}/{self.owner}: no asynchronous error within {ARRIVES_S}s")

    async def publish_refused(self, *subjects_: str) -> None:
        """Publish (with a reply subject, as a request would) to each subject; each is refused by the server."""
        for subject in subjects_:
            await self.nc.publish(subject, b"{}", reply=self.nc.new_inbox())
        await self.nc.flush(timeout=ARRIVES_S)
        refused = {await self.next_error() for _ in subjects_}
        assert refused == {f'nats: permissions violation for publish to "{s.lower()}"' for s in subjects_}

    def signed(self, to: str) -> tuple[bytes, dict[str, str]]:
        """A fresh envelope of this tenant signed by this user: its body and headers."""
        envelope = new_envelope(
            tenant=self.tenant, kind="event", sender=self.owner, to=[to], payload=uuid.uuid4().hex.encode()
        )
        sealed = seal(envelope, self.identity)
        return sealed.body, dict(sealed.headers)


Connect = Callable[[str, str], Awaitable[Conn]]


@pytest.fixture
async def connect(deployment: Deployment) -> AsyncIterator[Connect]:
    """Connect as a key owner of a tenant with its nkey and, but for the admin, its own reply prefix."""
    opened: list[Client] = []

    async def _connect(tenant: str, owner: str) -> Conn:
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            errors.put_nowait(exc)

        options: dict[str, object] = {}
        if owner != "admin":
            options["inbox_prefix"] = subjects.reply_prefix(owner).encode()
        identity = deployment.identity(tenant, owner)
        nc = await nats.connect(
            deployment.url,
            nkeys_seed_str=identity.nkey_seed,
            error_cb=on_error,
            connect_timeout=2,
            allow_reconnect=False,
            **options,  # type: ignore[arg-type]
        )
        opened.append(nc)
        # An agent reaches its tenant's JetStream API through its account's imports (bus._api.tenant_jetstream).
        prefix = AGENT_API_PREFIX if owner in AGENTS else "$JS.API"
        return Conn(tenant, owner, identity, nc, nc.jetstream(timeout=TIMEOUT, prefix=prefix), errors)

    yield _connect
    for nc in opened:
        await nc.close()


@dataclass(frozen=True)
class TenantState:
    """What a tenant holds: its stream's and buckets' positions and its stream's consumers."""

    streams: dict[str, tuple[int, int]]
    consumers: frozenset[str]


async def state_of(admin: Conn) -> TenantState:
    tenant = admin.tenant
    streams = {}
    for name in (stream(tenant), keyring_stream(tenant), memory_stream(tenant)):
        info = await admin.js.stream_info(name)
        streams[name] = (info.state.messages, info.state.last_seq)
    consumers = frozenset(c.name for c in await admin.js.consumers_info(stream(tenant)))
    return TenantState(streams=streams, consumers=consumers)


def b_subjects() -> list[str]:
    """B's subjects an A user might aim at: an agent's outbox and inbox, the decisions."""
    return [subjects.outbox(B, "alice", 0), subjects.inbox(B, "alice"), subjects.decision(B, 0)]


# -- the merged config -----------------------------------------------------


def test_merged_accounts_pass_the_server_check(deployment: Deployment) -> None:
    """nats-server -t accepts the config with both tenants' rendered accounts merged (by the documented sed)."""
    rendered = deployment.root / "rendered.conf"
    rendered.write_text(render_tenant_config(A, [], standalone=False))
    sed = subprocess.run(["sed", "-e", "/^accounts {$/d", "-e", "$d", str(rendered)], capture_output=True, text=True)
    assert sed.returncode == 0 and sed.stdout == account_block(rendered.read_text()), sed.stderr
    result = subprocess.run(
        [str(find_server_binary()), "-c", str(deployment.root / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_each_tenants_jetstream_holds_only_its_own_stream_and_buckets(connect: Connect) -> None:
    """Each account's JetStream lists its own stream and buckets; the other tenant's names are unknown there."""
    for tenant in TENANTS:
        admin = await connect(tenant, "admin")
        names = {info.config.name for info in await admin.js.streams_info()}
        assert names == {
            stream(tenant),
            subjects.given_up_stream(tenant),
            keyring_stream(tenant),
            memory_stream(tenant),
            f"KV_tb_coord_{tenant}",
            f"KV_tb_state_{tenant}",
        }


# -- legitimate twins: inside its own tenant, each operation succeeds ---------


@pytest.mark.parametrize("tenant", TENANTS)
async def test_twin_agent_publishes_and_coordinator_delivers_in_own_tenant(connect: Connect, tenant: str) -> None:
    """Alice publishes to her outbox (stored in her tenant's stream); the coordinator delivers; she fetches."""
    alice, coordinator, admin = (
        await connect(tenant, "alice"),
        await connect(tenant, "coordinator"),
        await connect(tenant, "admin"),
    )
    body, headers = alice.signed("bob")
    ack = await alice.js.publish(subjects.outbox(tenant, "alice", 0), body, headers=headers)
    assert ack.stream == stream(tenant)
    assert (await admin.js.get_msg(stream(tenant), ack.seq)).data == body

    consumer = subjects.inbox_consumer("alice")
    await coordinator.js.add_consumer(
        stream(tenant),
        ConsumerConfig(
            durable_name=consumer, filter_subject=subjects.inbox(tenant, "alice"), ack_policy=AckPolicy.EXPLICIT
        ),
    )
    delivered, headers = coordinator.signed("alice")
    await coordinator.js.publish(subjects.inbox(tenant, "alice"), delivered, headers=headers)
    await coordinator.js.publish(subjects.decision(tenant, 0), b"{}")
    sub = await alice.js.pull_subscribe_bind(consumer, stream=stream(tenant))
    msgs = await sub.fetch(1, timeout=2)
    assert msgs[-1].data == delivered
    for msg in msgs:
        await msg.ack_sync(timeout=2)
    await sub.unsubscribe()
    assert alice.errors.empty() and coordinator.errors.empty()


@pytest.mark.parametrize("tenant", TENANTS)
async def test_twin_users_read_own_stream_and_buckets(connect: Connect, tenant: str) -> None:
    """Own stream info, message get and consumer create (admin, coordinator); own keyring and memory keys."""
    admin, coordinator, alice = (
        await connect(tenant, "admin"),
        await connect(tenant, "coordinator"),
        await connect(tenant, "alice"),
    )
    info = await admin.js.stream_info(stream(tenant))
    assert info.config.subjects == [subjects.all_subjects(tenant)]
    assert (await coordinator.js.get_msg(stream(tenant), info.state.first_seq)).seq == info.state.first_seq
    name = f"reader-{uuid.uuid4().hex[:8]}"
    await coordinator.js.add_consumer(stream(tenant), ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT))
    await admin.js.delete_consumer(stream(tenant), name)

    async with await KeyringStore.open(alice.js, tenant) as keyring:
        assert keyring.keyring.resolve(alice.identity.key_id).owner == "alice"
    key = memory_key(tenant, "alice", "note")
    await coordinator.js.publish(key, f"{tenant}'s note".encode())
    assert (await alice.js.get_last_msg(memory_stream(tenant), key, direct=True)).data == f"{tenant}'s note".encode()
    keyring_kv = await admin.js.key_value(subjects.keyring_bucket(tenant))
    assert (await keyring_kv.status()).bucket == subjects.keyring_bucket(tenant)
    memory_kv = await admin.js.key_value(subjects.memory_bucket(tenant))
    assert (await memory_kv.get("alice.note")).value == f"{tenant}'s note".encode()
    assert alice.errors.empty() and coordinator.errors.empty()


# -- attacks: publishing into the other tenant ------------------------------


@pytest.mark.parametrize("owner", ["alice", "coordinator"])
async def test_user_of_A_publishing_to_Bs_subjects_is_refused(connect: Connect, owner: str) -> None:
    """A's agent and coordinator: signed envelopes to B's outbox, inbox and decisions, and B's memory, refused."""
    attacker, b_admin = await connect(A, owner), await connect(B, "admin")
    before = await state_of(b_admin)
    for subject in b_subjects():
        body, headers = attacker.signed("alice")
        await attacker.nc.publish(subject, body, headers=headers)
    await attacker.nc.publish(memory_key(B, "alice", "note"), b"planted")
    await attacker.nc.flush(timeout=ARRIVES_S)
    refused = {await attacker.next_error() for _ in range(4)}
    assert refused == {
        f'nats: permissions violation for publish to "{s.lower()}"'
        for s in [*b_subjects(), memory_key(B, "alice", "note")]
    }
    assert await state_of(b_admin) == before


async def test_admin_of_A_publishing_to_Bs_subjects_reaches_nothing(connect: Connect) -> None:
    """A's admin may publish anywhere, but only in account A: no stream takes it, B's subscriber never sees it."""
    a_admin, b_admin, b_alice = await connect(A, "admin"), await connect(B, "admin"), await connect(B, "alice")
    before = await state_of(b_admin)
    seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        if not msg.subject.startswith("$JS.EVENT."):  # the server's own advisories in B (its API audit)
            seen.put_nowait(msg)

    await b_admin.nc.subscribe(">", cb=on_msg)
    await b_admin.nc.flush(timeout=ARRIVES_S)

    forged = {subject: a_admin.signed("alice") for subject in [*b_subjects(), memory_key(B, "alice", "note")]}
    for subject, (body, headers) in forged.items():
        with pytest.raises(nats.js.errors.NoStreamResponseError):  # no stream in account A listens there
            await a_admin.js.publish(subject, body, headers=headers)
        await a_admin.nc.publish(subject, body, headers=headers)  # and core NATS: no subscriber in B gets it
    await a_admin.nc.flush(timeout=ARRIVES_S)  # the server has routed all of it

    # Then B's own traffic: the first thing B's subscriber sees is that, not anything A sent.
    body, headers = b_alice.signed("bob")
    await b_alice.js.publish(subjects.outbox(B, "alice", 0), body, headers=headers)
    first = await asyncio.wait_for(seen.get(), ARRIVES_S)
    assert (first.subject, first.data) == (subjects.outbox(B, "alice", 0), body)
    after = await state_of(b_admin)
    assert after.consumers == before.consumers
    assert after.streams[stream(B)][0] == before.streams[stream(B)][0] + 1  # only b_alice's envelope
    assert {k: v for k, v in after.streams.items() if k != stream(B)} == {
        k: v for k, v in before.streams.items() if k != stream(B)
    }
    for subject, (body, _) in forged.items():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            assert (await b_admin.js.get_last_msg(stream(B), subject)).data != body
    assert a_admin.errors.empty()


# -- attacks: listening to the other tenant ---------------------------------


@pytest.mark.parametrize("owner", ["alice", "coordinator"])
@pytest.mark.parametrize(
    "subject", [">", "tb.>", f"tb.{B}.>", subjects.outbox(B, "alice", 0), subjects.inbox(B, "alice")]
)
async def test_user_of_A_subscribing_to_Bs_subjects_is_refused(connect: Connect, owner: str, subject: str) -> None:
    """A's agent and coordinator cannot even subscribe to B's subjects, nor to wildcards that would cover them."""
    attacker = await connect(A, owner)
    await attacker.nc.subscribe(subject)
    await attacker.nc.flush(timeout=ARRIVES_S)
    error = await attacker.next_error()
    assert error == f'nats: permissions violation for subscription to "{subject.lower()}"', error


async def test_wildcard_subscription_in_A_sees_none_of_Bs_traffic(connect: Connect) -> None:
    """A's admin subscribes to ``>`` and ``tb.>`` while B's agents publish and B's coordinator delivers.

    B's own subscriber proves B's traffic happened; A's own marker, published
    after, proves A's subscriptions were live and have received everything routed to them.
    """
    a_admin, a_alice = await connect(A, "admin"), await connect(A, "alice")
    b_admin, b_alice, b_coordinator = (
        await connect(B, "admin"),
        await connect(B, "alice"),
        await connect(B, "coordinator"),
    )
    in_a: dict[str, list[Msg]] = {">": [], "tb.>": []}
    marker_seen = {wildcard: asyncio.Event() for wildcard in in_a}
    marker, marker_headers = a_alice.signed("bob")

    def collector(wildcard: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            in_a[wildcard].append(msg)
            if msg.data == marker:
                marker_seen[wildcard].set()

        return on_msg

    for wildcard in in_a:
        await a_admin.nc.subscribe(wildcard, cb=collector(wildcard))
    await a_admin.nc.flush(timeout=ARRIVES_S)

    b_traffic: list[bytes] = []
    b_done = asyncio.Event()

    async def on_b(msg: Msg) -> None:
        b_traffic.append(msg.data)
        if len(b_traffic) == 3:
            b_done.set()

    await b_admin.nc.subscribe(f"tb.{B}.>", cb=on_b)
    await b_admin.nc.flush(timeout=ARRIVES_S)
    sent = [b_alice.signed("bob"), b_coordinator.signed("alice"), b_coordinator.signed("alice")]
    await b_alice.js.publish(subjects.outbox(B, "alice", 0), sent[0][0], headers=sent[0][1])
    await b_coordinator.js.publish(subjects.inbox(B, "alice"), sent[1][0], headers=sent[1][1])
    await b_coordinator.js.publish(subjects.decision(B, 0), sent[2][0], headers=sent[2][1])
    await asyncio.wait_for(b_done.wait(), ARRIVES_S)
    assert b_traffic == [body for body, _ in sent]

    await a_alice.js.publish(subjects.outbox(A, "alice", 0), marker, headers=marker_headers)
    for event in marker_seen.values():
        await asyncio.wait_for(event.wait(), ARRIVES_S)
    for wildcard, msgs in in_a.items():
        assert not [m.subject for m in msgs if m.subject.startswith(f"tb.{B}.")], wildcard
        assert not [m for m in msgs for body, _ in sent if body in m.data], wildcard
    assert a_admin.errors.empty()


# -- attacks: reading the other tenant's stream and buckets -----------------


@pytest.mark.parametrize("owner", ["alice", "coordinator"])
async def test_user_of_A_reading_Bs_stream_is_refused(connect: Connect, owner: str) -> None:
    """Stream info, message get, direct get and every consumer create on TB_B: refused; no consumer appears."""
    attacker, b_admin = await connect(A, owner), await connect(B, "admin")
    before = await state_of(b_admin)
    await attacker.publish_refused(
        f"$JS.API.STREAM.INFO.{stream(B)}",
        f"$JS.API.STREAM.MSG.GET.{stream(B)}",
        f"$JS.API.DIRECT.GET.{stream(B)}.{subjects.outbox(B, 'alice', 0)}",
        f"$JS.API.CONSUMER.CREATE.{stream(B)}",
        f"$JS.API.CONSUMER.CREATE.{stream(B)}.spy",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream(B)}.spy",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream(B)}.{subjects.inbox_consumer('alice')}",
    )
    # Through nats-py the refusal is a timeout.
    with pytest.raises(nats.errors.TimeoutError):
        await attacker.js.stream_info(stream(B))
    api = AGENT_API_PREFIX if owner in AGENTS else "$JS.API"
    assert (await attacker.next_error()).endswith(f'"{api.lower()}.stream.info.{stream(B).lower()}"')
    assert await state_of(b_admin) == before


@pytest.mark.parametrize("owner", ["alice", "coordinator"])
async def test_user_of_A_reading_Bs_buckets_is_refused(connect: Connect, owner: str) -> None:
    """B's keyring and memory buckets: bucket info, direct get, message get and watch, all refused."""
    attacker = await connect(A, owner)
    await attacker.publish_refused(
        f"$JS.API.STREAM.INFO.{keyring_stream(B)}",
        f"$JS.API.CONSUMER.CREATE.{keyring_stream(B)}",
        f"$JS.API.STREAM.INFO.{memory_stream(B)}",
        f"$JS.API.STREAM.MSG.GET.{memory_stream(B)}",
        f"$JS.API.DIRECT.GET.{memory_stream(B)}.{memory_key(B, 'alice', 'note')}",
        f"$JS.API.CONSUMER.CREATE.{memory_stream(B)}",
    )


async def test_admin_of_A_cannot_find_Bs_stream_or_buckets(connect: Connect) -> None:
    """A's admin may call the whole JetStream API, but it is account A's: TB_B and B's buckets do not exist there."""
    a_admin, b_admin, b_coordinator = (
        await connect(A, "admin"),
        await connect(B, "admin"),
        await connect(B, "coordinator"),
    )
    await b_coordinator.js.publish(memory_key(B, "alice", "note"), b"B's secret")
    before = await state_of(b_admin)

    with pytest.raises(nats.js.errors.NotFoundError):
        await a_admin.js.stream_info(stream(B))
    with pytest.raises(nats.js.errors.NotFoundError):
        await a_admin.js.get_msg(stream(B), before.streams[stream(B)][1])
    with pytest.raises(nats.js.errors.NotFoundError):
        await a_admin.js.add_consumer(stream(B), ConsumerConfig(durable_name="spy", ack_policy=AckPolicy.EXPLICIT))
    for bucket in (subjects.keyring_bucket(B), subjects.memory_bucket(B)):
        with pytest.raises(nats.js.errors.BucketNotFoundError):
            await a_admin.js.key_value(bucket)
    with pytest.raises(nats.js.errors.NotFoundError):
        await a_admin.js.get_last_msg(memory_stream(B), memory_key(B, "alice", "note"))
    with pytest.raises(nats.errors.NoRespondersError):  # direct get: no stream in account A answers it
        await a_admin.nc.request(
            f"$JS.API.DIRECT.GET.{memory_stream(B)}.{memory_key(B, 'alice', 'note')}", b"", timeout=TIMEOUT
        )
    assert await state_of(b_admin) == before
    assert (await b_admin.js.get_last_msg(memory_stream(B), memory_key(B, "alice", "note"))).data == b"B's secret"
    assert a_admin.errors.empty()


async def test_admin_of_A_monitoring_its_account_sees_only_A(connect: Connect) -> None:
    """The system's account-scoped monitoring, open to every account, reports only the asker's account.

    With B's users connected, A's admin asks for its account's connections and
    statistics: it gets A's alone; asking for B's by name reaches no responder.
    """
    a_admin = await connect(A, "admin")
    for owner in ("admin", "alice", "coordinator"):
        await connect(B, owner)
    connz = json.loads((await a_admin.nc.request("$SYS.REQ.ACCOUNT.PING.CONNZ", b"{}", timeout=TIMEOUT)).data)
    assert connz["data"]["total"] == 1, connz  # a_admin's own connection
    statz = json.loads((await a_admin.nc.request("$SYS.REQ.ACCOUNT.PING.STATZ", b"{}", timeout=TIMEOUT)).data)
    assert [account["acc"] for account in statz["data"]["account_statz"]] == [A], statz
    for subject in (f"$SYS.REQ.ACCOUNT.{B}.CONNZ", f"$SYS.REQ.ACCOUNT.{B}.JSZ", "$SYS.REQ.SERVER.PING.JSZ"):
        with pytest.raises(nats.errors.NoRespondersError):
            await a_admin.nc.request(subject, b"{}", timeout=TIMEOUT)
    assert a_admin.errors.empty()
