"""Reading the tenant stream a batch at a time, so a reader holds one batch, never the whole stream.

Like :func:`ledger.read_stream` (an ephemeral pull consumer; a pull never
outruns the reader, and reading resumes with a new consumer from where it
stopped while a cluster elects a leader), but as an async iterator of batches
up to a sequence fixed by the caller, optionally filtered on some subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from trustbus.bus import StoredMessage, TransportError, subjects
from trustbus.bus._publisher import UNAVAILABLE_S
from trustbus.bus._translate import unavailable

log = logging.getLogger("trustbus.ledger")

FETCH = 1000
_PAUSES_S = (0.05, 0.1, 0.2, 0.5, 1.0)


def stored_message(msg: Msg) -> StoredMessage:
    """A fetched stream message as the ledger keeps it."""
    meta = msg.metadata
    return StoredMessage(
        meta.sequence.stream, msg.subject, int(meta.timestamp.timestamp() * 1e9), dict(msg.headers or {}), msg.data
    )


async def stream_batches(
    js: JetStreamContext,
    tenant: str,
    *,
    last: int,
    from_seq: int = 1,
    only: Sequence[str] = (),
) -> AsyncGenerator[list[StoredMessage], None]:
    """The messages of ``TB_<tenant>`` from ``from_seq`` through ``last``, in order, a fetched batch at a time.

    Args:
        js: the JetStream context.
        tenant: the tenant.
        last: the last sequence to read (the stream's last sequence when the read began, say).
        from_seq: the first sequence.
        only: read only messages on these subjects (default: all).

    Raises:
        TransportError: the stream cannot be read, or reading stalled for longer than a leader election.
    """
    stream = subjects.stream_name(tenant)
    start = from_seq
    deadline: float | None = None
    pauses = iter(_PAUSES_S)
    while start <= last:
        try:
            async for batch in _read(js, tenant, start=start, last=last, only=only):
                start = batch[-1].seq + 1
                deadline, pauses = None, iter(_PAUSES_S)
                yield batch
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            if not (unavailable(exc) or isinstance(exc, TimeoutError | nats.errors.TimeoutError)):
                raise TransportError(f"cannot read {stream}: {exc}") from exc
            deadline = deadline or time.monotonic() + UNAVAILABLE_S
            if time.monotonic() > deadline:
                raise TransportError(f"reading {stream} stalled after sequence {start - 1}: {exc}") from exc
            log.warning("stream unavailable while reading it (leader election?); reading on", extra={"stream": stream})
            await asyncio.sleep(next(pauses, _PAUSES_S[-1]))


async def _read(
    js: JetStreamContext, tenant: str, *, start: int, last: int, only: Sequence[str]
) -> AsyncGenerator[list[StoredMessage], None]:
    """Batches from ``start`` through ``last`` through one ephemeral consumer; raises on any error."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
        filter_subjects=list(only) or None,
    )
    sub = await js.pull_subscribe(subjects.all_subjects(tenant), stream=subjects.stream_name(tenant), config=config)
    try:
        if only and not (await sub.consumer_info()).num_pending:
            return  # nothing on these subjects
        while True:
            batch: list[StoredMessage] = []
            done = False
            for msg in await sub.fetch(FETCH, timeout=10):
                m = stored_message(msg)
                if m.seq > last:
                    done = True
                    break
                batch.append(m)
                done = m.seq == last or (bool(only) and msg.metadata.num_pending == 0)
            if batch:
                yield batch
            if done:
                return
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()
