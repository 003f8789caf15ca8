"""`hybridbus bridge CONFIG` traces as the server does: its `[tracing]` table, its own spans.

The bridges alone, in a process of their own, with `[tracing]` exporting over OTLP/gRPC to a
real OpenTelemetry Collector: an MQTT 5 message carrying a `traceparent` user property is
bridged in (its `publish` span a child of the sender's), appended, routed, and bridged out
again to another MQTT topic (`mqtt out`), one trace, as the collector received it — and the
message that comes out carries the trace on to the next hop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.bridges.support import BridgeProcess, MosquittoSub, eventually, mosquitto_pub
from tests.server.test_tracing_otlp import assert_chain, spans_of
from tests.services import MosquittoServer, OtelCollector

from hybridbus.core.tracecontext import parse_traceparent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

THEIRS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_bridges_alone_trace_in_and_out(
    mosquitto_server: Callable[..., MosquittoServer],
    otel_collector: Callable[..., OtelCollector],
    tmp_path: Path,
) -> None:
    broker = mosquitto_server()
    collector = otel_collector()
    url = f"mqtt://127.0.0.1:{broker.port}"
    config = tmp_path / "bridges.toml"
    config.write_text(
        f"""engine = "sqlite://{tmp_path}/data"
log_level = "info"

[tracing]
enabled = true
otlp_endpoint = "{collector.grpc_endpoint}"
service_name = "bridges-alone"

[[bridges]]
kind = "mqtt"
name = "in"
direction = "in"
url = "{url}"
subscribe = ["dev/#"]
topic = "acme/in/{{topic}}"

[[bridges]]
kind = "mqtt"
name = "out"
direction = "out"
url = "{url}"
pattern = "acme/in/#"
mqtt_topic = "out/{{relative}}"
"""
    )
    received = MosquittoSub(broker.port, "out/#", "tracing-test")
    await received.start()
    bridges = BridgeProcess(config)
    bridges.start()
    try:
        await eventually(
            lambda: bridges.log.exists() and bridges.log.read_text().count("running") >= 2,
            what="both bridges running",
        )
        properties = [
            ("user-property", "specversion", "1.0"),
            ("user-property", "id", "r-1"),
            ("user-property", "source", "/sensors/1"),
            ("user-property", "type", "com.acme.reading"),
            ("user-property", "traceparent", THEIRS),
        ]
        mosquitto_pub(broker.port, "dev/s1", message='{"c": 21.5}', properties=properties)
        trace_id = THEIRS.split("-")[1]
        spans = await spans_of(collector, trace_id, "publish", "append", "fan-out", "mqtt out")
        messages = await received.wait_for(1)
    finally:
        bridges.close()
        await received.stop()
    assert spans["publish"]["parent_id"] == THEIRS.split("-")[2]  # the sender's span
    assert_chain(spans, "publish", "append", "fan-out", "mqtt out")
    out = spans["mqtt out"]
    assert out["attributes"]["hybridbus.bridge"] == "out"
    assert out["service"] == "bridges-alone"
    sent = messages[0]
    assert sent["topic"] == "out/in/dev/s1"
    carried = parse_traceparent(sent["properties"]["user-properties"]["traceparent"])
    assert carried is not None and carried.trace_id == int(trace_id, 16)
