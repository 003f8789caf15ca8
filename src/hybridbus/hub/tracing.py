"""What the bus, the bridges and the ways in ask of a tracer: the `Tracer` interface.

Owns: the narrow interface through which everything below the server edge
makes spans (docs/tracing.md), so that none of it imports a tracing library:
the server's OpenTelemetry edge (`server.tracing`) implements it, and only
when `[tracing] enabled` — otherwise `Bus.tracer` is None and every call site
is one `if tracer is not None` away from the code it had before. Must not
import opentelemetry, nor hold any state.

The chain of one event (each a child of the one before):

    webhook in (SERVER, from the request's `traceparent` header; optional)
      publish (PRODUCER)  the event's `traceparent` extension continues a
                          trace, else the current span's, else a new one;
                          a sampled one without it is stamped with this span
        append            the engine's durable write
          fan-out         routing to the node's subscribers (their count)
            deliver       queued for one connection (WebSocket, SSE, gRPC)
            kafka out     (any bridge's `<kind> out`) / webhook out: sent on (PRODUCER/CLIENT)

The ways out make their `deliver` spans with one call, `trace_delivered`,
naming the connection by what the node knows it as: a WebSocket's client id
(the `client` of its connect reply, kept across a resumed session), else the
peer's address (`host:port`) — an SSE stream's HTTP connection, a gRPC call's
HTTP/2 connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from types import TracebackType
from typing import Protocol

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery

__all__ = ["Attributes", "Sending", "Tracer", "trace_delivered"]

# A span's attributes as the call sites give them.
Attributes = Mapping[str, str | int | bool]


class Sending(Protocol):
    """A span around sending one event to another system (a context manager, or `end`).

    `traceparent` / `tracestate`: what to put in the request's headers (this
    span's context).
    """

    traceparent: str
    tracestate: str

    def end(self, error: str = "", attributes: Attributes | None = None) -> None: ...

    def __enter__(self) -> Sending: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Tracer(Protocol):
    """The spans of an event's way through the node (see the module docstring)."""

    def publishing(self, topic: str, event: Event) -> Event:
        """Start the `publish` span of `event` (checked, for `topic`): the event to append.

        A sampled span of an event without a valid `traceparent` gives it one
        (and the context's `tracestate`): a new `Event`; otherwise `event`.
        """
        ...

    def appending(self, events: Sequence[Event]) -> object:
        """Start the `append` span of each event `publishing` started; a handle for `appended`."""
        ...

    def appended(
        self, handle: object, acks: Sequence[Ack] | None, error: BaseException | None
    ) -> None:
        """End what `appending` started (and the `publish` spans): with the acks, or the error."""
        ...

    def now(self) -> int:
        """The tracer's clock (ns): when a fan-out started."""
        ...

    def routed(
        self, deliveries: Sequence[Delivery], routes: Mapping[str, Sized], started: int
    ) -> None:
        """A `fan-out` span for each sampled delivery, with its subscribers (`routes[topic]`)."""
        ...

    def delivered(self, deliveries: Sequence[Delivery], way: str, to: str) -> None:
        """A `deliver` span for each sampled delivery just queued for connection `to`."""
        ...

    def sending(self, event: Event, name: str, attributes: Attributes) -> Sending | None:
        """A span `name` around sending `event` out, or None when it is not sampled."""
        ...

    def receiving(
        self, traceparent: str | None, tracestate: str | None, name: str, attributes: Attributes
    ) -> Sending:
        """A SERVER span `name` continuing a request's headers, current until it ends.

        The `publish` spans started meanwhile in this task are its children.
        """
        ...


def trace_delivered(
    tracer: Tracer | None, deliveries: Sequence[Delivery], way: str, to: str
) -> None:
    """The `deliver` spans of `deliveries`, just queued for connection `to` over `way`.

    The one call each way out (`websocket`, `sse`, `grpc`) makes after it
    queued a batch for a client; `to` as the module docstring says. With
    tracing off (`tracer` None) it returns at once.
    """
    if tracer is not None:
        tracer.delivered(deliveries, way, to)
