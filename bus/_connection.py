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
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import nats.errors

from trustbus.bus._errors import ConfigError

log = logging.getLogger("trustbus.bus")

RECONNECT_TIME_WAIT_S = 0.5
SHORT_RECONNECT_ATTEMPTS = 10
# A server that stops answering (a network partition, not a crash) is noticed within
# PING_INTERVAL_S * MAX_OUTSTANDING_PINGS seconds; a crashed one at once (the socket closes).
PING_INTERVAL_S = 10
MAX_OUTSTANDING_PINGS = 3
OUTAGE_LOG_INTERVAL_S = 30.0  # while the server is away, one line per interval says so, with a count


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
_LOSS = (nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError, OSError)  # errors that lose the connection
_DISCOVERY_REFUSED = re.compile(r'permissions violation for subscription to "\$SRV\.', re.IGNORECASE)


class ConnectionWatch:
    """Logs losing and regaining the server (not the disconnect of a deliberate close) and its errors.

    While the server is away, the failed reconnect attempts (two a second) are counted and
    reported once per ``interval_s``, with the count, and once more with the total on
    reconnecting. A publish the server refuses (a permissions violation) is only reported
    here, as an asynchronous error: ``refused`` fails the publishes to that subject at
    once, instead of letting them time out and be re-sent.
    """

    def __init__(self, *, interval_s: float = OUTAGE_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        """``clock``: monotonic seconds (a test's own)."""
        self.closing = False
        self.refused: Callable[[str, str], None] | None = None
        self._interval_s = interval_s
        self._clock = clock
        self._down_since: float | None = None
        self._attempts = 0  # failed reconnect attempts in this outage
        self._reported = 0  # of which already logged
        self._reported_at = 0.0
        self._discovery_refused = False
        self._cause: str | None = None  # the error that lost the connection, for the disconnect line

    async def error(self, exc: Exception) -> None:
        if self._down_since is not None:
            self._attempts += 1
            now = self._clock()
            if now - self._reported_at >= self._interval_s:
                log.warning(
                    "still disconnected from NATS",
                    extra={
                        "failed_attempts": self._attempts - self._reported,
                        "down_s": round(now - self._down_since, 1),
                        "error": str(exc),
                    },
                )
                self._reported, self._reported_at = self._attempts, now
            return
        if _DISCOVERY_REFUSED.search(str(exc)):  # one refusal per control subject: one line for all
            if not self._discovery_refused:
                log.warning("service discovery ($SRV) is not permitted by the server; carrying on without it")
            self._discovery_refused = True
            return
        if isinstance(exc, _LOSS) and not self.closing:  # the cause of the disconnect that follows: said there
            self._cause = str(exc)
            return
        log.warning("nats error: %s", exc)
        match = _PUBLISH_REFUSED.search(str(exc))
        if match and self.refused is not None:
            self.refused(match.group(1), str(exc))

    async def disconnected(self) -> None:
        if self.closing:
            return
        self._down_since = self._reported_at = self._clock()
        self._attempts = self._reported = 0
        cause, self._cause = self._cause, None
        log.warning("disconnected from NATS; reconnecting to any of the given servers", extra={"error": cause})

    async def reconnected(self) -> None:
        down_s = None if self._down_since is None else round(self._clock() - self._down_since, 1)
        log.warning("reconnected to NATS", extra={"failed_attempts": self._attempts, "down_s": down_s})
        self._down_since = None
