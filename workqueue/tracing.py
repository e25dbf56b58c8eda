"""OpenTelemetry tracing (`tracing = true`, the `otel` extra): a span `workqueue.enqueue` per
POST /enqueue, a child of the request's W3C `traceparent`, whose context is kept with each job it
enqueued; and a span `workqueue.run` per attempt, a child of that stored context, current while the
handler runs so that the handler's own spans nest under it.

Only this module imports opentelemetry, and only `api.app.load_tracing` imports this module, when
tracing is on: with it off nothing of opentelemetry is loaded and the hot paths test one `None`.
The exporter is configured the standard way, by the `OTEL_*` environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import Token
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import ConfigError
from .job import Job, JobSpec, Outcome

PROPAGATOR = TraceContextTextMapPropagator()
SERVICE_NAME = "workqueue"  # unless OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise

class Tracing:
    """The spans workqueue makes, on one tracer provider."""

    def __init__(self, provider: TracerProvider, owned: bool) -> None:
        self.provider = provider
        self.owned = owned  # made here from OTEL_*, so shut down here (flushing what is left)
        self.tracer = provider.get_tracer("workqueue")

    @classmethod
    def start(cls) -> Tracing:
        """Tracing on the process's tracer provider: the one a host application (or a test) has
        installed already, else a new one configured by OTEL_*, installed as the global provider so
        that handlers' own `trace.get_tracer(...)` spans are exported too. ConfigError naming the
        variable for an exporter that cannot be had."""
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            return cls(current, owned=False)
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        for exporter in exporters(os.environ):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()

    @contextmanager
    def enqueue(self, headers: Mapping[str, str], specs: Sequence[JobSpec]) -> Iterator[tuple[Span, str]]:
        """The span of one enqueue request, a child of the request's `traceparent` (if any), and
        that span's context as stored with each job (`JobSpec.trace`)."""
        parent = PROPAGATOR.extract(headers)
        queues = {s.queue for s in specs}
        types = {s.type for s in specs}
        attributes: dict[str, Any] = {"messaging.system": "workqueue", "messaging.operation.type": "send",
                                      "workqueue.jobs": len(specs)}
        if len(queues) == 1:
            attributes["workqueue.queue"] = attributes["messaging.destination.name"] = next(iter(queues))
        if len(types) == 1:
            attributes["workqueue.type"] = next(iter(types))
        with self.tracer.start_as_current_span("workqueue.enqueue", context=parent, kind=SpanKind.PRODUCER,
                                               attributes=attributes) as span:
            carrier: dict[str, str] = {}
            PROPAGATOR.inject(carrier)
            yield span, " ".join(carrier[k] for k in ("traceparent", "tracestate") if carrier.get(k))

    def run(self, job: Job) -> RunSpan:
        """Start the span of one attempt, a child of the job's stored context, and make it the current
        span of the calling task (the consumer's), so the handler's own spans nest under it."""
        parent = None
        if job.trace:
            traceparent, _, tracestate = job.trace.partition(" ")
            parent = PROPAGATOR.extract({"traceparent": traceparent, "tracestate": tracestate})
        span = self.tracer.start_span("workqueue.run", context=parent, kind=SpanKind.CONSUMER, attributes={
            "workqueue.job_id": job.id, "workqueue.type": job.type, "workqueue.queue": job.queue,
            "workqueue.attempt": job.attempts, "messaging.system": "workqueue",
            "messaging.operation.type": "process", "messaging.destination.name": job.queue,
            "messaging.message.id": job.id})
        return RunSpan(span, otel_context.attach(trace.set_span_in_context(span)))


class RunSpan:
    """The span of one attempt in progress."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token

    def leave(self) -> None:
        """The handler is done: the span stops being the current one (it ends with `end`)."""
        otel_context.detach(self.token)

    def end(self, outcome: Outcome | None, ending: str = "") -> None:
        """End the span with the attempt's outcome (`ending` when it has none: the worker stopped,
        or another worker has the job now)."""
        span = self.span
        span.set_attribute("workqueue.outcome", outcome.status.value if outcome is not None else ending)
        if outcome is not None and outcome.status.value in ("retrying", "dead"):
            span.set_status(Status(StatusCode.ERROR, outcome.data))
            if outcome.traceback:
                span.add_event("exception", {"exception.message": outcome.data,
                                             "exception.stacktrace": outcome.traceback})
        span.end()


def exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (comma-separated; default otlp): `otlp` (OTLP over
    HTTP, configured by OTEL_EXPORTER_OTLP_*), `console` (one JSON object per span on stdout),
    `none`, or any exporter installed under the `opentelemetry_traces_exporter` entry points."""
    out: list[SpanExporter] = []
    for name in (n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")):
        if name in ("", "none"):
            continue
        if name == "console":
            out.append(ConsoleSpanExporter(formatter=one_line))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            out.append(OTLPSpanExporter())
        else:
            found = entry_points(group="opentelemetry_traces_exporter", name=name)
            if not found:
                raise ConfigError(f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} is installed "
                                  "(workqueue knows otlp, console and none)")
            out.append(next(iter(found)).load()())
    return out


def one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"
