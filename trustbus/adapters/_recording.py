"""What every framework adapter shares: a call made as a recorded effect, its key, and the run's input and output.

A framework calls its model and its tools itself; the adapter hands each call to ``ctx.effect`` under the
tool's name, with the call to make as what runs if the effect has no completed record (:func:`as_effect`).
Every tool is bound to :func:`perform`, which makes that call under the effect's idempotency key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from pydantic_core import to_jsonable_python

from trustbus.agents import Context, Tool
from trustbus.bus import Envelope, MalformedPayload, decode_json

MODEL_TOOL = "model_request"
"""The built-in registry entry every model request of an adapted agent is recorded under."""

MODEL_REQUEST = Tool(name=MODEL_TOOL, system="model", owner="agent", effect_class="read", result_taint=("llm",))

# Volatile fields of a dumped message: they differ between two runs that ask the model the same thing.
_VOLATILE = frozenset(
    {"timestamp", "request_timestamp", "duration", "run_id", "conversation_id", "usage", "model_id", "provider_url"}
)

_pending: ContextVar[Callable[[], Awaitable[Any]] | None] = ContextVar("trustbus_pending_call", default=None)
_key: ContextVar[str | None] = ContextVar("trustbus_idempotency_key", default=None)


def idempotency_key() -> str | None:
    """The idempotency key of the tool call running now: pass it to the system the tool acts on.

    The same on every attempt of the same call, so a system that drops a repeated key acts once even if
    the process dies mid-call. None when the agent runs on its own, off the bus.
    """
    return _key.get()


async def perform(args: dict[str, Any], *, idempotency_key: str) -> Any:
    """What every tool of an adapter is bound to: make the call ``ctx.effect`` was asked for, under its key."""
    call = _pending.get()
    if call is None:
        raise RuntimeError("a tool of an adapted agent was called outside a run of its agent")
    token = _key.set(idempotency_key)
    try:
        return to_jsonable_python(await call())
    finally:
        _key.reset(token)


async def as_effect(ctx: Context, tool: str, args: dict[str, Any], call: Callable[[], Awaitable[Any]]) -> Any:
    """``ctx.effect(tool, args)``, with ``call`` as what runs if the call has no completed record."""
    token = _pending.set(call)
    try:
        return await ctx.effect(tool, args)
    finally:
        _pending.reset(token)


def stable(value: Any) -> Any:
    """``value`` (JSON) without the fields that change between two runs asking the same thing (timestamps, usage)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def digest(value: Any) -> str:
    """The SHA-256 of ``value`` as canonical JSON: how a long history goes into a model request's arguments."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def prompt_of(envelope: Envelope) -> str:
    """The user prompt a delivery makes: a text payload as is, a JSON string as the string, other JSON as JSON text."""
    if envelope.content_type == "text/plain":
        return envelope.payload.decode(errors="replace")
    try:
        value = decode_json(envelope.payload)
    except MalformedPayload:
        return envelope.payload.decode(errors="replace")
    return value if isinstance(value, str) else json.dumps(value)


def reply_payload(output: Any) -> str | dict[str, Any] | list[Any] | bytes:
    """The reply a run's output makes: a string as text, anything else as JSON."""
    if isinstance(output, str):
        return output
    value = to_jsonable_python(output)
    return value if isinstance(value, dict | list) else json.dumps(value).encode()
