"""NATS service discovery: a long-running process answers ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``.

The NATS micro protocol (what ``nats micro ls``, ``info`` and ``stats`` ask),
answered by :class:`ServiceResponder` with no endpoints of its own: a process
says what it is (``trustbus-coordinator``, ``trustbus-agent``,
``trustbus-ledger``), its instance id, the trustbus version, its tenant and
name, and, in ``STATS``, a few figures of its work under ``trustbus``.

A request is answered only when its reply subject is an inbox (``_INBOX.`` or
a trustbus reply prefix): a request naming a stream subject as its reply must
not make this process publish there. Under a rendered server config the
``$SRV`` subjects are not permitted; the process then carries on without
discovery (:class:`bus._connection.ConnectionWatch` logs it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from trustbus.bus._admin import connect_nats

PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
FLUSH_S = 2  # seconds at most, for the server to confirm the subscriptions when answering starts
_TYPES = {verb: f"io.nats.micro.v1.{verb.lower()}_response" for verb in VERBS}
_INBOXES = ("_INBOX.", "_INBOX_")  # nats-py's default reply prefix, and the trustbus ones (subjects.reply_prefix)


class ServiceResponder:
    """Answers the micro protocol's control requests as one service instance, while open.

    Args:
        nc: the process's connection.
        kind: its service name, ``trustbus-<role>``.
        metadata: what it is (tenant, name, host, pid), in every answer.
        stats: the figures ``STATS`` adds under ``trustbus`` (read on the event loop).
    """

    def __init__(
        self, nc: NATS, kind: str, *, metadata: Mapping[str, str], stats: Callable[[], Mapping[str, object]]
    ) -> None:
        """Subscribe from :meth:`start` (or ``async with``)."""
        self.kind = kind
        self.id = uuid.uuid4().hex
        self._nc = nc
        self._metadata = dict(metadata)
        self._stats = stats
        self._started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._subscriptions: list[Subscription] = []

    def _identity(self, verb: str) -> dict[str, Any]:
        return {
            "type": _TYPES[verb],
            "name": self.kind,
            "id": self.id,
            "version": version("trustbus"),
            "metadata": self._metadata,
        }

    def answer(self, verb: str) -> dict[str, Any]:
        """The JSON answer to ``$SRV.<verb>``."""
        body = self._identity(verb)
        if verb == "INFO":
            body |= {"description": f"trustbus {self.kind.removeprefix('trustbus-')} process", "endpoints": []}
        elif verb == "STATS":
            body |= {"started": self._started, "endpoints": [], "trustbus": dict(self._stats())}
        return body

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply.startswith(_INBOXES):
            return  # see the module's docstring
        verb = msg.subject.split(".")[1]
        await msg.respond(json.dumps(self.answer(verb)).encode())

    async def start(self) -> ServiceResponder:
        """Subscribe to the control subjects: every service's, this kind's, this instance's."""
        for verb in VERBS:
            for subject in (
                f"{PREFIX}.{verb}",
                f"{PREFIX}.{verb}.{self.kind}",
                f"{PREFIX}.{verb}.{self.kind}.{self.id}",
            ):
                self._subscriptions.append(await self._nc.subscribe(subject, cb=self._on_request))
        if self._nc.is_connected:  # answering once this returns: the server has the subscriptions
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # late: they are sent when they can be
                await self._nc.flush(timeout=FLUSH_S)
        return self

    async def aclose(self) -> None:
        """Stop answering (a closed connection has dropped the subscriptions already)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        if self._nc.is_connected:
            for subscription in subscriptions:
                await subscription.unsubscribe()

    async def __aenter__(self) -> ServiceResponder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def process_metadata(tenant: str, name: str) -> dict[str, str]:
    """What a process says it is in discovery answers: tenant, name, host and pid."""
    return {"tenant": tenant, "name": name, "host": socket.gethostname(), "pid": str(os.getpid())}


async def discover_services(
    servers: Sequence[str], verb: str = "PING", *, wait_s: float = 1.0, nkey_seed: str | None = None
) -> list[dict[str, Any]]:
    """Every answer to ``$SRV.<verb>`` within ``wait_s`` (what ``nats micro ls`` asks), sorted by kind and name.

    A request to every service at once has no last answer, so it waits ``wait_s``, as ``nats micro ls`` does.
    """
    nc = await connect_nats(servers, nkey_seed=nkey_seed)
    answers: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        answers.append(json.loads(msg.data))

    try:
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox, cb=collect)
        await nc.publish(f"{PREFIX}.{verb}", reply=inbox)
        await asyncio.sleep(wait_s)  # the answers' deadline: there is no event for "every service answered"
        await subscription.unsubscribe()
    finally:
        await nc.close()
    return sorted(answers, key=lambda a: (a["name"], a.get("metadata", {}).get("name", ""), a["id"]))
