"""OpenTelemetry traces: one trace per export, from the producer's request to its
file-ready event, across the workers that own it on the way.

Off unless the standard ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, or
``console`` to print spans); ``OTEL_SDK_DISABLED=true`` turns it off again. Everything
else is the SDK's own ``OTEL_*`` configuration: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``..._TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``. When it is off no
span, context or header is made anywhere: every call site checks ``Tracing.enabled``.

The trace of one export:
  export.ingest (consumer)          the request read, decoded and validated
  <vendor> <operation> (client)     each vendor call (submit, poll, ...), a child of the
                                    request's context, linked to the job's previous call
                                    (also when that was another worker's); its HTTP
                                    requests (method, path template, status) are events
  export.publish (producer)         the job's status changes and file announcement written
                                    in one transaction, ended when it commits
Status and file events carry the ``traceparent`` of their publish span in their headers,
so downstream consumers continue the trace. A job's context lives in its state (JobState
``trace``), so a worker that takes a job over continues the same trace.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.status import Status, StatusCode

from worker.engine.model import TraceContext
from worker.limits import MAX_TRACESTATE_BYTES, TRACEPARENT_CHARS
from worker.version import __version__

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Version 00 of W3C Trace Context; all-zero ids are invalid.
_TRACEPARENT_BYTES = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
# key = value, as W3C Trace Context level 1 has them (simple or tenant@system keys).
_TRACESTATE_MEMBER = re.compile(
    r"[a-z0-9][a-z0-9_\-*/]{0,255}(@[a-z][a-z0-9_\-*/]{0,13})?=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

Headers = Sequence[tuple[str, bytes | None]] | None
# How long a stopping worker waits for its last spans to be sent.
FLUSH_ON_EXIT_S = 5.0


def context_from_headers(headers: Headers) -> tuple[str, str | None] | None:
    """(traceparent, tracestate) of a record whose headers carry a valid W3C trace
    context; None otherwise (absent, malformed, or another version). Header values come
    from the outside world: a traceparent is exactly 55 characters, a tracestate over
    ``MAX_TRACESTATE_BYTES`` is dropped, and only the first of each header counts."""
    parent: bytes | None = None
    state: bytes | None = None
    for name, value in headers or ():
        lowered = name.lower()
        if lowered == TRACEPARENT and parent is None and value is not None:
            parent = value
        elif lowered == TRACESTATE and state is None and value is not None:
            state = value
    if parent is None or len(parent) != TRACEPARENT_CHARS or not _TRACEPARENT_BYTES.fullmatch(parent):
        return None
    return parent.decode("ascii"), _tracestate(state)


def trace_headers(headers: Headers) -> list[tuple[str, bytes]] | None:
    """A record's valid W3C trace context as headers to pass on (None without one)."""
    found = context_from_headers(headers)
    if found is None:
        return None
    parent, state = found
    return [(TRACEPARENT, parent.encode())] + ([(TRACESTATE, state.encode())] if state else [])


def _tracestate(value: bytes | None) -> str | None:
    """A tracestate kept only if it is one (W3C list members, printable ASCII, within its
    bound), re-serialised: it is parsed once here, never again per span."""
    if not value or len(value) > MAX_TRACESTATE_BYTES or not _PRINTABLE.fullmatch(value):
        return None
    members = [m.strip() for m in value.decode("ascii").split(",") if m.strip()]
    if not members or len(members) > 32 or not all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
        return None
    return ",".join(members)


def traceparent_of(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def _span_context(traceparent: str, tracestate: str | None) -> SpanContext:
    _, trace_id, span_id, flags = traceparent.split("-")
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)


def parent_context(trace_context: TraceContext) -> otel_context.Context:
    """The OpenTelemetry context whose spans are children of the job's."""
    span = NonRecordingSpan(_span_context(trace_context.traceparent, trace_context.tracestate))
    return trace.set_span_in_context(span)


def _previous_call(trace_context: TraceContext) -> list[Link]:
    if not trace_context.last_span_id:
        return []
    ids = trace_context.traceparent.split("-")
    flags = TraceFlags(int(ids[3], 16))
    linked = SpanContext(int(ids[1], 16), int(trace_context.last_span_id, 16), True, flags)
    return [Link(linked, {"export.link": "previous call"})]


def span_id_of(span: Span) -> str:
    return f"{span.get_span_context().span_id:016x}"


def _sampled(traceparent: str) -> bool:
    """The sampled flag of a traceparent; True for one that does not parse (its spans are
    then tried, and a failure leaves the call untraced)."""
    try:
        return int(traceparent[-2:], 16) & 1 == 1
    except ValueError:
        return True


def drops_unsampled_parents(sampler: Sampler) -> bool:
    """Whether ``sampler`` drops every span whose (remote) parent is not sampled, as the
    parent-based samplers do (the SDK's default and every ``parentbased_*`` that
    ``OTEL_TRACES_SAMPLER`` names), and ``always_off``. Asked of the sampler itself, with
    trace ids that a ratio sampler would keep, so a parent-based sampler built to sample
    such children anyway is not mistaken for one."""
    if not isinstance(sampler, ParentBased | StaticSampler):
        return False
    parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 1, True, TraceFlags(TraceFlags.DEFAULT))))
    return all(sampler.should_sample(parent, trace_id, "probe").decision is Decision.DROP for trace_id in (1 << 64, 1))


class Tracing:
    """The worker's tracer; ``enabled`` is False (and nothing is traced) without a provider."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("export-worker", __version__) if provider is not None else None
        # A job whose trace is not sampled gets no span at all when the sampler would
        # drop each one anyway: a span the SDK does not record still costs its context,
        # ids and sampling decision on every call and transaction.
        self._parent_decides = provider is not None and drops_unsampled_parents(provider.sampler)

    def records(self, job: TraceContext) -> bool:
        """Whether spans in the job's trace are recorded (False only when the sampler
        is known to drop them): a job that is not gets no call or publish spans, and its
        events carry its own context, unsampled, to pass on."""
        return not self._parent_decides or _sampled(job.traceparent)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, instance_id: str = "") -> Tracing:
        exporter = _exporter(environ)
        if exporter is None:
            return cls()
        attributes: dict[str, Any] = {"service.version": __version__}
        if instance_id:
            attributes["service.instance.id"] = instance_id
        if "OTEL_SERVICE_NAME" not in environ:
            attributes["service.name"] = "export-worker"
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def shutdown(self) -> None:
        """Send the spans still buffered, waiting at most ``FLUSH_ON_EXIT_S``: a collector
        that is down must not hold a stopping worker past its grace period (the SDK's
        own shutdown may wait 30 s and more; it goes on in a daemon thread)."""
        if self.provider is None:
            return
        closing = threading.Thread(target=self.provider.shutdown, name="traces-flush", daemon=True)
        closing.start()
        closing.join(FLUSH_ON_EXIT_S)

    @property
    def tracer(self) -> trace.Tracer:
        assert self._tracer is not None, "tracing is off"
        return self._tracer

    @contextmanager
    def ingest(self, headers: Headers, attributes: Mapping[str, Any]) -> Iterator[tuple[Span, TraceContext]]:
        """The span of reading one request, current while it runs, and the context its
        job keeps: the producer's when the request carried one, else this span's (the
        root of a new trace). A producer's context the sampler drops gets no span: it is
        made current as it is (see ``within``), and the span yielded records nothing."""
        given = context_from_headers(headers)
        if given is not None and not self.records(TraceContext(*given)):
            job = TraceContext(given[0], given[1])  # the producer's, unsampled
            with self.within(job) as span:
                yield span, job
            return
        parent = parent_context(TraceContext(*given)) if given else otel_context.Context()
        with self.tracer.start_as_current_span(
            "export.ingest",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,  # an exception's text is not redacted
            set_status_on_exception=False,
        ) as span:
            if given is not None:
                job = TraceContext(given[0], given[1], span_id_of(span))
            else:
                job = TraceContext(traceparent_of(span.get_span_context()), None, span_id_of(span))
            yield span, job

    @contextmanager
    def within(self, job: TraceContext) -> Iterator[Span]:
        """The job's own context current while the block runs, without a span of its own
        (a trace the sampler drops): log lines written meanwhile carry its trace id."""
        context = parent_context(job)
        token = otel_context.attach(context)
        try:
            yield trace.get_current_span(context)
        finally:
            otel_context.detach(token)

    @contextmanager
    def call(self, name: str, job: TraceContext, attributes: Mapping[str, Any]) -> Iterator[Span]:
        """A vendor call's span, current while it runs: a child of the job's context,
        linked to the job's previous call."""
        with self.tracer.start_as_current_span(
            name,
            context=parent_context(job),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=_previous_call(job),
            record_exception=False,  # exception texts may carry what a vendor echoed
            set_status_on_exception=False,
        ) as span:
            yield span

    def publish(self, job: TraceContext, attributes: Mapping[str, Any]) -> tuple[Span, bytes]:
        """A started span for a job's records about to be written (ended by the caller
        when their transaction ends), and the traceparent header value for them."""
        span = self.tracer.start_span(
            "export.publish", context=parent_context(job), kind=SpanKind.PRODUCER, attributes=attributes
        )
        return span, traceparent_of(span.get_span_context()).encode()


def fail(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span current in this context, if one is recording."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if "console" in names:
        return ConsoleSpanExporter()
    return None


# Path segments that name one thing (an id, a date, a token) rather than a resource:
# a span names its call by the template, never by a path that identifies a job or carries
# a signature. Queries are always left out.
_ID_SEGMENT = re.compile(r"(?=.*\d)[^/]{6,}|\d+|[^/]*[%=~][^/]*")


def path_template(path: str) -> str:
    """``/dpss/api/v1/subscriptions/7f7f2d8e-.../batch-request/42?sig=...`` ->
    ``/dpss/api/v1/subscriptions/{id}/batch-request/{id}``: no query, no ids."""
    bare = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in bare:
        bare = "/" + bare.split("://", 1)[1].partition("/")[2]
    return "/".join("{id}" if _ID_SEGMENT.fullmatch(segment) else segment for segment in bare.split("/"))
