"""The envelope a log line is about: its tenant, agent, correlation and trace id on every line.

Code that handles one envelope enters :func:`log_about` once; every log record made
inside it (by any module, in that task) gets the fields through
:class:`EnvelopeFields`, a filter on the log handler, so call sites do not
repeat them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustbus.bus._envelope import Envelope

_ABOUT: ContextVar[dict[str, str | None] | None] = ContextVar("trustbus_log_envelope", default=None)


def trace_id(envelope: Envelope) -> str | None:
    """The W3C trace id of the span that sent ``envelope`` (from its signed trace context), if any."""
    traceparent = envelope.traceparent
    return traceparent.split("-")[1] if traceparent else None


@contextmanager
def log_about(envelope: Envelope, *, agent: str) -> Iterator[None]:
    """Log lines made inside are about ``envelope`` and ``agent`` (the agent handling it, or its sender)."""
    fields: dict[str, str | None] = {
        "tenant": envelope.tenant,
        "agent": agent,
        "correlation_id": envelope.correlation_id,
        "trace_id": trace_id(envelope),  # None: its sender was not tracing
        "envelope_id": envelope.id,
    }
    token = _ABOUT.set(fields)
    try:
        yield
    finally:
        _ABOUT.reset(token)


class EnvelopeFields(logging.Filter):
    """Adds the fields of the envelope being handled (:func:`log_about`) to a record that does not set them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        fields = _ABOUT.get()
        if fields is not None:
            for name, value in fields.items():
                if name not in record.__dict__:
                    record.__dict__[name] = value
        return True
