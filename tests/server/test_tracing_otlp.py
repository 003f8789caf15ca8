"""Traces exported to a real OTLP receiver, and one trace across webhook in -> bus -> Kafka out.

The receiver is an OpenTelemetry Collector (tests/services/collector.py, built by
scripts/install-services.sh from the Go module proxy) started on free loopback ports; the
server exports to it over OTLP/gRPC and OTLP/HTTP with the settings of `[tracing]`, and the
test reads what the collector's file exporter wrote. The end-to-end test publishes a signed
webhook carrying a `traceparent` header and reads the record a Kafka "out" bridge wrote (with
kcat: `ce_traceparent` in the same trace), and the spans webhook in -> publish -> append ->
fan-out -> kafka out, one trace, as the collector received them. A Kafka record with a
`ce_traceparent` header, bridged in, continues its trace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.bridges.kafka_support import create_topics, headers_of, kcat_consume, kcat_produce
from tests.gateways.test_webhooks_in import billing, signed
from tests.servers import WsClient, running_server
from tests.services import KafkaServer, OtelCollector

from hybridbus.bridges.settings import AnyBridge
from hybridbus.core.tracecontext import parse_traceparent
from hybridbus.server.config import TracingConfig
from hybridbus.server.tracing import OtelTracer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

THEIRS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """What `check` gives once it is true (bounded: the test fails naming `what`)."""
    try:
        async with asyncio.timeout(timeout):
            while not (found := await check()):
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"no {what} within {timeout:g} s")
    return found


async def spans_of(collector: OtelCollector, trace_id: str, *names: str) -> dict[str, Any]:
    """The spans of trace `trace_id` the collector wrote, by name, once `names` are there."""

    async def written() -> dict[str, Any] | None:
        found = by_name(collector.spans(), trace_id)
        return found if all(name in found for name in names) else None

    return dict(await until(written, f"spans {', '.join(names)} in the collector's file"))


def by_name(spans: list[dict[str, Any]], trace_id: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for span in spans:
        if span["trace_id"] == trace_id:
            assert span["name"] not in found, f"two {span['name']} spans"
            found[span["name"]] = span
    return found


def assert_chain(spans: dict[str, dict[str, Any]], *names: str) -> None:
    for parent, child in itertools.pairwise(names):
        assert spans[child]["parent_id"] == spans[parent]["span_id"], (parent, child, spans)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_spans_reach_a_real_collector(
    otel_collector: Callable[..., OtelCollector], protocol: str
) -> None:
    collector = otel_collector()
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    tracing = TracingConfig(
        enabled=True,
        protocol=protocol,  # type: ignore[arg-type]
        otlp_endpoint=endpoint,
        service_name="hybridbus-test",
        headers={"x-test": "1"},
    )
    sent = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "/t", "type": "t"}
    async with running_server(tracing=tracing) as server, WsClient.open(server.url) as ws:
        assert (await ws.request("subscribe", pattern="o/#"))["type"] == "reply"
        assert (await ws.request("publish", topic="o/1", event=sent))["type"] == "reply"
        (push,) = await ws.events(1)
    # The server has shut down: its tracer exported what was left on the way out.
    stamped = parse_traceparent(push["event"]["traceparent"])
    assert stamped is not None
    trace_id = f"{stamped.trace_id:032x}"
    spans = await spans_of(collector, trace_id, "publish", "append", "fan-out", "deliver")
    assert_chain(spans, "publish", "append", "fan-out", "deliver")
    assert spans["publish"]["span_id"] == f"{stamped.span_id:016x}"
    assert spans["publish"]["service"] == "hybridbus-test"
    assert spans["publish"]["attributes"]["cloudevents.event_id"] == sent["id"]
    assert spans["deliver"]["attributes"]["hybridbus.way"] == "websocket"


async def test_one_trace_across_webhook_in_bus_and_kafka_out(
    otel_collector: Callable[..., OtelCollector], kafka: KafkaServer
) -> None:
    collector = otel_collector()
    topic = f"traced-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka.url, {topic: 1})
    bridge = msgspec.convert(
        {
            "kind": "kafka",
            "name": "billing-out",
            "direction": "out",
            "url": f"kafka://{kafka.url}",
            "pattern": "acme/billing/#",
            "kafka_topic": topic,
        },
        AnyBridge,
    )
    tracing = TracingConfig(enabled=True, otlp_endpoint=collector.grpc_endpoint)
    async with (
        running_server(tracing=tracing, webhooks=[billing()], bridges=[bridge]) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10.0) as c,
    ):
        body = json.dumps({"type": "invoice.paid", "data": {"id": "in_7"}}).encode()
        headers = {**signed(body), "traceparent": THEIRS}
        answer = await c.post("/v1/webhooks/acme/billing", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        # Kafka gets the event in binary mode, its traceparent a `ce_traceparent` header in
        # the sender's trace ...
        records = await until(
            lambda: asyncio.to_thread(kcat_consume, kafka.url, topic, 1), "record in Kafka"
        )
        theirs = parse_traceparent(THEIRS)
        assert theirs is not None
        carried = parse_traceparent(headers_of(records[0])["ce_traceparent"])
        assert carried is not None and carried.trace_id == theirs.trace_id
        # ... and the collector the spans of the whole way, one trace (exported in batches
        # while the server runs: the spans of the Kafka ack come after the record is read).
        trace_id = f"{theirs.trace_id:032x}"
        names = ("webhook in", "publish", "append", "fan-out", "kafka out")
        spans = await spans_of(collector, trace_id, *names)
    assert_chain(spans, *names)
    assert spans["webhook in"]["parent_id"] == f"{theirs.span_id:016x}"
    assert spans["publish"]["span_id"] == f"{carried.span_id:016x}"
    assert spans["kafka out"]["attributes"]["hybridbus.bridge.kind"] == "kafka"


async def test_a_kafka_record_with_ce_traceparent_continues_its_trace(kafka: KafkaServer) -> None:
    topic = f"traced-in-{uuid.uuid4().hex[:8]}"
    binary = [
        ("ce_specversion", "1.0"), ("ce_id", "k-1"), ("ce_source", "/kafka"), ("ce_type", "t"),
        ("ce_traceparent", THEIRS), ("ce_tracestate", "vendor=1"),
    ]  # fmt: skip
    await asyncio.to_thread(kcat_produce, kafka.url, topic, ['{"n": 1}'], headers=binary)
    bridge = msgspec.convert(
        {
            "kind": "kafka",
            "name": "in",
            "direction": "in",
            "url": f"kafka://{kafka.url}",
            "topics": [topic],
            "topic": "acme/in/{topic}",
        },
        AnyBridge,
    )
    tracing = TracingConfig(enabled=True, protocol="none")
    async with running_server(tracing=tracing, bridges=[bridge]) as server:
        tracer = server.node.bus.tracer
        assert isinstance(tracer, OtelTracer)
        memory = InMemorySpanExporter()
        tracer.provider.add_span_processor(SimpleSpanProcessor(memory))

        async def appended() -> Any:
            return [s for s in memory.get_finished_spans() if s.name == "publish"]

        (publish,) = await until(appended, "publish span of the bridged record", 60.0)
        page = await server.node.bus.history("acme/in/#")
    theirs = parse_traceparent(THEIRS)
    assert theirs is not None and publish.parent is not None
    assert (publish.context.trace_id, publish.parent.span_id) == (theirs.trace_id, theirs.span_id)
    (kept,) = page.deliveries
    assert kept.event.extensions == {"traceparent": THEIRS, "tracestate": "vendor=1"}
