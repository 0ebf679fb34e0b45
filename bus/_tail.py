"""Reading the tenant stream in order, verifying each envelope, without consuming it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from trustbus.bus._errors import VerificationError
from trustbus.bus._in_order import Start, read_in_order
from trustbus.bus._keyring_store import KeyringStore
from trustbus.bus._seal import HEADER_KEY, Limits, Opened, SeenIds, open_envelope
from trustbus.bus._stored import unix_ns
from trustbus.bus._subjects import all_subjects, judged_at_store, mediated_recipient, stream_name


@dataclass(frozen=True, slots=True)
class TailItem:
    """One stored message: verified (``opened``) or not (``error``)."""

    stream_seq: int
    subject: str
    stored_ns: int
    pending: int
    opened: Opened | None
    error: VerificationError | None


async def tail(
    js: JetStreamContext,
    keyring: KeyringStore,
    tenant: str,
    *,
    subject: str | None = None,
    from_seq: int | None = None,
    since_ns: int | None = None,
    new_only: bool = False,
    limits: Limits = Limits(),
    idle_timeout_s: float | None = None,
) -> AsyncIterator[TailItem]:
    """Yield every message of the tenant stream (optionally filtered), verified, in stream order.

    Ephemeral pull consumers read the stream a batch at a time (:func:`bus._in_order.read_in_order`):
    a caller slower than the stream slows the reading, and no message is skipped.
    Nothing is acked or changed.

    Args:
        js: a JetStream context.
        keyring: the tenant's keyring (followed, so keys added later verify).
        tenant: the tenant.
        subject: a filter within the tenant (default: everything, ``tb.<tenant>.>``).
        from_seq: start at this stream sequence.
        since_ns: start at the first message stored at or after this time (unix ns).
        new_only: start with the next message stored.
        limits: size and skew limits.
        idle_timeout_s: stop when nothing arrives for this long (None: follow forever).

    Raises:
        TransportError: the stream cannot be read.
    """
    start = Start(seq=from_seq, stored_ns=since_ns, new_only=new_only)
    reading = read_in_order(
        js, stream_name(tenant), [subject or all_subjects(tenant)], start=start, idle_timeout_s=idle_timeout_s
    )
    async with contextlib.aclosing(verified(reading, keyring, tenant, limits)) as items:
        async for item in items:
            yield item


async def verified(
    reading: AsyncGenerator[list[Msg], None], keyring: KeyringStore, tenant: str, limits: Limits
) -> AsyncGenerator[TailItem, None]:
    """Each message of ``reading`` (batches of the tenant stream, in order), verified; closes ``reading`` when done."""
    # One envelope is forwarded to several inboxes: a replay is the same id twice on one subject.
    seen: dict[str, SeenIds] = {}
    async with contextlib.aclosing(reading):
        async for msgs in reading:
            for msg in msgs:
                per_subject = seen.setdefault(msg.subject, SeenIds(window_ns=limits.skew_ns))
                yield await _verify(
                    msg,
                    keyring,
                    limits,
                    per_subject,
                    recipient=mediated_recipient(tenant, msg.subject),
                    at_store=judged_at_store(tenant, msg.subject),
                )


async def _verify(
    msg: Msg, keyring: KeyringStore, limits: Limits, seen: SeenIds, *, recipient: str | None, at_store: bool
) -> TailItem:
    seq = msg.metadata.sequence.stream
    pending = msg.metadata.num_pending
    stored_ns = unix_ns(msg.metadata.timestamp)
    headers = msg.headers or {}
    key_id = headers.get(HEADER_KEY, "")
    await keyring.knowing(key_id)
    seen.prune(stored_ns)
    try:
        opened = open_envelope(
            msg.data,
            headers,
            keyring=keyring.keyring,
            received_ns=stored_ns,
            limits=limits,
            seen=seen,
            stream_seq=seq,
            recipient=recipient,
            at_store=at_store,
        )
    except VerificationError as exc:
        return TailItem(
            stream_seq=seq, subject=msg.subject, stored_ns=stored_ns, pending=pending, opened=None, error=exc
        )
    seen.add(opened.envelope, seq)
    return TailItem(
        stream_seq=seq, subject=msg.subject, stored_ns=stored_ns, pending=pending, opened=opened, error=None
    )
