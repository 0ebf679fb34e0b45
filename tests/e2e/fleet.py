"""The Fleet fixture: a tenant on the session server with real coordinator and agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
import yaml
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from trustbus._supervisor import Process, ProcessFailed, Supervisor
from trustbus.bus import (
    Bus,
    Decision,
    EmbeddedServer,
    Envelope,
    KeyDirectory,
    KeyringStore,
    QuarantineRecord,
    decode_decisions,
    decode_envelope,
    init_tenant,
    new_envelope,
    new_key,
    subjects,
    tail,
)
from trustbus.bus._quarantine import quarantine_record
from trustbus.bus._rejections import RejectionSummary, decode_quarantine_payload

ROOT = Path(__file__).resolve().parents[2]


async def as_records(
    js: JetStreamContext, tenant: str, payload: QuarantineRecord | RejectionSummary
) -> list[QuarantineRecord]:
    """A quarantine record as is; each message a summary of many refusals lists as a record of its own (read back)."""
    if isinstance(payload, QuarantineRecord):
        return [payload]
    found = []
    for (seq, subject, reason, _, _), item in zip(payload.rejected(), payload.items, strict=True):
        raw = await js.get_msg(f"TB_{tenant}", seq)
        detail = payload.detail_of(item)
        found.append(
            quarantine_record(
                raw.data or b"", raw.headers, reason=reason, detail=detail, subject=subject, stream_seq=seq
            )
        )
    return found


_numbers = itertools.count(1)


@dataclass
class Fleet:
    """One tenant on the session server, its keys, and the processes started for it."""

    url: str
    tenant: str
    keys: KeyDirectory
    tmp: Path
    nc: NATS
    buses: list[Bus] = field(default_factory=list)
    deciders: Counter[str] = field(default_factory=Counter)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(env=self.env, cwd=ROOT, logs=self.tmp)

    @property
    def procs(self) -> list[Process]:
        """Every process started for the tenant, in order."""
        return self.supervisor.processes

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "NATS_URL": self.url, "TRUSTBUS_KEYS": str(self.keys.root)}

    async def key(self, owner: str, role: str = "agent") -> None:
        await new_key([self.url], self.tenant, owner, role=role, keys=self.keys)  # type: ignore[arg-type]

    async def start(self, argv: list[str], *, env: dict[str, str] | None = None, ready_s: float = 30) -> Process:
        """Start ``argv`` in the repository (stderr to ``proc<N>.err``) and wait for its ready line."""
        name = f"proc{len(self.procs)}"
        process = self.supervisor.start(name, argv, env=env or self.env, log=self.tmp / f"{name}.err")
        try:
            line = await process.ready(ready_s)
        except ProcessFailed as exc:
            raise AssertionError("\n".join([str(exc), *process.tail()])) from None
        assert line.get("ready"), line
        return process

    async def spawn(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """Start `trustbus <args>` and wait for its ready line."""
        return await self.start([sys.executable, "-m", "trustbus", *args], env=env)

    async def coordinator(
        self, policy: dict[str, object], *, name: str = "coordinator", extra: tuple[str, ...] = ()
    ) -> Process:
        if not self.keys.path(self.tenant, name).exists():
            await self.key(name, role="coordinator")
        file = self.tmp / f"policy-{name}.yaml"
        file.write_text(yaml.safe_dump(policy))
        return await self.spawn("coordinator", "run", "-t", self.tenant, "--policy", str(file), "--name", name, *extra)

    async def agent(self, target: str, agent_id: str, env: dict[str, str] | None = None) -> Process:
        if not self.keys.path(self.tenant, agent_id).exists():
            await self.key(agent_id)
        return await self.spawn("agent", "run", target, "--id", agent_id, "-t", self.tenant, env=env)

    async def bus(self, owner: str) -> Bus:
        if not self.keys.path(self.tenant, owner).exists():
            await self.key(owner)
        bus = await Bus.connect(self.url, tenant=self.tenant, name=owner, identity=self.keys.load(self.tenant, owner))
        self.buses.append(bus)
        return bus

    async def send(self, bus: Bus, to: list[str], payload: object = None, **fields: object) -> str:
        envelope = new_envelope(
            tenant=self.tenant, kind=fields.pop("kind", "event"), sender=bus.name, to=to,  # type: ignore[arg-type]
            payload=json.dumps(payload).encode(), **fields,  # type: ignore[arg-type]
        )  # fmt: skip
        await bus.send(envelope)
        return envelope.id

    async def decisions(self, until: Callable[[list[Decision]], bool], *, limit_s: float = 30) -> list[Decision]:
        """Read the decision log until ``until(decisions)`` holds."""
        js = self.nc.jetstream()
        seen: list[Decision] = []

        async def follow() -> None:
            async with await KeyringStore.open(js, self.tenant) as keyring:
                async for item in tail(js, keyring, self.tenant, subject=subjects.all_decisions(self.tenant)):
                    assert item.opened is not None, item.error
                    recorded, _ = decode_decisions(item.opened.envelope.payload)
                    seen.extend(recorded)
                    self.deciders[item.opened.envelope.sender] += len(recorded)
                    if until(seen):
                        return

        await asyncio.wait_for(follow(), limit_s)
        return seen

    async def quarantined(self, match: Callable[[QuarantineRecord], bool], *, limit_s: float = 30) -> QuarantineRecord:
        """The first quarantine record ``match`` accepts, waiting for it if need be."""
        js = self.nc.jetstream()

        async def follow() -> QuarantineRecord:
            async with await KeyringStore.open(js, self.tenant) as keyring:
                async for item in tail(js, keyring, self.tenant, subject=subjects.quarantine(self.tenant)):
                    assert item.opened is not None, item.error
                    payload = decode_quarantine_payload(item.opened.envelope.payload)
                    for record in await as_records(js, self.tenant, payload):
                        if match(record):
                            return record
            raise AssertionError("unreachable: tail follows forever")

        return await asyncio.wait_for(follow(), limit_s)

    async def memory_written(self, agent: str, key: str, envelope_id: str, *, limit_s: float = 30) -> None:
        """Wait until the coordinator has stored the value written by ``envelope_id``."""
        from trustbus.agents._memory import memory_key
        from trustbus.bus import decode_memory_value as decode_value

        bucket = subjects.memory_bucket(self.tenant)
        sub = await self.nc.jetstream().subscribe(
            f"$KV.{bucket}.{memory_key(agent, key)}", stream=f"KV_{bucket}", ordered_consumer=True
        )

        async def follow() -> None:
            while True:
                data = (await sub.next_msg(timeout=limit_s)).data
                with contextlib.suppress(ValueError):  # a value no coordinator wrote: not the one awaited
                    if decode_value(data).envelope_id == envelope_id:
                        return

        try:
            await asyncio.wait_for(follow(), limit_s)
        finally:
            await sub.unsubscribe()

    async def inbox_counts(self) -> Counter[str]:
        """Messages stored in each inbox right now."""
        info = await self.nc.jetstream().stream_info(f"TB_{self.tenant}", subjects_filter=f"tb.{self.tenant}.in.*")
        return Counter({s.rsplit(".", 1)[1]: n for s, n in (info.state.subjects or {}).items()})

    async def inbox(
        self, until: Callable[[list[tuple[str, Envelope]]], bool], *, limit_s: float = 30
    ) -> list[tuple[str, Envelope]]:
        """Read every inbox in stream order, as (recipient, envelope), until ``until(read)`` holds."""
        read: list[tuple[str, Envelope]] = []
        deadline = time.monotonic() + limit_s
        while True:
            try:
                sub = await self.nc.jetstream().subscribe(
                    f"tb.{self.tenant}.in.*", stream=f"TB_{self.tenant}", ordered_consumer=True
                )
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                # A cluster electing leaders (tests/e2e/test_cluster.py) answers no consumer create for seconds.
                assert time.monotonic() < deadline, "the JetStream API did not answer a consumer create"
                await asyncio.sleep(0.2)  # pacing between attempts: no event announces the API is back

        async def follow() -> None:
            while not until(read):
                msg = await sub.next_msg(timeout=limit_s)
                read.append((msg.subject.rsplit(".", 1)[1], decode_envelope(msg.data)))

        try:
            await asyncio.wait_for(follow(), limit_s)
        finally:
            await sub.unsubscribe()
        return read

    async def close(self) -> None:
        await asyncio.to_thread(self.supervisor.stop_all, 15)
        for bus in self.buses:
            await bus.aclose()
        await self.nc.close()


@pytest.fixture
async def fleet(nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    tenant = f"m{os.getpid()}x{next(_numbers)}"
    keys = KeyDirectory(tmp_path / "keys")
    await init_tenant([nats_server.url], tenant, keys=keys)
    fleet = Fleet(url=nats_server.url, tenant=tenant, keys=keys, tmp=tmp_path, nc=await nats.connect(nats_server.url))
    try:
        yield fleet
    finally:
        await fleet.close()
