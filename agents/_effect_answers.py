"""The coordinator's answer to an ask, stored where only the asking agent reads it (I/O; see agents._effect_asks).

The answer is a ``decision`` envelope signed by the coordinator, addressed to
the agent, naming the ask as its cause, whose payload is the decision recorded
in the log. It is stored in the tenant's memory bucket under
``<agent>.effect.<ask id>``: a rendered server config already lets the agent
direct-get its own namespace there and nothing else, and lets only the
coordinator write it. The runtime cannot subscribe to tenant subjects or
create consumers, so it waits by reading that key again, backing off to once a
second (as ``trustbus approve`` waits on the decision log).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from trustbus.agents._effect_asks import UntrustedAnswer, answer_key, check_answer
from trustbus.agents._memory import memory_bucket
from trustbus.bus import (
    Bus,
    Decision,
    Envelope,
    SignedValue,
    VerificationError,
    decode_signed,
    encode_decision,
    new_envelope,
    subjects,
)

log = logging.getLogger("trustbus.agent")

FIRST_PAUSE_S = 0.02
LONGEST_PAUSE_S = 1.0


def _key(agent: str, ask_id: str) -> str:
    return answer_key(agent, subjects.check_effect_key(ask_id))


async def store_answer(bus: Bus, decision: Decision) -> None:
    """Store the coordinator's signed answer to the ask ``decision`` is about (idempotent: the latest wins).

    Raises:
        TransportError: the bucket did not store it (the caller retries the delivery).
    """
    answer = new_envelope(
        tenant=bus.tenant,
        kind="decision",
        sender=bus.name,
        to=(decision.sender,),
        correlation_id=decision.correlation_id,
        causation_id=decision.envelope_id,
        hop=decision.hop,
        taint=decision.effective_taint,
        content_type="application/msgpack",
        payload=encode_decision(decision),
    )
    sealed = bus.seal(answer)
    value = SignedValue.of(sealed.body, sealed.headers).encode()
    await memory_bucket(bus, direct=False).put(_key(decision.sender, decision.envelope_id), value)


async def await_answer(bus: Bus, agent: str, ask: Envelope, *, tool: str) -> Decision:
    """Wait until the coordinator has answered ``ask`` with anything but ``hold``; that decision.

    Anything under the key that is not the coordinator's answer to this ask is
    logged once and ignored. Bounded by the handler's timeout, not here.

    Raises:
        TransportError: the bucket could not be read.
    """
    key = _key(agent, ask.id)
    pause = FIRST_PAUSE_S
    reported: set[str] = set()
    while True:
        decision = await _read(bus, key, agent, ask.id, reported)
        if decision is not None and decision.verdict != "hold":
            return decision
        if decision is not None and "held" not in reported:
            reported.add("held")
            log.warning(
                "effect held for an operator; waiting",
                extra={"tool": tool, "effect_request": ask.id, "key": ask.idempotency_key},
            )
        await asyncio.sleep(pause)  # no event reaches an agent for this key: read it again (module docstring)
        pause = min(pause * 2, LONGEST_PAUSE_S)


async def _read(bus: Bus, key: str, agent: str, ask_id: str, reported: set[str]) -> Decision | None:
    bucket = memory_bucket(bus, direct=True)
    entry = await bucket.get(key)
    if entry is None:
        return None
    try:
        stored = decode_signed(entry.value)
        keyring = await bus.keyring.knowing(stored.key_id)
        # A component's record, judged at its store time (no skew check): a coordinator whose
        # clock was stepped must still be able to release a held call.
        opened = stored.open(keyring=keyring, stored_ns=entry.stored_ns, at_store=True)
        return check_answer(opened, agent=agent, ask_id=ask_id)
    except (msgspec.DecodeError, VerificationError, UntrustedAnswer) as exc:  # MalformedPayload is a VerificationError
        if str(entry.revision) not in reported:
            reported.add(str(entry.revision))
            log.error(
                "not the coordinator's answer; ignored", extra={"subject": bucket.subject(key), "error": str(exc)}
            )
        return None
