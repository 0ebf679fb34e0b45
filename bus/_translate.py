"""The one translation of nats-py's errors into the bus's (:mod:`bus._errors`).

Every NATS call in :mod:`bus` that can fail goes through :func:`translated`, so
code above the bus catches :class:`~bus.TransportError` and its kinds, never a
nats-py class.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

from trustbus.bus._errors import Conflict, NotFound, Refused, Timeout, TransportError, Unavailable

WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code when a compare-and-set expected another sequence

NATS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError)
"""What a nats-py call may raise: catch these, then raise :func:`translated`."""


def unavailable(exc: BaseException) -> bool:
    """Whether a request failed because no server or stream leader answered (an election, or no stream at all)."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True  # a 503 status (it has no code then) or error: "JetStream cluster not available" and the like
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code == 503
    return isinstance(
        exc,
        (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.OutboundBufferLimitError),
    )


_CONNECTION_LOST = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
)


def translated(exc: BaseException, doing: str) -> TransportError:
    """The bus error for a nats-py error raised while ``doing`` (e.g. "read memory key x"); raise it ``from exc``."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(f"{doing}: {exc.description or 'not found'}")
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code == WRONG_LAST_SEQUENCE:
        return Conflict(f"{doing}: {exc.description}")
    if unavailable(exc) or isinstance(exc, _CONNECTION_LOST):
        return Unavailable(f"{doing}: {_words(exc)}")
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return Timeout(f"{doing}: no answer in time")
    if isinstance(exc, nats.js.errors.APIError):
        return Refused(f"{doing}: {exc.description or exc}")
    return TransportError(f"{doing}: {_words(exc)}")


def _words(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
