"""CPU per span of the mediated path's three span sites, made in this process, and of their OTLP encoding.

Run: ``python bench/spans.py [--n N] [--repeats R] [--json]``.

bench/mediated.py ``--telemetry`` measures what tracing costs whole processes, on a machine whose other
work moves every figure. This measures the spans alone, each figure the least of ``--repeats`` runs
of ``--n`` spans (CPU time of this process), so that a change to a span site can be judged on its own:

- **send**: ``trustbus send``'s and the bench sender's site: a current ``send event`` span around
  making a version 2 envelope that carries it (the envelope's own making, measured untraced, is
  subtracted);
- **guardrail**: the coordinator's ``apply_guardrail coordinator`` span of an accepted decision, a child
  of its envelope's sender's span;
- **handler**: the agent runtime's ``invoke_agent`` span around a handler, a child of the same.

For each, the OTLP/HTTP exporter's encoding of the spans it made (``encode_spans`` to protobuf bytes, in
batches of 512 as the batch processor hands them over; not the HTTP post), and, with ``--sample-ratio R``
below 1, the same sites under the parent-based ratio sampler (the sender's trace sampled at R).
Needs the ``otel`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/ (where ledger.py would shadow the ledger package): use the root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from trustbus import bus
from trustbus.agents import CoordinatorState, decide, parse_policy
from trustbus.agents._spans import guardrail, invoke_agent

TENANT = "spans"
POLICY = parse_policy({"rules": [{"from": "a", "to": ["b"], "kinds": ["event"]}]})
SEND = {"messaging.system": "nats", "messaging.operation.type": "send"}
BATCH = 512  # the batch processor's default export batch


class Kept(SpanExporter):
    """Keeps what it is handed, for the encoding to be measured apart."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def least_us(run: Callable[[], object], n: int, repeats: int, before: Callable[[], None]) -> float:
    """The least CPU µs per span of ``repeats`` runs of ``run`` (``before`` each)."""
    best = float("inf")
    for _ in range(repeats):
        before()
        start = time.process_time()
        run()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def sites(n: int, repeats: int, sampler: Sampler) -> dict[str, dict[str, float]]:
    """CPU µs per span made, and per span encoded, at each site under ``sampler``."""
    kept = Kept()
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": "bench spans"}))
    provider.add_span_processor(SimpleSpanProcessor(kept))

    def envelopes(traced: bool) -> list[bus.Envelope]:
        made = []
        for i in range(n):
            with bus.traced("send event", SEND) if traced else bus.traced("", {}):
                made.append(bus.new_envelope(tenant=TENANT, kind="event", sender="a", to=("b",),
                                             payload=b"%d" % i, trace=bus.current_trace()))  # fmt: skip
        return made

    plain = least_us(lambda: envelopes(False), n, repeats, kept.spans.clear)  # tracing off: the envelopes alone
    bus.use_tracer(provider.get_tracer("trustbus"))
    try:
        sent = envelopes(True)
        decisions = [decide(POLICY, e, CoordinatorState(), received_ns=e.ts, source_seq=1) for e in sent]

        def decided() -> None:
            for envelope, decision in zip(sent, decisions, strict=True):
                assert isinstance(decision, bus.Decision)
                guardrail(POLICY, envelope, decision, start_ns=envelope.ts)

        def handled() -> None:
            for envelope in sent:
                with invoke_agent("b", envelope, attempt=1):
                    pass

        figures: dict[str, dict[str, float]] = {}
        for name, run in (("send", lambda: envelopes(True)), ("guardrail", decided), ("handler", handled)):
            made = least_us(run, n, repeats, kept.spans.clear) - (plain if name == "send" else 0.0)
            spans = list(kept.spans)
            start = time.process_time()
            for first in range(0, len(spans), BATCH):
                encode_spans(spans[first : first + BATCH]).SerializePartialToString()
            encoded = (time.process_time() - start) / max(1, len(spans)) * 1e6
            figures[name] = {"make_us": round(made, 1), "encode_us": round(encoded, 1), "sampled": len(spans) / n}
        return figures
    finally:
        bus.use_tracer(None)
        provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="spans per run of a site (default 3000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each site; the least counts (default 5)")
    parser.add_argument("--sample-ratio", type=float, default=0.1, help="the sampled run's ratio (default 0.1)")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line of stdout")
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1 or not 0 < args.sample_ratio <= 1:
        parser.error("need --n >= 1, --repeats >= 1 and 0 < --sample-ratio <= 1")
    out = sys.stderr if args.json else sys.stdout
    result: dict[str, Any] = {"n": args.n, "repeats": args.repeats, "sample_ratio": args.sample_ratio}
    samplers: dict[str, Sampler] = {"all": ALWAYS_ON, "ratio": ParentBased(TraceIdRatioBased(args.sample_ratio))}
    for label, sampler in samplers.items():
        figures = result[label] = sites(args.n, args.repeats, sampler)
        total = sum(f["make_us"] + f["encode_us"] * f["sampled"] for f in figures.values())
        result[f"{label}_us_per_message"] = round(total, 1)
        cells = ", ".join(f"{s} {f['make_us']} + {f['encode_us']} µs ({f['sampled']:.0%} sampled)"
                          for s, f in figures.items())  # fmt: skip
        print(f"{label:>5}: {cells}; a mediated message's three: {total:.0f} µs", file=out)
    print(f"load average {Path('/proc/loadavg').read_text().split()[0]}", file=out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
