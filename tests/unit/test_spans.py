"""Spans over an in-memory exporter: parents from envelopes, trace context into new ones, guardrail attributes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trustbus.agents import CoordinatorState, decide, parse_policy
from trustbus.agents._spans import deciding_rule, guardrail, invoke_agent
from trustbus.bus import (
    ConfigError,
    Decision,
    Envelope,
    configure_tracing,
    current_trace,
    new_envelope,
    record_span,
    traced,
    tracing_asked,
    tracing_enabled,
    use_tracer,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
POLICY = parse_policy(
    {
        "limits": {"hop_limit": 3},
        "taint": {"high_risk_tools": ["refund"], "on_tainted_high_risk": "hold"},
        "rules": [
            {"from": "support", "to": ["notes"], "kinds": ["event"]},
            {"from": "support", "to": ["billing"], "kinds": ["event", "instruction"], "verbs": ["refund"]},
        ],
    }
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        use_tracer(None)


def envelope(**fields: object) -> Envelope:
    defaults: dict[str, object] = {"tenant": "acme", "kind": "event", "sender": "support", "to": ["notes"]}
    return new_envelope(**{**defaults, **fields})  # type: ignore[arg-type]


def decided(env: Envelope) -> Decision:
    result = decide(POLICY, env, CoordinatorState(), received_ns=env.ts, source_seq=1)
    assert isinstance(result, Decision)
    return result


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


def test_off_nothing_is_made_and_envelopes_stay_version_1() -> None:
    assert not tracing_enabled()
    with traced("anything", {}) as span:
        assert span is None and current_trace() is None
    assert envelope(trace=current_trace()).v == 1


@pytest.mark.parametrize(
    ("environ", "asked"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_only_the_standard_variables_turn_traces_on(environ: dict[str, str], asked: bool) -> None:
    assert tracing_asked(environ) is asked
    if not asked:
        assert configure_tracing("test", environ) is False


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTLP protocol 'grpc'"),
    ],
)
def test_an_exporter_this_installation_cannot_make_is_a_config_error(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        configure_tracing("test", environ)
    assert not tracing_enabled()


def test_the_handler_span_is_the_child_of_the_senders_and_what_it_sends_carries_it(
    spans: InMemorySpanExporter,
) -> None:
    delivered = envelope(trace=(PARENT, "congo=t61"))
    with invoke_agent("notes", delivered, attempt=1):
        sent = envelope(sender="notes", to=["support"], trace=current_trace())
    span = only(spans)
    assert span.name == "invoke_agent notes"
    assert span.parent is not None and span.parent.is_remote
    assert (span.parent.trace_id, span.parent.span_id) == (int(PARENT[3:35], 16), int(PARENT[36:52], 16))
    assert span.context is not None and span.context.trace_id == span.parent.trace_id
    traceparent = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
    assert sent.v == 2 and sent.trace == (traceparent, "congo=t61")
    assert span.attributes is not None
    assert span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert span.attributes["gen_ai.agent.id"] == "notes"
    assert span.attributes["gen_ai.conversation.id"] == delivered.correlation_id


def test_an_envelope_without_trace_context_starts_a_trace(spans: InMemorySpanExporter) -> None:
    with invoke_agent("notes", envelope(), attempt=2):
        pass
    assert only(spans).parent is None


@pytest.mark.parametrize(
    ("fields", "verdict", "decision_type", "action", "code", "rule"),
    [
        ({}, "accept", "allow", "forward", "none", "rules[0]"),
        ({"to": ["notes", "stranger"]}, "accept", "modify", "forward", "not_allowed", "rules[0]"),
        ({"to": ["stranger"]}, "reject", "deny", "refuse", "not_allowed", None),
        ({"hop": 4}, "reject", "deny", "refuse", "hop_limit", "limits.hop_limit"),
        (
            {"to": ["billing"], "kind": "instruction", "payload": b'{"verb":"refund"}', "taint": ["web"]},
            "hold",
            "deny",
            "hold",
            "tainted_high_risk",
            "taint.on_tainted_high_risk",
        ),
    ],
)
def test_a_decision_is_a_guardrail_span_with_its_verdict_apart_from_the_action(
    spans: InMemorySpanExporter,
    fields: dict[str, object],
    verdict: str,
    decision_type: str,
    action: str,
    code: str,
    rule: str | None,
) -> None:
    cause = envelope(trace=(PARENT, ""), **fields)
    decision = decided(cause)
    assert decision.verdict == verdict
    assert deciding_rule(POLICY, decision) == rule
    guardrail(POLICY, cause, decision, start_ns=cause.ts)
    span = only(spans)
    assert span.name == "apply_guardrail coordinator"
    assert span.parent is not None and span.parent.span_id == int(PARENT[36:52], 16)
    expected = {
        "gen_ai.operation.name": "apply_guardrail",
        "gen_ai.security.target.type": "message",
        "gen_ai.security.target.id": cause.id,
        "gen_ai.security.decision.type": decision_type,
        "gen_ai.security.decision.code": code,
        "trustbus.verdict": verdict,
        "trustbus.action": action,
    }
    assert span.attributes is not None
    assert {k: span.attributes.get(k) for k in expected} == expected
    assert span.attributes.get("gen_ai.security.policy.id") == rule


def test_an_unsampled_guardrail_span_builds_no_attributes() -> None:
    """At a sampling ratio, an unsampled decision's span costs no attribute building: only a sampled one's does."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer(provider.get_tracer("test"))
    built: list[str] = []

    def attributes(flags: str) -> Callable[[], dict[str, str]]:
        return lambda: built.append(flags) or {"k": "v"}

    try:
        for flags in ("01", "00"):  # the sender's span sampled, then not: its decision's span follows it
            cause = envelope(trace=(PARENT[:-2] + flags, ""))
            record_span("apply_guardrail coordinator", attributes(flags), parent=cause, start_ns=cause.ts)
    finally:
        use_tracer(None)
    assert built == ["01"]
    [span] = exporter.get_finished_spans()
    assert span.attributes == {"k": "v"} and span.start_time is not None
