"""OpenTelemetry traces of an event against the real server (docs/tracing.md).

The server runs in this process (`tests.servers.running_server`) with `[tracing]` on and
`protocol = "none"`; the test adds the SDK's `InMemorySpanExporter` to the node's tracer
provider and reads the spans back: publish -> append -> fan-out -> deliver, one trace, each
span the parent of the next, and the event's stored `traceparent` naming the publish span.
Publishes come in over HTTP, WebSocket, gRPC and signed webhooks; deliveries go out over
WebSocket, SSE, gRPC and outbound webhooks. Tracing off is checked in a subprocess: opentelemetry
is never imported. The real OTLP receiver (an OpenTelemetry Collector) and the Kafka chain
are in tests/server/test_tracing_otlp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tests.gateways.test_webhooks_in import billing, signed
from tests.server.test_webhooks_out import Receiver
from tests.servers import Server, WsClient, running_server

from hybridbus.core.tracecontext import format_traceparent, parse_traceparent
from hybridbus.server.config import TracingConfig
from hybridbus.server.tracing import OtelTracer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
CE_JSON = {"content-type": "application/cloudevents+json"}
# A trace someone else started (W3C's example ids), sampled.
THEIRS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def on(**fields: Any) -> TracingConfig:
    """`[tracing]` on, exporting nowhere (the test's in-memory exporter reads the spans)."""
    return TracingConfig(enabled=True, protocol="none", **fields)


@contextlib.asynccontextmanager
async def traced_server(**settings: Any) -> AsyncIterator[tuple[Server, InMemorySpanExporter]]:
    settings.setdefault("tracing", on())
    async with running_server(**settings) as server:
        tracer = server.node.bus.tracer
        assert isinstance(tracer, OtelTracer)
        memory = InMemorySpanExporter()
        tracer.provider.add_span_processor(SimpleSpanProcessor(memory))
        yield server, memory


def event(**fields: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/test",
        "type": "test.traced",
        "data": {"n": 1},
        **fields,
    }


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := check()):
            await asyncio.sleep(0.02)
    return found


async def finished(memory: InMemorySpanExporter, count: int) -> Sequence[ReadableSpan]:
    """The spans ended so far, once there are at least `count`."""
    return await until(lambda: len(spans := memory.get_finished_spans()) >= count and spans)


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    """The one span called `name`."""
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [(s.name, s.attributes) for s in spans]
    return found[0]


def chain(spans: Sequence[ReadableSpan], *names: str) -> list[ReadableSpan]:
    """The spans `names`, each the parent of the next, all in one trace."""
    found = [named(spans, name) for name in names]
    trace_id = found[0].context.trace_id
    for parent, child in itertools.pairwise(found):
        assert child.context.trace_id == trace_id, (parent.name, child.name)
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (
            f"{child.name} is not a child of {parent.name}"
        )
    return found


def traceparent_of(span: ReadableSpan) -> str:
    return format_traceparent(span.context.trace_id, span.context.span_id, True)


async def stored(
    server: Server, pattern: str = "acme/#", limit: int = 100
) -> list[dict[str, Any]]:
    """The events the log holds (HTTP history, the first `limit`), CloudEvents JSON."""
    async with httpx.AsyncClient(base_url=server.http, timeout=10.0) as c:
        page = await c.get("/v1/events", params={"pattern": pattern, "limit": limit})
    assert page.status_code == 200, page.text
    return [d["event"] for d in page.json()["events"]]


async def test_an_http_publish_makes_the_chain_and_stamps_the_event() -> None:
    async with (
        traced_server() as (server, memory),
        WsClient.open(server.url, connect_first=False) as ws,
        httpx.AsyncClient(base_url=server.http, timeout=10.0) as c,
    ):
        hello = await ws.request("connect")
        assert hello["type"] == "reply", hello
        assert (await ws.request("subscribe", pattern="orders/#"))["type"] == "reply"
        sent = event()
        response = await c.post("/v1/topics/acme/orders/1/events", json=sent, headers=CE_JSON)
        assert response.status_code in (200, 201), response.text
        (push,) = await ws.events(1)
        spans = await finished(memory, 4)
        publish, append, fanout, deliver = chain(spans, "publish", "append", "fan-out", "deliver")
        # The event was stamped with the publish span before it was appended: the log,
        # the subscriber and every bridge see the same traceparent.
        assert push["event"]["traceparent"] == traceparent_of(publish)
        (kept,) = await stored(server)
        assert kept["traceparent"] == traceparent_of(publish)
        assert publish.parent is None and publish.kind == SpanKind.PRODUCER
        attributes = dict(publish.attributes or {})
        assert attributes["messaging.destination.name"] == "acme/orders/1"
        assert attributes["cloudevents.event_id"] == sent["id"]
        assert attributes["hybridbus.duplicate"] is False
        assert dict(append.attributes or {})["hybridbus.offset"] == push["offset"]
        assert dict(fanout.attributes or {})["hybridbus.subscribers"] == 1
        delivered = dict(deliver.attributes or {})
        assert delivered["hybridbus.way"] == "websocket"
        # The connection as the client knows itself: its connect reply's client id.
        assert delivered["hybridbus.connection"] == hello["result"]["client"]
        assert publish.start_time <= append.start_time <= fanout.end_time <= deliver.end_time


async def test_a_resumed_session_is_named_by_its_client_id() -> None:
    """The `deliver` span names a WebSocket by its client id, kept across a resumed session."""
    async with (
        traced_server() as (server, memory),
        WsClient.open(server.url, connect_first=False) as first,
    ):
        hello = (await first.request("connect"))["result"]
        client, token = hello["client"], hello["session"]
        async with WsClient.open(server.url, connect_first=False) as again:
            resumed = (await again.request("connect", session=token))["result"]
            # A new connection (with an id of its own), the session's client id.
            assert resumed["resumed"] is True and resumed["client"] == client
            assert (await again.request("subscribe", pattern="r/#"))["type"] == "reply"
            reply = await again.request("publish", topic="r/1", event=event())
            assert reply["type"] == "reply", reply
            await again.events(1)
        spans = await finished(memory, 4)
        *_, deliver = chain(spans, "publish", "append", "fan-out", "deliver")
        assert dict(deliver.attributes or {})["hybridbus.connection"] == client


async def test_a_websocket_publish_continues_the_events_traceparent_to_sse() -> None:
    async with (
        traced_server() as (server, memory),
        WsClient.open(server.url) as ws,
        httpx.AsyncClient(base_url=server.http, timeout=10.0) as c,
        c.stream("GET", "/v1/sse", params={"pattern": "acme/docs/#"}) as sse,
    ):
        assert sse.status_code == 200
        host, port = sse.extensions["network_stream"].get_extra_info("client_addr")
        lines = sse.aiter_lines()
        await until(lambda: server.sample("hybridbus_subscriptions", transport="sse") >= 1)
        sent = event(traceparent=THEIRS, tracestate="vendor=1")
        reply = await ws.request("publish", topic="docs/7", event=sent)
        assert reply["type"] == "reply", reply
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("data:") and sent["id"] in line:
                    assert json.loads(line[5:])["traceparent"] == THEIRS
                    break
        spans = await finished(memory, 4)
        publish, _, _, deliver = chain(spans, "publish", "append", "fan-out", "deliver")
        theirs = parse_traceparent(THEIRS)
        assert theirs is not None
        # Continued, not restarted: the publish span's parent is the caller's span, and the
        # event keeps the caller's traceparent and tracestate as they were.
        assert publish.context.trace_id == theirs.trace_id
        assert publish.parent is not None and publish.parent.span_id == theirs.span_id
        assert publish.parent.is_remote
        assert dict(deliver.attributes or {})["hybridbus.way"] == "sse"
        # The stream's connection by the client's address (the stream has no client id).
        assert dict(deliver.attributes or {})["hybridbus.connection"] == f"{host}:{port}"
        (kept,) = await stored(server)
        assert (kept["traceparent"], kept["tracestate"]) == (THEIRS, "vendor=1")


async def test_a_batch_of_two_traces_gets_two_chains() -> None:
    async with traced_server() as (server, memory), WsClient.open(server.url) as ws:
        assert (await ws.request("subscribe", pattern="b/#"))["type"] == "reply"
        mine, theirs = event(), event(traceparent=THEIRS)
        one, two = (
            ws.command("publish", topic="b/1", event=mine),
            ws.command("publish", topic="b/2", event=theirs),
        )
        await ws.send(one, two)  # one frame: one engine append for both
        assert (await ws.answer(one["id"]))["type"] == "reply"
        assert (await ws.answer(two["id"]))["type"] == "reply"
        await ws.events(2)
        spans = await finished(memory, 8)
        traces = {s.context.trace_id for s in spans}
        assert len(traces) == 2
        for trace_id in traces:
            in_trace = [s for s in spans if s.context.trace_id == trace_id]
            chain(in_trace, "publish", "append", "fan-out", "deliver")


async def test_a_grpc_publish_and_subscribe_make_the_chain() -> None:
    from tests.gateways.grpc_support import GrpcClient
    from tests.gateways.grpc_support import event as event_of_delivery

    async with traced_server(grpc_port=0) as (server, memory), GrpcClient.open(server) as client:
        call = client.subscribe("acme/g/#")
        async with asyncio.timeout(10):
            assert (await call.read()).WhichOneof("kind") == "subscribed"
        await client.publish("acme/g/1", event())
        async with asyncio.timeout(10):
            delivered = event_of_delivery((await call.read()).delivery)
        call.cancel()
        spans = await finished(memory, 4)
        publish, *_, deliver = chain(spans, "publish", "append", "fan-out", "deliver")
        assert delivered.extensions["traceparent"] == traceparent_of(publish)
        attributes = dict(deliver.attributes or {})
        assert attributes["hybridbus.way"] == "grpc"
        # The call's HTTP/2 connection by the client's address (host:port).
        assert re.fullmatch(r"127\.0\.0\.1:\d+", str(attributes["hybridbus.connection"]))


async def test_sampling_zero_makes_no_spans_and_stamps_nothing() -> None:
    async with (
        traced_server(tracing=on(sample_ratio=0.0)) as (server, memory),
        WsClient.open(server.url) as ws,
    ):
        assert (await ws.request("subscribe", pattern="z/#"))["type"] == "reply"
        unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        for sent in (event(), event(traceparent=unsampled)):
            assert (await ws.request("publish", topic="z/1", event=sent))["type"] == "reply"
        await ws.events(2)
        await asyncio.sleep(0.1)
        assert memory.get_finished_spans() == ()
        first, second = await stored(server)
        assert "traceparent" not in first  # not sampled: not stamped
        assert second["traceparent"] == unsampled  # the caller's, as it was


async def test_a_ratio_records_that_share_of_new_traces_each_stamped_and_whole() -> None:
    """`sample_ratio = 0.5`: about half of 200 new traces, drawn before any span is made."""
    async with (
        traced_server(tracing=on(sample_ratio=0.5)) as (server, memory),
        httpx.AsyncClient(base_url=server.http, timeout=10.0) as http,
    ):
        for _ in range(200):
            answer = await http.post("/v1/topics/acme/r/1/events", json=event(), headers=CE_JSON)
            assert answer.status_code in (200, 201), answer.text
        events = await stored(server, limit=200)
        assert len(events) == 200
        stamped = [e for e in events if "traceparent" in e]
        assert 60 <= len(stamped) <= 140, len(stamped)  # binomial(200, 0.5): 6+ sigma
        spans = await finished(memory, 3 * len(stamped))
        publishes = {s.context.trace_id for s in spans if s.name == "publish"}
        assert publishes == {parse_traceparent(e["traceparent"]).trace_id for e in stamped}
        await asyncio.sleep(0.1)  # nothing more comes: an undrawn event made no span
        assert len([s for s in memory.get_finished_spans() if s.name == "publish"]) == len(stamped)


async def test_a_signed_webhook_continues_the_senders_trace_and_a_webhook_out_carries_it() -> None:
    peer = Receiver([])
    await peer.start()
    try:
        async with (
            traced_server(webhooks=[billing()], webhook_allow_private=True) as (server, memory),
            httpx.AsyncClient(base_url=server.http, timeout=10.0) as c,
        ):
            made = await c.put(
                "/v1/webhooks/outbound/mirror",
                json={"pattern": "billing/#", "url": peer.url, "schedule": [0.2], "jitter": 0},
            )
            assert made.status_code == 201, made.text
            body = json.dumps({"type": "invoice.paid", "data": {"id": "in_1"}}).encode()
            headers = {**signed(body), "traceparent": THEIRS, "tracestate": "vendor=1"}
            answer = await c.post("/v1/webhooks/acme/billing", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            await until(lambda: peer.requests)
            spans = await until(
                lambda: (
                    memory.get_finished_spans()
                    if any(s.name == "webhook out" for s in memory.get_finished_spans())
                    else None
                )
            )
            webhook_in, publish, _, _, webhook_out = chain(
                spans, "webhook in", "publish", "append", "fan-out", "webhook out"
            )
            theirs = parse_traceparent(THEIRS)
            assert theirs is not None
            assert webhook_in.kind == SpanKind.SERVER and webhook_in.parent is not None
            assert (webhook_in.context.trace_id, webhook_in.parent.span_id) == (
                theirs.trace_id,
                theirs.span_id,
            )
            assert dict(webhook_in.attributes or {})["http.response.status_code"] == 200
            # The event (no traceparent of its own) was stamped with the publish span...
            (kept,) = await stored(server, "acme/billing/#")
            assert kept["traceparent"] == traceparent_of(publish)
            assert kept["tracestate"] == "vendor=1"
            # ... and the receiver gets the webhook-out span's context as W3C headers,
            # the extension still in the body.
            received = {k.lower(): v for k, v in peer.requests[0]["headers"].items()}
            assert received["traceparent"] == traceparent_of(webhook_out)
            assert received["tracestate"] == "vendor=1"
            assert peer.event().get_extension("traceparent") == traceparent_of(publish)
            assert webhook_out.kind == SpanKind.CLIENT
    finally:
        await peer.stop()


async def test_off_a_webhook_out_still_carries_the_events_traceparent() -> None:
    peer = Receiver([])
    await peer.start()
    try:
        async with (
            running_server(webhook_allow_private=True) as server,
            httpx.AsyncClient(base_url=server.http, timeout=10.0) as c,
        ):
            assert server.node.bus.tracer is None
            made = await c.put(
                "/v1/webhooks/outbound/mirror",
                json={"pattern": "o/#", "url": peer.url, "schedule": [0.2], "jitter": 0},
            )
            assert made.status_code == 201, made.text
            sent = event(traceparent=THEIRS)
            response = await c.post("/v1/topics/acme/o/1/events", json=sent, headers=CE_JSON)
            assert response.status_code in (200, 201), response.text
            await until(lambda: peer.requests)
            received = {k.lower(): v for k, v in peer.requests[0]["headers"].items()}
            assert received["traceparent"] == THEIRS
    finally:
        await peer.stop()


OFF_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, httpx
    from tests.servers import WsClient, running_server

    async def main():
        async with running_server() as server, WsClient.open(server.url) as ws:
            await ws.request("subscribe", pattern="x/#")
            async with httpx.AsyncClient(base_url=server.http) as c:
                body = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
                r = await c.post("/v1/topics/acme/x/1/events", json=body,
                                 headers={"content-type": "application/cloudevents+json"})
                assert r.status_code in (200, 201), r.text
            (push,) = await ws.events(1)
            assert "traceparent" not in push["event"], push
            assert server.node.bus.tracer is None
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        print("loaded:", loaded)
        assert not loaded, loaded

    asyncio.run(main())
    """
)


def test_off_opentelemetry_is_never_imported() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout


def test_the_tracing_table_is_read_and_checked(tmp_path: Path) -> None:
    from hybridbus.errors import InvalidInput
    from hybridbus.server.config import load_config

    path = tmp_path / "hybridbus.toml"
    path.write_text(
        '[tracing]\nenabled = true\nsample_ratio = 0.25\nservice_name = "bus-eu"\n'
        'otlp_endpoint = "http://127.0.0.1:4318/v1/traces"\nprotocol = "http"\n'
        '[tracing.headers]\nx-api-key = "k"\n'
    )
    tracing = load_config(path).tracing
    assert (tracing.enabled, tracing.sample_ratio, tracing.service_name, tracing.protocol) == (
        True,
        0.25,
        "bus-eu",
        "http",
    )
    assert tracing.headers == {"x-api-key": "k"}
    assert load_config(None).tracing == TracingConfig()  # off by default
    for bad in (
        "sample_ratio = 2.0",
        'protocol = "zipkin"',
        "sampled = true",
        "max_queue_size = 0",
        "max_queue_size = 100\nmax_export_batch_size = 101",
        "schedule_delay = 0",
    ):
        path.write_text(f"[tracing]\n{bad}\n")
        with pytest.raises(InvalidInput, match="tracing"):
            load_config(path)


class _Slow(InMemorySpanExporter):
    """An exporter that takes its time: finished spans wait in the processor's queue."""

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        import time

        time.sleep(0.2)
        return super().export(spans)


@pytest.mark.parametrize(("queue", "kept"), [(16, False), (4096, True)])
async def test_the_export_queue_holds_max_queue_size_spans(queue: int, kept: bool) -> None:
    """A sampled fan-out makes a span per delivery: past `max_queue_size` waiting spans the
    SDK drops new ones; a queue sized for it keeps every one."""
    from hybridbus.server.tracing import start_tracing

    exporter = _Slow()
    config = on(max_queue_size=queue, max_export_batch_size=min(queue, 512), schedule_delay=0.05)
    tracer = start_tracing(config, node="n", exporter=exporter)
    with tracer.provider.get_tracer("t").start_as_current_span("burst"):
        for n in range(1000):
            tracer.provider.get_tracer("t").start_span(f"s{n}").end()
    await tracer.close()  # exports what is left
    got = len(exporter.get_finished_spans())
    assert (got == 1001) is kept, got
