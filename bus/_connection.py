"""How every NATS client of the bus connects: all the servers it was given, reconnecting across them.

Given a cluster's URLs, a client whose server dies reconnects to another one
within milliseconds (nats-py tries the next server at once and waits
``RECONNECT_TIME_WAIT_S`` only before retrying a server it just failed on).
Long-running processes (agents, the coordinator, the ledger service) never
give up reconnecting; short commands give up after ``SHORT_RECONNECT_ATTEMPTS``
tries per server, so an unreachable server is reported within seconds.
:class:`ConnectionWatch` is the long-running connection's callbacks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from trustbus.bus._errors import ConfigError

log = logging.getLogger("trustbus.bus")

RECONNECT_TIME_WAIT_S = 0.5
SHORT_RECONNECT_ATTEMPTS = 10
# A server that stops answering (a network partition, not a crash) is noticed within
# PING_INTERVAL_S * MAX_OUTSTANDING_PINGS seconds; a crashed one at once (the socket closes).
PING_INTERVAL_S = 10
MAX_OUTSTANDING_PINGS = 3


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def split_servers(servers: str | Sequence[str]) -> list[str]:
    """One URL, a comma-separated list (``NATS_URL`` style) or a sequence of them, as a list of URLs.

    Raises ConfigError for one that is not a NATS URL (``nats://HOST:PORT``, or tls, ws, wss).
    """
    items = [servers] if isinstance(servers, str) else list(servers)
    urls = [url.strip() for item in items for url in item.split(",") if url.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in NATS_SCHEMES or not parts.hostname:
            raise ConfigError(f"{redacted(url)!r} is not a NATS server URL: use nats://HOST:PORT")
    return urls


def redacted(url: str) -> str:
    """``url`` with any password or token in it replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] + ":***" if ":" in userinfo else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def connect_options(servers: str | Sequence[str], *, long_running: bool) -> dict[str, object]:
    """Keyword arguments for ``nats.connect``: every server, reconnecting (forever if ``long_running``)."""
    return {
        "servers": split_servers(servers),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1 if long_running else SHORT_RECONNECT_ATTEMPTS,
        "reconnect_time_wait": RECONNECT_TIME_WAIT_S,
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
    }


_PUBLISH_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class ConnectionWatch:
    """Logs losing and regaining the server (not the disconnect of a deliberate close) and its errors.

    A publish the server refuses (a permissions violation) is only reported here, as an
    asynchronous error: ``refused`` fails the publishes to that subject at once, instead of
    letting them time out and be re-sent.
    """

    def __init__(self) -> None:
        self.closing = False
        self.refused: Callable[[str, str], None] | None = None

    async def error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)
        match = _PUBLISH_REFUSED.search(str(exc))
        if match and self.refused is not None:
            self.refused(match.group(1), str(exc))

    async def disconnected(self) -> None:
        if not self.closing:
            log.warning("disconnected from NATS; reconnecting to any of the given servers")

    async def reconnected(self) -> None:
        log.warning("reconnected to NATS")
