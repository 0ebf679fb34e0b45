"""The one translation of nats-py's errors into the bus's (:mod:`bus._errors`).

Every NATS call in :mod:`bus` that can fail goes through :func:`translated`, so
code above the bus catches :class:`~bus.TransportError` and its kinds, never a
nats-py class.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

from trustbus.bus._errors import Conflict, NotFound, Refused, StoreFull, Timeout, TransportError, Unavailable

WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code when a compare-and-set expected another sequence
INSUFFICIENT_RESOURCES = 10023  # JetStream's err_code when the server's or the account's store has no room
STORE_FULL = (
    "the server's JetStream store has no room (insufficient resources): nothing was stored; "
    "free space, or raise the server's max_file_store or the account's max_storage (docs/OPERATIONS.md)"
)

NATS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError)
"""What a nats-py call may raise: catch these, then raise :func:`translated`."""


def store_full(exc: BaseException) -> bool:
    """Whether the server refused a write because its store (or the account's) has no room."""
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == INSUFFICIENT_RESOURCES


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
    if store_full(exc):
        return StoreFull(f"{doing}: {STORE_FULL}")
    if unavailable(exc) or isinstance(exc, _CONNECTION_LOST):
        return Unavailable(f"{doing}: {_words(exc)}")
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return Timeout(f"{doing}: no answer in time")
    if isinstance(exc, nats.js.errors.APIError):
        return Refused(f"{doing}: {exc.description or exc}")
    return TransportError(f"{doing}: {_words(exc)}")


def api_error(error: dict[str, object], doing: str) -> TransportError:
    """The bus error for a JetStream API error answered as JSON (``{"code", "err_code", "description"}``)
    to a request nats-py does not make itself (e.g. an atomic batch)."""  # noqa: D205, D209
    err_code, code = error.get("err_code"), error.get("code")
    description = str(error.get("description", error))
    if err_code == WRONG_LAST_SEQUENCE:
        return Conflict(f"{doing}: {description}")
    if err_code == INSUFFICIENT_RESOURCES:
        return StoreFull(f"{doing}: {STORE_FULL}")
    if code == 503:
        return Unavailable(f"{doing}: {description}")
    return Refused(f"{doing}: {description}")


def _words(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
