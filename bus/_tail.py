"""Reading the tenant stream in order, verifying each envelope, without consuming it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from trustbus.bus._errors import TransportError, VerificationError
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

    An ordered ephemeral consumer reads the stream; nothing is acked or changed.

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
    """
    config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL)
    if from_seq is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq)
    elif since_ns is not None:
        start = datetime.fromtimestamp(since_ns / 1e9, tz=UTC)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    try:
        sub = await js.subscribe(
            subject or all_subjects(tenant),
            stream=stream_name(tenant),
            ordered_consumer=True,
            config=config,
            pending_msgs_limit=4096,
        )
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise TransportError(f"cannot read stream {stream_name(tenant)}: {exc}") from exc
    # One envelope is forwarded to several inboxes: a replay is the same id twice on one subject.
    seen: dict[str, SeenIds] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except TimeoutError:  # nats.errors.TimeoutError is a subclass
                if idle_timeout_s is not None:
                    return
                continue
            per_subject = seen.setdefault(msg.subject, SeenIds(window_ns=limits.skew_ns))
            yield await _verify(
                msg,
                keyring,
                limits,
                per_subject,
                recipient=mediated_recipient(tenant, msg.subject),
                at_store=judged_at_store(tenant, msg.subject),
            )
    finally:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error):
            pass


async def _verify(
    msg: Msg, keyring: KeyringStore, limits: Limits, seen: SeenIds, *, recipient: str | None, at_store: bool
) -> TailItem:
    seq = msg.metadata.sequence.stream
    pending = msg.metadata.num_pending
    stored_ns = unix_ns(msg.metadata.timestamp)
    headers = msg.headers or {}
    key_id = headers.get(HEADER_KEY, "")
    if key_id and not keyring.keyring.knows(key_id):
        await keyring.refresh_key(key_id)
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
