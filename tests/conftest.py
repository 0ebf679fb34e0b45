"""Shared fixtures: one real nats-server per test session, a fresh tenant per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from trustbus.bus import Bus, EmbeddedServer, Identity, KeyringStore, Limits, Role, provision

# No per-example deadline: it measures the machine's load, not the code (three test workers share
# two cores), and a timing assertion is not what these properties test.
settings.register_profile("trustbus", deadline=None)
settings.load_profile("trustbus")

# The repository root goes after the installed packages on sys.path (`python -m pytest` and pyproject's
# `pythonpath` put it first; `--import-mode=append` keeps it last): first, its folder agents/
# (trustbus.agents) would hide the OpenAI Agents SDK's top-level `agents`.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT] + [str(ROOT)]

_tenant_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedServer]:
    """A nats-server with JetStream on a free port and a temp store dir, for the whole session."""
    with EmbeddedServer(port=0) as server:
        yield server


@dataclass
class Tenant:
    """A provisioned tenant on the session server, with helpers to add keys and connect."""

    name: str
    url: str
    nc: NATS
    js: JetStreamContext
    admin: Identity
    keyring: KeyringStore
    identities: dict[str, Identity] = field(default_factory=dict)
    buses: list[Bus] = field(default_factory=list)

    async def add(self, owner: str, *, role: Role = "agent", valid_from: int | None = None) -> Identity:
        """Issue ``owner`` a key, registered in the keyring."""
        identity = Identity.generate()
        start = time.time_ns() - 3600 * 10**9 if valid_from is None else valid_from
        await self.keyring.grant(self.admin, key_id=identity.key_id, owner=owner, role=role, valid_from=start)
        self.identities[owner] = identity
        return identity

    async def bus(self, owner: str, *, identity_of: str | None = None, limits: Limits = Limits()) -> Bus:
        """A new Bus connection as ``identity_of`` (default ``owner``), issued a key first if it has none."""
        name = identity_of or owner
        identity = self.identities.get(name) or await self.add(name)
        bus = await Bus.connect(self.url, tenant=self.name, name=name, identity=identity, limits=limits)
        self.buses.append(bus)
        return bus


@contextlib.asynccontextmanager
async def provisioned(server: EmbeddedServer, *, purgeable: bool = False) -> AsyncIterator[Tenant]:
    """A freshly provisioned tenant with a unique name; its connections close at the end."""
    name = f"t{os.getpid()}x{next(_tenant_numbers)}"
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    admin = Identity.generate()
    await provision(js, name, admin_key_id=admin.key_id, purgeable=purgeable)
    keyring = await KeyringStore.open(js, name)
    await keyring.grant(admin, key_id=admin.key_id, owner="admin", role="admin", valid_from=time.time_ns())
    kit = Tenant(name=name, url=server.url, nc=nc, js=js, admin=admin, keyring=keyring)
    try:
        yield kit
    finally:
        for bus in kit.buses:
            await bus.aclose()
        await keyring.aclose()
        await nc.close()


@pytest.fixture
async def tenant(nats_server: EmbeddedServer) -> AsyncIterator[Tenant]:
    """A freshly provisioned tenant with a unique name; its connections close after the test."""
    async with provisioned(nats_server) as kit:
        yield kit
