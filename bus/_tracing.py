"""OpenTelemetry spans, on only when the standard ``OTEL_*`` variables ask for traces (docs/OBSERVABILITY.md).

:func:`configure_tracing` (called once at a process's start) looks at the
environment: traces are on when ``OTEL_TRACES_EXPORTER`` names an exporter
other than ``none``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is
not ``true``). Only then are the OpenTelemetry API and SDK (the ``otel``
extra) imported, at a cost of about 0.1 s: off, nothing of them is loaded,
:func:`traced` is a shared null context and :func:`current_trace` None, so
envelopes stay version 1.

A span's parent is the span that sent the envelope it is about (the
envelope's signed ``traceparent``, docs/WIRE.md), so the spans of one
incident across processes form one trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from trustbus.bus._errors import ConfigError
from trustbus.bus._trace_context import trace_problem

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("trustbus.tracing")

Attributes = Mapping[str, str | bool | int | float | list[str]]


class Traced(Protocol):
    """What a span's parent is taken from: an :class:`~bus.Envelope`, or anything else that carries the trace
    context of the span that sent it (``(traceparent, tracestate)``, or None)."""  # noqa: D205, D209

    @property
    def trace(self) -> tuple[str, str] | None:
        """The W3C ``(traceparent, tracestate)`` it carries, if any."""


_tracer: Tracer | None = None
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def tracing_asked(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install a tracer provider exporting as ``OTEL_*`` asks, if it asks; whether tracing is on.

    ``service_name`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` (or
    ``OTEL_RESOURCE_ATTRIBUTES``) names one. The SDK reads the rest of its
    variables itself (sampler, batch sizes, exporter endpoint and headers).

    Raises:
        ConfigError: an exporter this installation cannot make.
    """
    if _tracer is not None or not tracing_asked(environ):
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but the otel extra is not installed: pip install 'trustbus[otel]'"
        )
        return False
    exporters = _exporters(environ)
    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: service_name}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use_tracer(trace.get_tracer("trustbus"))
    return True


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    made: list[SpanExporter] = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            made.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ConfigError(f"OTLP protocol {protocol!r}: the otel extra exports http/protobuf")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            made.append(OTLPSpanExporter())
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    return made


def tracing_enabled() -> bool:
    """Whether spans are being made (:func:`configure_tracing` turned them on)."""
    return _tracer is not None


def traced(name: str, attributes: Attributes, *, parent: Traced | None = None) -> AbstractContextManager[Span | None]:
    """A span around a block, current inside it: the child of ``parent``'s sender's span if it carries
    one, else of the current span; an exception escaping it is recorded. Off: a null context."""  # noqa: D205, D209
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, context=_context_of(parent), attributes=attributes)


def record_span(name: str, attributes: Callable[[], Attributes], *, parent: Traced | None, start_ns: int) -> None:
    """A span that began at ``start_ns`` (unix ns) and ends now, child of ``parent``'s sender's span.

    ``attributes()`` is called only if the span is sampled: an unsampled one costs no attribute building
    (the sampler decides without them).
    """
    if _tracer is None:
        return
    span = _tracer.start_span(name, context=_context_of(parent), start_time=start_ns)
    if span.is_recording():
        span.set_attributes(attributes())
    span.end()


def current_trace() -> tuple[str, str] | None:
    """The current span as an envelope's ``trace`` (``(traceparent, tracestate)``); None when there is none."""
    if _api is None:
        return None
    context = _api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    if not context.trace_state:
        return traceparent, ""
    tracestate = context.trace_state.to_header()
    # A tracestate the envelope's stricter check would refuse is left out, never sent to be refused.
    return traceparent, tracestate if trace_problem(traceparent, tracestate) is None else ""


def _context_of(parent: Traced | None) -> Context | None:
    """The context whose current span is the one that sent ``parent`` (None: the current context)."""
    if parent is None or parent.trace is None or _api is None:
        return None
    traceparent, tracestate = parent.trace
    # `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, checked when the envelope was decoded
    sender = _api.SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=_api.TraceFlags(int(traceparent[53:55], 16)),
        trace_state=_api.TraceState.from_header([tracestate]) if tracestate else None,
    )
    return _api.set_span_in_context(_api.NonRecordingSpan(sender))


class _Api:
    """The OpenTelemetry API's names the span sites use, imported once when spans are turned on."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.span import TraceState

        self.get_current_span = trace.get_current_span
        self.set_span_in_context = trace.set_span_in_context
        self.SpanContext = trace.SpanContext
        self.TraceFlags = trace.TraceFlags
        self.NonRecordingSpan = trace.NonRecordingSpan
        self.TraceState = TraceState


_api: _Api | None = None


def use_tracer(tracer: Tracer | None) -> None:
    """Make spans with ``tracer`` (tests: one over an in-memory exporter); None turns spans off."""
    global _tracer, _api
    _tracer = tracer
    _api = None if tracer is None else _Api()
