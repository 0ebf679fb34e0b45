"""The embedded server, provisioning, persistence across a restart, and nkey authentication."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from tests.conftest import Tenant
from tests.processes import one_shot_async
from trustbus.bus import (
    Bus,
    ConfigError,
    EmbeddedServer,
    Identity,
    KeyDirectory,
    KeyringStore,
    PortInUse,
    ServerBinaryNotFound,
    find_server_binary,
    init_tenant,
    list_keys,
    new_envelope,
    new_key,
    provision,
    revoke_key,
    rotate_key,
    subjects,
    tail,
    tenant_stream_config,
)


def test_taken_port_gives_an_error_that_names_the_fix() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse, match="--port 0"):
            EmbeddedServer(port=port).start()


def test_missing_binary_gives_an_error_that_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRUSTBUS_NATS_SERVER", str(tmp_path / "no-such-binary"))
    with pytest.raises(ServerBinaryNotFound, match="TRUSTBUS_NATS_SERVER"):
        find_server_binary()


def test_binary_from_the_wheel_is_found() -> None:
    assert find_server_binary().name == "nats-server"


async def test_provisioning_twice_changes_nothing(tenant: Tenant) -> None:
    before = await tenant.js.stream_info(f"TB_{tenant.name}")
    report = await provision(tenant.js, tenant.name, admin_key_id=tenant.admin.key_id)
    after = await tenant.js.stream_info(f"TB_{tenant.name}")
    assert report.created == [] and report.updated == []
    assert sorted(report.unchanged) == sorted(
        [
            f"TB_{tenant.name}",
            f"TBADV_{tenant.name}",
            f"tb_keys_{tenant.name}",
            f"tb_mem_{tenant.name}",
            f"tb_coord_{tenant.name}",
            f"tb_state_{tenant.name}",
        ]
    )
    assert before.config == after.config


async def test_reprovisioning_a_stream_made_without_direct_gets_turns_them_on(nats_server: EmbeddedServer) -> None:
    """A tenant provisioned before effect records existed gets allow_direct on the next `init`, nothing else."""
    admin = Identity.generate()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        older = dataclasses.replace(tenant_stream_config("olddirect", admin_key_id=admin.key_id), allow_direct=False)
        await js.add_stream(older)
        report = await provision(js, "olddirect", admin_key_id=admin.key_id)
        assert report.updated == ["TB_olddirect (allow_direct)"]
        assert (await js.stream_info("TB_olddirect")).config.allow_direct
        again = await provision(js, "olddirect", admin_key_id=admin.key_id)
        assert again.updated == [] and "TB_olddirect" in again.unchanged
    finally:
        await nc.close()


async def test_stored_correlations_expire_and_a_state_bucket_made_without_that_gets_it(tenant: Tenant) -> None:
    """The state bucket's keys live 30 days unwritten (a policy's correlation_idle_s is at most 14); the
    other buckets keep theirs. A tenant provisioned before that gets it on the next `init`."""
    state = f"KV_tb_state_{tenant.name}"
    assert (await tenant.js.stream_info(state)).config.max_age == 30 * 86_400
    assert (await tenant.js.stream_info(f"KV_tb_keys_{tenant.name}")).config.max_age == 0
    backing = (await tenant.js.stream_info(state)).config
    await tenant.js.update_stream(dataclasses.replace(backing, max_age=0))
    report = await provision(tenant.js, tenant.name, admin_key_id=tenant.admin.key_id)
    assert report.updated == [f"tb_state_{tenant.name} (max_age)"]
    assert (await tenant.js.stream_info(state)).config.max_age == 30 * 86_400


async def test_stream_is_append_only(tenant: Tenant) -> None:
    alice = await tenant.bus("alice")
    sealed = alice.seal(new_envelope(tenant=tenant.name, kind="event", sender="alice", to=["bob"]))
    ack = await alice.publish(subjects.outbox(tenant.name, "alice", 0), sealed)
    config = (await tenant.js.stream_info(f"TB_{tenant.name}")).config
    assert config.deny_delete and config.deny_purge and not config.allow_rollup_hdrs
    assert config.duplicate_window >= 120
    with pytest.raises(nats.js.errors.APIError):
        await tenant.js.delete_msg(f"TB_{tenant.name}", ack.seq)
    with pytest.raises(nats.js.errors.APIError):
        await tenant.js.purge_stream(f"TB_{tenant.name}")
    assert (await tenant.js.get_msg(f"TB_{tenant.name}", ack.seq)).data == sealed.body


async def test_reprovisioning_with_another_admin_key_is_refused(tenant: Tenant) -> None:
    with pytest.raises(ConfigError, match="pinned"):
        await provision(tenant.js, tenant.name, admin_key_id=Identity.generate().key_id)


async def test_envelopes_survive_a_server_restart(tmp_path: Path) -> None:
    admin, alice = Identity.generate(), Identity.generate()
    with EmbeddedServer(port=0, data_dir=tmp_path / "js") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await provision(js, "durable", admin_key_id=admin.key_id)
        async with await KeyringStore.open(js, "durable") as store:
            await store.grant(
                admin, key_id=alice.key_id, owner="alice", role="agent", valid_from=time.time_ns() - 10**9
            )
        async with await Bus.connect(server.url, tenant="durable", name="alice", identity=alice) as bus:
            sent = []
            for i in range(20):
                env = new_envelope(tenant="durable", kind="event", sender="alice", to=["bob"], payload=b"%d" % i)
                await bus.publish_pipelined(subjects.outbox("durable", "alice", 0), bus.seal(env))
                sent.append(env.id)
            await bus.flush()
        await nc.close()

    with EmbeddedServer(port=0, data_dir=tmp_path / "js") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        async with await KeyringStore.open(js, "durable") as store:
            items = [item async for item in tail(js, store, "durable", idle_timeout_s=1.0)]
        await nc.close()
    assert [item.error for item in items] == [None] * 20
    assert [item.opened.envelope.id for item in items if item.opened] == sent


_REFUSED_CONNECT = """
import asyncio, sys, nats
async def main():
    try:
        await nats.connect(sys.argv[1], nkeys_seed_str=sys.argv[2], allow_reconnect=False, connect_timeout=2)
    except Exception as exc:
        print("refused:", exc)
asyncio.run(main())
"""


async def test_one_seed_authenticates_to_nats_and_signs(tmp_path: Path) -> None:
    alice = Identity.generate()
    config = tmp_path / "nkey.conf"
    config.write_text(f'authorization {{\n  users = [\n    {{ nkey: "{alice.key_id}" }}\n  ]\n}}\n')
    with EmbeddedServer(port=0, config=config) as server:
        nc = await nats.connect(server.url, nkeys_seed_str=alice.nkey_seed)
        assert nc.is_connected
        await nc.close()
        # A refused connect runs in its own process: nats-py leaks the refused socket.
        stranger = await one_shot_async(
            [sys.executable, "-c", _REFUSED_CONNECT, server.url, Identity.generate().nkey_seed], timeout_s=30
        )
        assert "refused: nats: 'Authorization Violation'" in stranger.stdout


async def test_the_admin_key_cannot_be_rotated_or_revoked(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    """The trust anchor is pinned in the stream: replacing or revoking it would lock the tenant out of its keyring."""
    keys = KeyDirectory(tmp_path / "keys")
    _, admin = await init_tenant([nats_server.url], "anchored", keys=keys)
    seed = keys.path("anchored", "admin").read_bytes()
    with pytest.raises(ConfigError, match="trust anchor"):
        await rotate_key([nats_server.url], "anchored", "admin", keys=keys)
    with pytest.raises(ConfigError, match="trust anchor"):
        await revoke_key([nats_server.url], "anchored", admin.key_id, keys=keys)
    assert keys.path("anchored", "admin").read_bytes() == seed
    # The twin: any other key rotates, and the tenant still issues keys afterwards.
    await new_key([nats_server.url], "anchored", "alice", role="agent", keys=keys)
    old, new = await rotate_key([nats_server.url], "anchored", "alice", keys=keys)
    assert old.revoked_at is not None and new.key_id != old.key_id
    await new_key([nats_server.url], "anchored", "bob", role="agent", keys=keys)
    assert {g.owner for g in await list_keys([nats_server.url], "anchored")} >= {"admin", "alice", "bob"}
