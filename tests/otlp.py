"""An OTLP/HTTP trace receiver on 127.0.0.1: decodes each ExportTraceServiceRequest the SDK's exporter posts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as exported: ids in lowercase hex (``parent`` empty for a root)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _spans(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    service=str(resource.get("service.name", "")),
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent=span.parent_span_id.hex(),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                )


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` serves ``receiver.endpoint``; ``await receiver.wait(...)`` for spans."""

    def __init__(self) -> None:
        """Bind a free port on 127.0.0.1; nothing is served until entered."""
        self.spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver._changed:
                    receiver.spans.extend(_spans(request))
                    receiver._changed.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def __enter__(self) -> OtlpReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self) -> dict[str, str]:
        """The OTEL_* variables that make a trustbus process export every span here, at once."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }

    async def wait(
        self, found: Callable[[list[ReceivedSpan]], list[ReceivedSpan] | None], *, limit_s: float = 30
    ) -> list[ReceivedSpan]:
        """Wait (on each export, not polling) until ``found(spans)`` returns spans, and return them."""

        def block() -> list[ReceivedSpan]:
            deadline = time.monotonic() + limit_s
            with self._changed:
                while (result := found(list(self.spans))) is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AssertionError(f"spans not received in {limit_s} s: {[s.name for s in self.spans]}")
                    self._changed.wait(left)
                return result

        return await asyncio.to_thread(block)
