"""W3C trace context as it travels inside an envelope (docs/WIRE.md, "Trace context").

``traceparent`` is ``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``,
lowercase, neither id all zeros; only version ``00`` is written or read (the
bytes are signed: a receiver checks, it never rewrites). ``tracestate`` is the
W3C list of at most 32 ``key=value`` members, at most 512 characters, or empty
for none. Pure: no I/O, no OpenTelemetry import.
"""

from __future__ import annotations

import re

TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"
TRACESTATE_MAX = 512
TRACESTATE_MEMBERS_MAX = 32
HEADER_TRACEPARENT = "traceparent"
"""The NATS header repeating the envelope's ``traceparent`` (unsigned, informational; nats-server's message
tracing reads it)."""

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"{_KEY}={_VALUE}\Z")


def trace_problem(traceparent: str, tracestate: str) -> str | None:
    """What is wrong with a trace context the schema patterns let through; None if nothing."""
    _, trace_id, parent_id, _ = traceparent.split("-")
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return "traceparent: an all-zero trace id or parent id is invalid"
    if not tracestate:
        return None
    members = [m.strip(" \t") for m in tracestate.split(",")]
    if len(members) > TRACESTATE_MEMBERS_MAX:
        return f"tracestate: more than {TRACESTATE_MEMBERS_MAX} members"
    keys = []
    for member in members:
        if not _MEMBER.match(member):
            return f"tracestate: {member[:40]!r} is not a key=value list member"
        keys.append(member.partition("=")[0])
    if len(set(keys)) != len(keys):
        return "tracestate: a key appears twice"
    return None
