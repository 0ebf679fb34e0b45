"""Work on deliveries through a server outage: kept and tried again in place, never handed back.

While the server cannot store (no stream leader, no room in its store), handing
a delivery back would spend one of its deliveries, and a message past
``max_deliver`` is quarantined, never handled: an outage longer than the
backoff would turn acknowledged envelopes into quarantine records. So the
coordinator (with a batch) and the agent runtime (with a delivery) keep it,
tell the server it is still in progress, and run the work again after a pause
(what a redelivery would do, without spending one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from trustbus.bus import Delivery, Timeout, Unavailable

T = TypeVar("T")

log = logging.getLogger("trustbus.agents")

PAUSES_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # between attempts; the last repeats


async def patiently(deliveries: Sequence[Delivery], work: Callable[[], Awaitable[T]], *, stopping: asyncio.Event) -> T:
    """Run ``work`` (what it returns); while it fails for want of a server that can store, keep ``deliveries``
    and run it again.

    ``work`` must be safe to run again (decisions recorded are not made twice,
    forwards carry their message ids). Once ``stopping`` is set the error is
    raised: the caller hands the messages back to the partition's next holder.
    """  # noqa: D205
    attempt = 0
    while True:
        try:
            return await work()
        except (Unavailable, Timeout) as exc:
            if stopping.is_set():
                raise
            pause = PAUSES_S[min(attempt, len(PAUSES_S) - 1)]
            log.warning(
                "server cannot store; delivery kept, trying again",
                extra={"size": len(deliveries), "retry_s": pause, "error": str(exc)},
            )
            for delivery in deliveries:
                if not delivery.settled:
                    await delivery.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            attempt += 1
