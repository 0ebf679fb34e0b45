"""Operators' side of holds: list what waits, approve or deny it with a signed approval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Literal

import msgspec

from trustbus.agents._decision_log import DecisionLog
from trustbus.agents._errors import AgentError
from trustbus.agents._policy import Policy
from trustbus.agents._spans import approval
from trustbus.bus import (
    Approval,
    Decision,
    Envelope,
    KeyDirectory,
    Keyring,
    TenantStream,
    TransportError,
    VerificationError,
    current_trace,
    decode_effect,
    decode_envelope,
    new_envelope,
    seal,
    subjects,
    tracing_enabled,
    wrong_role,
)

POLL_S = 0.1


class ApprovalError(AgentError):
    """The envelope is not held (unknown, already released or dropped), or the answer was not recorded."""


async def _held(log: DecisionLog, decision: Decision) -> Envelope | None:
    """The held envelope ``decision`` is about, as stored (for its trace context only: not verified here)."""
    try:
        return decode_envelope((await log.log.get(decision.source_seq)).body)
    except (TransportError, VerificationError):
        return None


def _check_operator(keyring: Keyring, tenant: str, operator: str, key_id: str) -> None:
    """Refuse at once what the coordinator would refuse (``not_operator``) after the approver had waited for it."""
    try:
        grant = keyring.resolve(key_id)
    except VerificationError as exc:
        raise ApprovalError(f"the key of {operator!r} cannot approve: {exc}") from exc
    if grant.revoked_at is not None:
        raise ApprovalError(f"the key of {operator!r} ({key_id}) is revoked: it cannot approve")
    if grant.role != "operator":
        raise ApprovalError(wrong_role(tenant, operator, grant.role, "operator"))


async def list_held(
    servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None, reader: str | None = None
) -> list[Decision]:
    """Every envelope currently held for an operator, oldest first.

    ``reader``: the key owner ``nkey_seed`` belongs to, whose reply prefix a
    rendered config allows (an operator); None for the admin or a dev server.
    """
    return [decision for decision, _ in await list_held_requests(servers, tenant, nkey_seed=nkey_seed, reader=reader)]


async def list_held_requests(
    servers: Sequence[str], tenant: str, *, nkey_seed: str | None = None, reader: str | None = None
) -> list[tuple[Decision, str]]:
    """Like :func:`list_held`, each with what the held message asks (:func:`what_is_held`), read from the stream."""
    prefix = subjects.reply_prefix(reader) if reader else None
    async with await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed, inbox_prefix=prefix) as stream:
        log = DecisionLog(stream.log(subjects.all_decisions(tenant)), await stream.keyring(), Policy())
        await log.catch_up()
        return [
            (decision, what_is_held((await log.log.get(decision.source_seq)).body)) for decision in log.state.held()
        ]


SHOWN_CHARS = 200


def what_is_held(body: bytes) -> str:
    """One line saying what a held message asks: a tool call's tool and arguments, else its payload (cut short).

    The decision log says who and why; this says what, so an operator never approves blind.
    """
    try:
        envelope = decode_envelope(body)
        text = envelope.payload.decode(errors="replace")
        if envelope.kind == "effect":
            record = decode_effect(envelope.payload)
            text = f"{record.tool} {record.args.decode(errors='replace')}"
    except (VerificationError, msgspec.DecodeError) as exc:
        return f"(unreadable: {exc})"
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


def _describe(decision: Decision) -> str:
    if decision.verdict == "hold":
        return "held"
    by = f" by {decision.approver} (approval {decision.approval_id})" if decision.approver else ""
    return f"already {'released' if decision.verdict == 'accept' else 'dropped'}{by}: {', '.join(decision.reasons)}"


async def answer(
    servers: Sequence[str],
    tenant: str,
    envelope_id: str,
    *,
    operator: str,
    keys: KeyDirectory,
    approve: bool,
    note: str = "",
    wait_s: float = 10.0,
    nkey_seed: str | None = None,
) -> Decision:
    """Approve or deny a held envelope as ``operator`` and wait for the coordinator to record it.

    Raises ApprovalError if the envelope is not held, or if no coordinator
    recorded the answer within ``wait_s`` (the approval stays in the stream and
    is applied when a coordinator runs).
    """
    identity = keys.load(tenant, operator, role="operator")
    prefix = subjects.reply_prefix(operator) if nkey_seed else None  # a rendered config's operator user
    async with (
        await TenantStream.connect(servers, tenant, nkey_seed=nkey_seed, inbox_prefix=prefix) as stream,
        await stream.follow_keyring() as keyring,
    ):
        _check_operator(keyring.keyring, tenant, operator, identity.key_id)
        log = DecisionLog(stream.log(subjects.all_decisions(tenant)), keyring.keyring, Policy())
        await log.catch_up()
        current = log.state.find(envelope_id)
        if current is None:
            raise ApprovalError(f"no decision about envelope {envelope_id} in tenant {tenant!r}")
        if current.verdict != "hold":
            raise ApprovalError(f"envelope {envelope_id} is not held: {_describe(current)}")
        verdict: Literal["approve", "deny"] = "approve" if approve else "deny"
        held = await _held(log, current) if tracing_enabled() else None
        with approval(operator, current, verdict, envelope=held):
            request = new_envelope(
                tenant=tenant,
                kind="approval",
                sender=operator,
                to=(),
                correlation_id=current.correlation_id,
                causation_id=envelope_id,
                payload=Approval(envelope_id=envelope_id, verdict=verdict, note=note).encode(),
                trace=current_trace(),
            )
            sealed = seal(request, identity)
            await stream.publish(subjects.approval(tenant, await stream.partition(current.correlation_id)), sealed)
            # Wait by re-reading the decision log with message gets: an operator may read the
            # stream but not create consumers or subscribe to tenant subjects, so no event
            # reaches it; the poll is bounded by wait_s.
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                await log.catch_up()
                now = log.state.decision(current.correlation_id, envelope_id)
                assert now is not None
                if now.verdict != "hold":
                    if now.approval_id != request.id:
                        raise ApprovalError(f"envelope {envelope_id} was answered by someone else: {_describe(now)}")
                    return now
                await asyncio.sleep(POLL_S)
            raise ApprovalError(
                f"approval {request.id} is in the stream but no coordinator recorded it within {wait_s:.0f}s"
            )
