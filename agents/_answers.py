"""The coordinator's signed answers to one agent, stored under the agent's own memory namespace.

An answer is a ``decision`` envelope signed by the coordinator, addressed to
the agent, naming the envelope it is about as its cause, whose payload is a
decision. It is stored in the tenant's memory bucket under a key of the
agent's namespace with a dot after its first token (``<agent>.effect.<ask id>``
for an effect ask, ``<agent>.written.<key>`` for a memory write), which no
memory write can name (memory keys have no dot): a rendered server config lets
the agent direct-get its own namespace and nothing else, and lets only the
coordinator write it. The runtime cannot subscribe to tenant subjects or create
consumers, so it waits for an answer by reading its key again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from trustbus.bus import (
    Decision,
    Opened,
    SignedValue,
    VerificationError,
    decode_decision,
    decode_signed,
    encode_decision,
    new_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from trustbus.bus import Bucket, Bus, KeyringStore

log = logging.getLogger("trustbus.agent")

FIRST_PAUSE_S = 0.02  # the first pause of a wait for an answer, doubled up to LONGEST_PAUSE_S
LONGEST_PAUSE_S = 1.0


class UntrustedAnswer(ValueError):
    """A stored answer that is not the coordinator's answer to this agent about this envelope."""


def answer_of(opened: Opened, *, agent: str, about: str) -> Decision:
    """The decision a verified answer states, if it is a coordinator's answer to ``agent`` about envelope ``about``.

    Raises:
        UntrustedAnswer: not signed by a coordinator key, not addressed to ``agent``,
            or about another envelope.
    """
    envelope = opened.envelope
    if opened.grant.role != "coordinator" or envelope.kind != "decision":
        raise UntrustedAnswer(f"a {envelope.kind} signed by a {opened.grant.role} key ({envelope.sender})")
    if envelope.to != (agent,) or envelope.causation_id != about:
        raise UntrustedAnswer(f"an answer to {envelope.to} about {envelope.causation_id}: not {agent}'s {about}")
    try:
        decision = decode_decision(envelope.payload)
    except ValueError as exc:  # msgspec.DecodeError is a ValueError
        raise UntrustedAnswer(f"unreadable decision: {exc}") from exc
    if decision.envelope_id != about or decision.sender != agent:
        raise UntrustedAnswer(f"a decision about {decision.sender}'s {decision.kind} {decision.envelope_id}")
    return decision


async def store_answer(bus: Bus, bucket: Bucket, key: str, decision: Decision) -> None:
    """Store ``decision`` as the coordinator's signed answer to its sender under ``key`` (the latest wins).

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
    await bucket.put(key, SignedValue.of(sealed.body, sealed.headers).encode())


async def read_answer(
    bucket: Bucket, keys: KeyringStore, key: str, check: Callable[[Opened], Decision], reported: set[str]
) -> Decision | None:
    """The answer stored under ``key`` if ``check`` accepts it; None if there is none or it is not trusted.

    What is not the coordinator's answer is logged once per revision (``reported``) and ignored.

    Raises:
        TransportError: the bucket or the keyring could not be read.
    """
    entry = await bucket.get(key)
    if entry is None:
        return None
    try:
        stored = decode_signed(entry.value)
        keyring = await keys.knowing(stored.key_id)
        # A component's record, judged at its store time (no skew check): a coordinator whose
        # clock was stepped must still be able to answer.
        opened = stored.open(keyring=keyring, stored_ns=entry.stored_ns, at_store=True)
        return check(opened)
    except (msgspec.DecodeError, VerificationError, UntrustedAnswer) as exc:  # MalformedPayload is a VerificationError
        if str(entry.revision) not in reported:
            reported.add(str(entry.revision))
            log.error(
                "not the coordinator's answer; ignored", extra={"subject": bucket.subject(key), "error": str(exc)}
            )
        return None
