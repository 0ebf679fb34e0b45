"""Apply a rendered config to a running nats-server: reload, and make sure every agent's imports are wired.

nats-server wires the service imports of an account that a reload introduces
only at the next reload (seen on 2.15.1: a new agent's account connects, but
its imported outbox and JetStream API have no responder until the server is
reloaded again). So a config that adds an agent is applied by two reloads:
the first, until the agent's key is accepted; the second, until the agent's
imported JetStream API answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from urllib.parse import urlsplit

from trustbus.bus._errors import ServerError
from trustbus.bus._identity import Identity
from trustbus.bus._permissions import AGENT_API_PREFIX
from trustbus.bus._subjects import reply_prefix, stream_name

_PROBE_TIMEOUT_S = 1.0


async def reload_until_wired(
    pid: int, url: str, *, tenant: str, agent: Identity, agent_name: str, timeout_s: float = 15.0
) -> None:
    """SIGHUP the server ``pid`` until ``agent`` connects at ``url`` and its imported JetStream API answers.

    Args:
        pid: the nats-server process.
        url: its client URL (``nats://host:port``).
        tenant: the tenant whose stream the agent's imports reach.
        agent: the seed of an agent (or operator) of ``tenant`` in the new config.
        agent_name: that agent's name (its reply prefix).
        timeout_s: give up (ServerError) after this long.

    Raises:
        ServerError: the agent's imports did not answer in time.
    """
    deadline = time.monotonic() + timeout_s
    os.kill(pid, signal.SIGHUP)
    while await _probe(url, tenant, agent, agent_name) is None:
        if time.monotonic() > deadline:
            raise ServerError(f"the server did not accept {agent_name}'s key within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGHUP)  # the first reload may have introduced the agent's account
    while not await _probe(url, tenant, agent, agent_name):
        if time.monotonic() > deadline:
            raise ServerError(f"{agent_name}'s imports of tenant {tenant!r} did not answer within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


async def _probe(url: str, tenant: str, agent: Identity, agent_name: str) -> bool | None:
    """None: the agent's key is refused; else whether its imported STREAM.INFO answers with the stream."""
    address = urlsplit(url)
    try:
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
    except OSError:
        return None
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT_S))[len(b"INFO ") :])
        options = {
            "verbose": False,
            "pedantic": False,
            "protocol": 1,
            "nkey": agent.key_id,
            "sig": base64.b64encode(agent.sign(info["nonce"].encode())).decode(),
        }
        inbox = f"{reply_prefix(agent_name)}.reload-probe"
        request = f"{AGENT_API_PREFIX}.STREAM.INFO.{stream_name(tenant)}"
        writer.write(
            b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n"
            + f"SUB {inbox} 1\r\nPUB {request} {inbox} 0\r\n\r\n".encode()
        )  # fmt: skip
        await writer.drain()
        if await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT_S) != b"PONG\r\n":
            return None
        return await asyncio.wait_for(_answered(reader), _PROBE_TIMEOUT_S)
    except (TimeoutError, OSError, ValueError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _answered(reader: asyncio.StreamReader) -> bool:
    """Whether the first message read is a stream's info (not an error)."""
    while True:
        line = await reader.readline()
        if not line:
            return False
        if line.startswith(b"MSG "):
            size = int(line.split()[-1])
            body = json.loads((await reader.readexactly(size + 2))[:size] or b"{}")
            return "config" in body and "error" not in body
