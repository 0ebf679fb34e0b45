"""Log lines: their two formats, the envelope they are about, and outages reported with a count."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import nats.errors
import pytest

from trustbus._logging import JsonFormatter, TextFormatter, configure
from trustbus.bus import EnvelopeFields, log_about, new_envelope
from trustbus.bus._connection import ConnectionWatch

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def trustbus_logger() -> Iterator[logging.Logger]:
    """The ``trustbus`` logger, propagating to pytest's capture; put back as it was after the test."""
    logger = logging.getLogger("trustbus")
    kept = (logger.handlers[:], logger.level, logger.propagate)
    logger.propagate = True
    yield logger
    logger.handlers[:], logger.level, logger.propagate = kept


def record(msg: str = "handled", **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "trustbus.agent", "levelname": "WARNING", "msg": msg, **extra})
    EnvelopeFields().filter(made)
    return made


def test_a_line_made_while_handling_an_envelope_names_it() -> None:
    envelope = new_envelope(
        tenant="acme",
        kind="event",
        sender="a",
        to=["b"],
        payload=b"{}",
        trace=(f"00-{TRACE_ID}-00f067aa0ba902b7-01", ""),
    )
    with log_about(envelope, agent="b"):
        line = json.loads(JsonFormatter().format(record(stream_seq=7)))
    assert {k: line[k] for k in ("tenant", "agent", "correlation_id", "trace_id", "envelope_id", "stream_seq")} == {
        "tenant": "acme",
        "agent": "b",
        "correlation_id": envelope.correlation_id,
        "trace_id": TRACE_ID,
        "envelope_id": envelope.id,
        "stream_seq": 7,
    }
    assert "tenant" not in json.loads(JsonFormatter().format(record()))  # outside: about nothing


def test_an_untraced_envelope_has_no_trace_id_and_a_call_site_field_wins() -> None:
    envelope = new_envelope(tenant="acme", kind="event", sender="a", to=["b"], payload=b"{}")
    with log_about(envelope, agent="b"):
        made = record(agent="c")
    assert made.trace_id is None and made.agent == "c"
    text = TextFormatter().format(made)
    assert "trace_id" not in text and "agent=c" in text and f"correlation_id={envelope.correlation_id}" in text
    assert " WARNING trustbus.agent: handled  " in text


@pytest.mark.parametrize(("asked", "json_lines"), [("json", True), ("text", False), ("auto", True)])
def test_the_format_asked_for_and_json_off_a_terminal(asked: str, json_lines: bool) -> None:
    configure("info", asked)  # pytest's stderr is not a terminal
    (handler,) = logging.getLogger("trustbus").handlers
    assert isinstance(handler.formatter, JsonFormatter if json_lines else TextFormatter)
    assert any(isinstance(f, EnvelopeFields) for f in handler.filters)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_outage_is_a_line_per_interval_with_the_count_not_a_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = ConnectionWatch(interval_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="trustbus.bus"):
        await watch.error(nats.errors.UnexpectedEOF())
        await watch.disconnected()
        for _ in range(130):  # two attempts a second for 65 s
            clock.now += 0.5
            await watch.error(ConnectionRefusedError(111, "Connect call failed"))
        await watch.reconnected()
    lines = [(r.getMessage(), getattr(r, "failed_attempts", None), getattr(r, "error", None)) for r in caplog.records]
    assert lines == [
        ("disconnected from NATS; reconnecting to any of the given servers", None, "nats: unexpected EOF"),
        ("still disconnected from NATS", 60, "[Errno 111] Connect call failed"),
        ("still disconnected from NATS", 60, "[Errno 111] Connect call failed"),
        ("reconnected to NATS", 130, None),
    ]


async def test_refused_discovery_subscriptions_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    watch = ConnectionWatch()
    with caplog.at_level(logging.WARNING, logger="trustbus.bus"):
        for subject in ("$srv.ping", "$srv.ping.trustbus-agent", "$srv.info"):  # as the client words them
            await watch.error(nats.errors.Error(f'nats: permissions violation for subscription to "{subject}"'))
    assert [r.getMessage() for r in caplog.records] == [
        "service discovery ($SRV) is not permitted by the server; carrying on without it"
    ]
