"""The coordinator's answer to an ask, stored where only the asking agent reads it (I/O; see agents._effect_asks).

The answer (:mod:`agents._answers`) is stored in the tenant's memory bucket
under ``<agent>.effect.<ask id>``; the runtime waits for it by reading that key
again, backing off to once a second (as ``trustbus approve`` waits on the
decision log).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from trustbus.agents._answers import FIRST_PAUSE_S, LONGEST_PAUSE_S, read_answer, store_answer
from trustbus.agents._effect_asks import answer_key, check_answer
from trustbus.agents._memory import memory_bucket
from trustbus.bus import Bus, Decision, Envelope, subjects

log = logging.getLogger("trustbus.agent")


def _key(agent: str, ask_id: str) -> str:
    return answer_key(agent, subjects.check_effect_key(ask_id))


async def store_ask_answer(bus: Bus, decision: Decision) -> None:
    """Store the coordinator's signed answer to the ask ``decision`` is about (idempotent: the latest wins).

    Raises:
        TransportError: the bucket did not store it (the caller retries the delivery).
    """
    bucket = memory_bucket(bus, direct=False)
    await store_answer(bus, bucket, _key(decision.sender, decision.envelope_id), decision)


async def read_ask_answer(bus: Bus, agent: str, ask: Envelope) -> Decision | None:
    """The coordinator's answer to ``ask`` as stored now (``hold`` included); None if there is none yet.

    Raises:
        TransportError: the bucket could not be read.
    """
    check = functools.partial(check_answer, agent=agent, ask_id=ask.id)
    return await read_answer(memory_bucket(bus, direct=True), bus.keyring, _key(agent, ask.id), check, set())


async def await_answer(bus: Bus, agent: str, ask: Envelope, *, tool: str, hold_ends_wait: bool = False) -> Decision:
    """Wait until the coordinator has answered ``ask`` with anything but ``hold``; that decision.

    ``hold_ends_wait``: a ``hold`` is an answer too (the caller does not wait for the operator).
    Anything under the key that is not the coordinator's answer to this ask is
    logged once and ignored. Bounded by the handler's timeout, not here.

    Raises:
        TransportError: the bucket could not be read.
    """
    key = _key(agent, ask.id)
    bucket = memory_bucket(bus, direct=True)
    check = functools.partial(check_answer, agent=agent, ask_id=ask.id)
    pause = FIRST_PAUSE_S
    reported: set[str] = set()
    while True:
        decision = await read_answer(bucket, bus.keyring, key, check, reported)
        if decision is not None and (decision.verdict != "hold" or hold_ends_wait):
            return decision
        if decision is not None and "held" not in reported:
            reported.add("held")
            log.warning(
                "effect held for an operator; waiting",
                extra={"tool": tool, "effect_request": ask.id, "key": ask.idempotency_key},
            )
        await asyncio.sleep(pause)  # no event reaches an agent for this key: read it again (module docstring)
        pause = min(pause * 2, LONGEST_PAUSE_S)
