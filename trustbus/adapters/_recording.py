"""What every framework adapter shares: a call made as a recorded effect, its key, and the run's input and output.

A framework calls its model and its tools itself; the adapter hands each call to ``ctx.effect`` under the
tool's name, with the call to make as what runs if the effect has no completed record (:func:`as_effect`).
A model request is a call of the built-in tool ``model_request`` whose arguments are the new request and a
digest of the history before it (:func:`digest_arguments`). Every tool is bound to :func:`perform`, which
makes that call under the effect's idempotency key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from typing import Any

from pydantic_core import to_jsonable_python

from trustbus.agents import Context, EffectDenied, Tool
from trustbus.bus import Envelope, MalformedPayload, decode_json

MODEL_TOOL = "model_request"
"""The built-in registry entry every model request of an adapted agent is recorded under."""

MODEL_REQUEST = Tool(name=MODEL_TOOL, system="model", owner="agent", effect_class="read", result_taint=("llm",))

VOLATILE = frozenset(
    {"timestamp", "request_timestamp", "duration", "run_id", "conversation_id", "usage", "model_id", "provider_url"}
)
"""Fields of a dumped message that differ between two runs asking the model the same thing."""

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


async def as_effect(
    ctx: Context,
    tool: str,
    args: dict[str, Any],
    call: Callable[[], Awaitable[Any]],
    *,
    wait_for_operator: bool = True,
) -> Any:
    """``ctx.effect(tool, args)``, with ``call`` as what runs if the call has no completed record."""
    token = _pending.set(call)
    try:
        return await ctx.effect(tool, args, wait_for_operator=wait_for_operator)
    finally:
        _pending.reset(token)


def refusal(tool: str, refused: EffectDenied) -> str:
    """What a model is told of a call of ``tool`` the coordinator refused (its result, or a failure)."""
    by = f" by {refused.approver}" if refused.approver else ""
    return f"{tool} was not run: {refused.reason}{by}"


def stable(value: Any, volatile: Collection[str] = VOLATILE) -> Any:
    """``value`` (dumped JSON) without the ``volatile`` fields, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [stable(v, volatile) for v in value]
    return value


def digest_arguments(dumped: list[Any], volatile: Collection[str] = VOLATILE) -> dict[str, Any]:
    """The effect arguments of a model request: the last dumped message as is, those before it as a digest.

    ``volatile`` fields are left out, so the same conversation makes the same arguments (and so the
    same idempotency key) on every attempt and in a replay.
    """
    kept = stable(dumped, volatile)
    history = json.dumps(kept[:-1], sort_keys=True, separators=(",", ":")).encode()
    return {"history": hashlib.sha256(history).hexdigest(), "request": kept[-1] if kept else None}


def content_of(envelope: Envelope) -> Any:
    """A payload as a value: a ``text/plain`` one as its text, JSON as what it encodes, anything else as text."""
    if envelope.content_type == "text/plain":
        return envelope.payload.decode(errors="replace")
    try:
        return decode_json(envelope.payload)
    except MalformedPayload:
        return envelope.payload.decode(errors="replace")


def prompt_of(envelope: Envelope) -> str:
    """The user prompt a delivery makes: a text payload as is, a JSON string as the string, other JSON as JSON text."""
    value = content_of(envelope)
    return value if isinstance(value, str) else json.dumps(value)


def reply_payload(output: Any) -> str | dict[str, Any] | list[Any] | bytes:
    """The reply a run's output makes: a string as text, anything else as JSON."""
    if isinstance(output, str):
        return output
    value = to_jsonable_python(output)
    return value if isinstance(value, dict | list) else json.dumps(value).encode()
