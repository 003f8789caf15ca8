"""OpenTelemetry at the server's edge: the `Tracer` of hub/tracing.py on the OpenTelemetry SDK.

Owns: the ONE place hybridbus imports opentelemetry — the tracer provider
(its resource, the parent-based sampler and the draw of new traces, the OTLP exporter over gRPC or
HTTP, batched), the spans of an event's way through the node (hub/tracing.py
draws the chain) and how they find their parents. Must not be imported unless
`[tracing] enabled` (serve.py imports it then only: off, opentelemetry is not
loaded at all), nor decide anything about events but their `traceparent`.

Parents. A `publish` span continues the event's `traceparent` extension, else
the current span (a `webhook in`), else starts a trace; when sampled and the
event had no valid `traceparent`, the event is stamped with the publish span's
context before it is appended (so the log, every bridge and every webhook
carry it). The other spans of the chain find their parent in three small
tables keyed by the event's `source` + `id` (unique in the dedupe window):
the publish spans between `publishing` and `appending` (by the event object
itself), the append spans while the engine writes (the fan-out of a local
engine runs then), and the last `_FANOUTS` fan-out spans (the deliveries
follow within a few loop turns). A fan-out the node did not append (another
node's, over a shared engine) is a child of the event's `traceparent`; a
delivery whose fan-out is no longer known gets no span.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence, Sized
from contextvars import Token
from time import time_ns
from types import TracebackType
from typing import Final

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery
from hybridbus.core.tracecontext import (
    TRACEPARENT,
    TRACESTATE,
    format_traceparent,
    parse_traceparent,
    sampled,
)
from hybridbus.hub.tracing import Attributes
from hybridbus.server.config import TracingConfig

__all__ = ["OtelTracer", "start_tracing"]

log = logging.getLogger("hybridbus.tracing")

_PUBLISHING: Final = 4096  # publish spans of events prepared and not yet appended
_FANOUTS: Final = 4096  # fan-out spans remembered for their deliveries
_DEFAULT_ENDPOINTS: Final = {
    "grpc": "http://localhost:4317",
    "http": "http://localhost:4318/v1/traces",
}
_KINDS: Final = {"webhook out": SpanKind.CLIENT}  # else PRODUCER: a bridge's send

_Key = tuple[str, str]  # an event's source and id


def _key(event: Event) -> _Key:
    return (event.source, event.id)


def _remote(event: Event) -> SpanContext | None:
    """The span context of the event's `traceparent` (and `tracestate`), if valid."""
    extensions = event.extensions
    parent = parse_traceparent(extensions.get(TRACEPARENT))
    if parent is None:
        return None
    return _context_of(parent.trace_id, parent.span_id, parent.flags, extensions.get(TRACESTATE))


def _context_of(trace_id: int, span_id: int, flags: int, state: object) -> SpanContext:
    trace_state = None
    if type(state) is str and state:
        trace_state = TraceState.from_header([state])
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=trace_state
    )


def _parented(parent: SpanContext | None) -> otel_context.Context | None:
    """A context whose current span is `parent` (None: the current context)."""
    if parent is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _event_attributes(topic: str, event: Event) -> dict[str, str | int | bool]:
    return {
        "messaging.system": "hybridbus",
        "messaging.destination.name": topic,
        "messaging.message.id": event.id,
        "cloudevents.event_id": event.id,
        "cloudevents.event_source": event.source,
        "cloudevents.event_type": event.type,
    }


class _Sending:
    """A span around sending an event out (or serving a request): a context manager, or `end`."""

    __slots__ = ("_ended", "_token", "span", "traceparent", "tracestate")

    def __init__(self, span: Span, token: Token[otel_context.Context] | None = None) -> None:
        self.span = span
        self._token = token
        self._ended = False
        found = span.get_span_context()
        flags = found.trace_flags
        self.traceparent = format_traceparent(found.trace_id, found.span_id, flags.sampled)
        self.tracestate = found.trace_state.to_header() if found.trace_state else ""

    def end(self, error: str = "", attributes: Attributes | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self.span
        if attributes:
            span.set_attributes(dict(attributes))
        if error:
            span.set_status(Status(StatusCode.ERROR, error[:500]))
        if self._token is not None:
            otel_context.detach(self._token)
        span.end()

    def __enter__(self) -> _Sending:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self._ended:
            self.span.record_exception(exc)
            self.end(f"{type(exc).__name__}: {exc}")
        else:
            self.end()


class OtelTracer:
    """The `hub.tracing.Tracer` on an OpenTelemetry `TracerProvider` (module docstring)."""

    def __init__(self, provider: TracerProvider, *, engine: str = "", ratio: float = 1.0) -> None:
        self.provider = provider
        # The share of new traces recorded (`sample_ratio`), drawn here for each root
        # (`_draw`): an event that will not be recorded costs no span at all.
        self._ratio = ratio
        self._tracer = provider.get_tracer("hybridbus")
        self._engine = engine
        # id(event) -> (the event, its publish span): kept until appended (bounded).
        self._publishing: OrderedDict[int, tuple[Event, Span]] = OrderedDict()
        self._appending: dict[_Key, SpanContext] = {}
        # The contexts of the last fan-out spans, their deliveries' parents.
        self._fanouts: OrderedDict[_Key, otel_context.Context] = OrderedDict()

    async def close(self) -> None:
        """Export what is left and stop the exporter (in a thread: it may wait on the network)."""
        await asyncio.to_thread(self.provider.shutdown)

    # -- publish, append ---------------------------------------------------------------

    def _draw(self) -> bool:
        """Whether a new trace is recorded: `sample_ratio` of them, at random."""
        return self._ratio >= 1.0 or random.random() < self._ratio

    def publishing(self, topic: str, event: Event) -> Event:
        parent = _remote(event)
        if parent is not None:
            recorded = parent.trace_flags.sampled
        else:
            current = trace.get_current_span().get_span_context()
            recorded = current.trace_flags.sampled if current.is_valid else self._draw()
        if not recorded:  # what the parent-based sampler would say: no span is made at all
            return event
        span = self._tracer.start_span(
            "publish",
            context=_parented(parent),
            kind=SpanKind.PRODUCER,
            attributes=_event_attributes(topic, event),
        )
        if not span.is_recording():
            return event
        if parent is None:  # none, or not a valid one: this span's context goes with the event
            found = span.get_span_context()
            extensions = dict(event.extensions)
            extensions[TRACEPARENT] = format_traceparent(found.trace_id, found.span_id, True)
            if found.trace_state:
                extensions[TRACESTATE] = found.trace_state.to_header()
            else:
                extensions.pop(TRACESTATE, None)
            event = msgspec.structs.replace(event, extensions=extensions)
        publishing = self._publishing
        if len(publishing) >= _PUBLISHING:
            publishing.popitem(last=False)  # prepared and never appended: dropped unended
        publishing[id(event)] = (event, span)
        return event

    def appending(self, events: Sequence[Event]) -> object:
        publishing = self._publishing
        if not publishing:
            return None
        started: list[tuple[int, _Key, Span, Span]] = []
        for index, event in enumerate(events):
            entry = publishing.get(id(event))
            if entry is None or entry[0] is not event:
                continue
            del publishing[id(event)]
            publish = entry[1]
            span = self._tracer.start_span(
                "append",
                context=trace.set_span_in_context(publish),
                attributes={"hybridbus.engine": self._engine} if self._engine else None,
            )
            key = _key(event)
            self._appending[key] = span.get_span_context()
            started.append((index, key, publish, span))
        return started or None

    def appended(
        self, handle: object, acks: Sequence[Ack] | None, error: BaseException | None
    ) -> None:
        if not handle:
            return
        assert isinstance(handle, list)
        appending = self._appending
        for index, key, publish, span in handle:
            appending.pop(key, None)
            if acks is not None:
                ack = acks[index]
                attributes = {
                    "hybridbus.offset": ack.offset,
                    "hybridbus.shard": ack.shard,
                    "hybridbus.position": ack.position,
                    "hybridbus.duplicate": ack.duplicate,
                }
                span.set_attributes(attributes)
                publish.set_attributes(attributes)
            elif error is not None:
                status = Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500])
                span.record_exception(error)
                span.set_status(status)
                publish.set_status(status)
            span.end()
            publish.end()

    # -- fan-out, delivery -------------------------------------------------------------

    def now(self) -> int:
        return time_ns()

    def routed(
        self, deliveries: Sequence[Delivery], routes: Mapping[str, Sized], started: int
    ) -> None:
        fanouts = self._fanouts
        for delivery in deliveries:
            event = delivery.event
            extensions = event.extensions
            if not extensions or not sampled(extensions.get(TRACEPARENT)):
                continue
            key = _key(event)
            parent = self._appending.get(key) or _remote(event)
            if parent is None:
                continue
            topic = delivery.topic
            span = self._tracer.start_span(
                "fan-out",
                context=_parented(parent),
                start_time=started,
                attributes={
                    "messaging.destination.name": topic,
                    "hybridbus.offset": delivery.offset,
                    "hybridbus.subscribers": len(routes.get(topic, ())),
                },
            )
            span.end()
            if span.get_span_context().trace_flags.sampled:
                if len(fanouts) >= _FANOUTS:
                    fanouts.popitem(last=False)
                fanouts[key] = trace.set_span_in_context(span)

    def delivered(self, deliveries: Sequence[Delivery], way: str, to: str) -> None:
        fanouts = self._fanouts
        if not fanouts:
            return
        for delivery in deliveries:
            event = delivery.event
            if not event.extensions:
                continue
            parent = fanouts.get(_key(event))
            if parent is None:
                continue
            self._tracer.start_span(
                "deliver",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.destination.name": delivery.topic,
                    "hybridbus.offset": delivery.offset,
                    "hybridbus.way": way,
                    "hybridbus.connection": to,
                },
            ).end()

    # -- out to other systems, in from requests ------------------------------------------

    def sending(self, event: Event, name: str, attributes: Attributes) -> _Sending | None:
        extensions = event.extensions
        if not extensions or not sampled(extensions.get(TRACEPARENT)):
            return None
        parent = self._fanouts.get(_key(event)) or _parented(_remote(event))
        if parent is None:
            return None
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=_KINDS.get(name, SpanKind.PRODUCER),
            attributes=dict(attributes),
        )
        if not span.is_recording():
            return None
        return _Sending(span)

    def receiving(
        self, traceparent: str | None, tracestate: str | None, name: str, attributes: Attributes
    ) -> _Sending:
        parent = parse_traceparent(traceparent)
        remote = None
        if parent is not None:
            remote = _context_of(parent.trace_id, parent.span_id, parent.flags, tracestate)
        elif not self._draw():  # a new trace not recorded: its spans are not either
            ids = self.provider.id_generator
            remote = SpanContext(
                ids.generate_trace_id(), ids.generate_span_id(), True, TraceFlags(0)
            )
        span = self._tracer.start_span(
            name,
            context=_parented(remote),
            kind=SpanKind.SERVER,
            attributes=dict(attributes),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return _Sending(span, token)


def start_tracing(
    config: TracingConfig, *, node: str, engine: str = "", exporter: SpanExporter | None = None
) -> OtelTracer:
    """The tracer of `[tracing]`: a provider for this node, exporting with OTLP (batched).

    `exporter` replaces the configured one (tests).
    """
    resource = Resource.create({"service.name": config.service_name, "service.instance.id": node})
    # A root's draw is the tracer's own (`OtelTracer._draw`, before any span is made);
    # every other span follows its parent.
    sampler = ParentBased(ALWAYS_ON)
    provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
    if exporter is None and config.protocol != "none":
        exporter = _exporter(config)
    if exporter is not None:
        batches = BatchSpanProcessor(
            exporter,
            max_queue_size=config.max_queue_size,
            max_export_batch_size=config.max_export_batch_size,
            schedule_delay_millis=config.schedule_delay * 1000,
        )
        provider.add_span_processor(batches)
    log.info(
        "tracing on: sample ratio %g, export %s %s",
        config.sample_ratio,
        config.protocol,
        config.otlp_endpoint or _DEFAULT_ENDPOINTS.get(config.protocol, ""),
    )
    return OtelTracer(provider, engine=engine, ratio=config.sample_ratio)


def _exporter(config: TracingConfig) -> SpanExporter:
    endpoint = config.otlp_endpoint or _DEFAULT_ENDPOINTS[config.protocol]
    headers = dict(config.headers)
    if config.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    insecure = not endpoint.startswith("https://")
    return GrpcExporter(endpoint=endpoint, insecure=insecure, headers=headers)
