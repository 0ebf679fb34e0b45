"""`trustbus config render`, run as real processes: bootstrap, provision as the admin, render, reload.

The operator's workflow from docs/OPERATIONS.md ("Per-tenant accounts"), with
the server started by `trustbus up --config` and reloaded with
`nats-server --signal reload=<pid>`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.processes import TRUSTBUS, one_shot, ready, run, supervised
from trustbus.bus import Identity, KeyDirectory, find_server_binary

T = "cfg"


@contextlib.asynccontextmanager
async def nkey_session(url: str, identity: Identity, then: bytes) -> AsyncIterator[asyncio.StreamReader]:
    """A raw protocol connection that CONNECTs with ``identity``'s nkey and sends ``then``; its reader."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), 1))[len(b"INFO ") :])
        sig = base64.b64encode(identity.sign(info["nonce"].encode())).decode()
        connect = {"verbose": False, "pedantic": False, "protocol": 1, "nkey": identity.key_id, "sig": sig}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" + then)
        await writer.drain()
        yield reader
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def nkey_connect_reply(url: str, identity: Identity) -> bytes:
    """Connect by the raw protocol with ``identity``'s nkey; the server's reply to PING."""
    async with nkey_session(url, identity, b"PING\r\n") as reader:
        return await asyncio.wait_for(reader.readline(), 1)


async def publish_refused(url: str, identity: Identity, subject: str) -> bool:
    """Whether the server refuses ``identity`` a publish to ``subject`` (an empty message, no reply asked).

    A connection the server closes first (as it may while it reloads its config) was not refused: False.
    """
    async with nkey_session(url, identity, f"PUB {subject} 0\r\n\r\nPING\r\n".encode()) as reader:
        while (line := await asyncio.wait_for(reader.readline(), 1)) not in (b"PONG\r\n", b""):
            if line.startswith(b"-ERR 'Permissions Violation"):
                return True
        return False


def wait_until_refused(url: str, identity: Identity, subject: str) -> None:
    """Retry (bounded) until the server, reloaded, refuses ``identity`` a publish to ``subject``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if asyncio.run(publish_refused(url, identity, subject)):
            return
    raise AssertionError(f"{identity.key_id} is still not refused a publish to {subject} 5s after the reload")


def wait_until_accepted(url: str, identity: Identity) -> None:
    """Retry a raw connect (bounded) until the server, reloaded, accepts ``identity``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if asyncio.run(nkey_connect_reply(url, identity)) == b"PONG\r\n":
            return
    raise AssertionError(f"{identity.key_id} not accepted within 5s")


def test_bootstrap_provision_render_reload(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    config = tmp_path / "nats.conf"
    env = {**os.environ, "TRUSTBUS_KEYS": str(keys)}
    env.pop("TRUSTBUS_NKEY", None)
    outputs: list[str] = []

    def step(*args: str) -> str:
        result = run(*args, env=env)
        outputs.append(result.stdout + result.stderr)
        return result.stdout

    step("config", "render", "--tenant", T, "--bootstrap", "--out", str(config))
    admin_seed = keys / T / "admin.seed"
    admin = Identity.load(admin_seed)
    assert admin.key_id in config.read_text() and "BOOTSTRAP" in config.read_text()

    with supervised(tmp_path / "logs") as processes:
        up = processes.start(
            "up", [*TRUSTBUS, "up", "--port", "0", "--data", str(tmp_path / "js"), "--config", str(config), "--json"]
        )
        started = ready(up)
        env["NATS_URL"] = str(started["url"])

        # Provision inside the tenant's account, as the admin whose seed bootstrap made.
        as_admin = ("--nkey", str(admin_seed))
        initialised = json.loads(step(*as_admin, "init", "--tenant", T, "--json"))
        assert initialised["admin_key"] == admin.key_id
        step(*as_admin, "keys", "new", "--tenant", T, "--owner", "alice")
        step(*as_admin, "keys", "new", "--tenant", T, "--owner", "coordinator", "--role", "coordinator")

        printed = step(*as_admin, "config", "render", "--tenant", T)
        step(*as_admin, "config", "render", "--tenant", T, "--out", str(config))
        assert config.read_text() == printed and "BOOTSTRAP" not in printed
        checked = one_shot([str(find_server_binary()), "-c", str(config), "-t"], timeout_s=30)
        assert checked.returncode == 0, checked.stderr

        reload = one_shot([str(find_server_binary()), "--signal", f"reload={started['pid']}"], timeout_s=30)
        assert reload.returncode == 0, reload.stderr
        alice = KeyDirectory(keys).load(T, "alice")
        wait_until_accepted(str(started["url"]), alice)

        # The admin still does everything; the CLI authenticates with --nkey (or TRUSTBUS_NKEY).
        sent = json.loads(step(*as_admin, "send", "-t", T, "--as", "alice", "--to", "bob", "--json"))
        env["TRUSTBUS_NKEY"] = str(admin_seed)
        [item] = [json.loads(line) for line in step("tail", "-t", T, "--json", "--idle-timeout", "3").splitlines()]
        assert item["verified"] and item["envelope"]["id"] == sent["id"]
        owners = {json.loads(line)["owner"] for line in step("keys", "list", "-t", T, "--json").splitlines()}
        assert owners == {"admin", "alice", "coordinator"}

    seeds = [admin.nkey_seed, alice.nkey_seed]
    assert not [out for out in outputs for seed in seeds if seed in out], "a seed was printed"


def test_nkey_option_refuses_a_seed_file_others_can_read(tmp_path: Path) -> None:
    seed = tmp_path / "loose.seed"
    seed.write_text(Identity.generate().nkey_seed + "\n")
    seed.chmod(0o644)
    result = run("--nkey", str(seed), "keys", "list", "-t", T, env=dict(os.environ), check=False)
    assert result.returncode == 1 and "readable by others" in result.stderr
    assert seed.read_text().strip() not in result.stdout + result.stderr
