"""Transports against a real server: WebSocket, gRPC, HTTP; and the file transport.

Each ships through a `Shipper` and the events are read back over the HTTP API:
every record once, in order, as a `log` event with its level, logger and fields.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.gateways.grpc_support import grpc_port
from tests.logs.support import TENANT, LosesFirstAck, close, flush, history
from tests.servers import Server, running_server

from hybridbus.core.logs import LogRecord, record_from_data
from hybridbus.errors import InvalidInput
from hybridbus.logs import Shipper, transport
from hybridbus.logs.formatters import JsonFormatter
from hybridbus.logs.transports import FileTransport, GrpcTransport, HttpTransport

WAYS = ["ws", "http", "grpc"]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running_server(grpc_port=0) as s:
        yield s


def url_of(server: Server, way: str) -> str:
    if way == "ws":
        return f"ws://127.0.0.1:{server.port}"
    if way == "http":
        return f"{server.http}?tenant={TENANT}"
    return f"grpc://127.0.0.1:{grpc_port(server)}?tenant={TENANT}"


def records(count: int, start: int = 0) -> list[LogRecord]:
    levels = ["debug", "info", "warn", "error"]
    return [
        LogRecord(message=f"line {n}", level=levels[n % 4], logger="app", fields={"n": n})
        for n in range(start, start + count)
    ]


@pytest.mark.parametrize("way", WAYS)
async def test_every_record_arrives_once_in_order(server: Server, way: str) -> None:
    shipper = Shipper(transport(url_of(server, way)), service="api", instance="i-1", batch=400)
    sent = records(1100)
    for record in sent:
        shipper.submit(record)
    assert await flush(shipper)
    assert await close(shipper)
    events = await history(server, f"{TENANT}/logs/api/i-1")
    assert [record_from_data(e["data"]) for e in events] == sent
    assert {e["type"] for e in events} == {"log"}
    assert {e["source"] for e in events} == {"/logs/api/i-1"}
    assert [e["id"] for e in events] == [f"{shipper.boot}-{n}" for n in range(1, 1101)]
    assert all(e["time"].endswith("Z") for e in events)
    assert (shipper.shipped, shipper.dropped, shipper.rejected) == (1100, 0, 0)


@pytest.mark.parametrize("way", WAYS)
async def test_a_lost_ack_does_not_repeat_records(server: Server, way: str) -> None:
    lossy = LosesFirstAck(transport(url_of(server, way)))
    shipper = Shipper(lossy, service="api", instance="i-2", batch=50, linger=0)
    sent = records(120)
    for record in sent:
        shipper.submit(record)
    assert await flush(shipper)
    await close(shipper)
    assert shipper.retries >= 1  # the first batch really went twice
    assert lossy.sends >= 4
    events = await history(server, f"{TENANT}/logs/api/i-2")
    assert [record_from_data(e["data"]).message for e in events] == [r.message for r in sent]


@pytest.mark.parametrize("way", WAYS)
async def test_a_refused_record_is_counted_and_the_others_arrive(server: Server, way: str) -> None:
    shipper = Shipper(transport(url_of(server, way)), service="api", instance="i-3", linger=0.2)
    sent = records(3)
    sent.insert(1, LogRecord(message="x" * (1 << 21)))  # 2 MiB: over every limit
    for record in sent:
        shipper.submit(record)
    assert await flush(shipper), (shipper.retries, shipper.last_error)
    await close(shipper)
    assert (shipper.rejected, shipper.shipped) == (1, 3)
    assert "refused" in shipper.last_error
    events = await history(server, f"{TENANT}/logs/api/i-3")
    assert [e["data"]["message"] for e in events] == ["line 0", "line 1", "line 2"]


@pytest.mark.parametrize("way", ["http", "grpc"])
async def test_a_forbidden_topic_is_refused_not_retried_forever(way: str) -> None:
    rules = {
        "anonymous": [
            {"allow": ["subscribe", "history"], "topics": "#"},
            {"allow": "publish", "topics": "other/#"},
        ]
    }
    async with running_server(grpc_port=0, roles=rules) as server:
        shipper = Shipper(transport(url_of(server, way)), service="api", instance="i-4")
        for record in records(5):
            shipper.submit(record)
        assert await flush(shipper)
        await close(shipper)
        assert (shipper.rejected, shipper.shipped) == (5, 0)
        assert await history(server, f"{TENANT}/logs/api/i-4") == []


def test_tenant_for_absolute_topics() -> None:
    import base64

    claims = base64.urlsafe_b64encode(json.dumps({"tenantid": "globex"}).encode()).decode()
    jwt_like = f"e30.{claims.rstrip('=')}.sig"
    assert HttpTransport("http://h:1", token=jwt_like).tenant == "globex"
    assert HttpTransport("http://h:1?tenant=acme", token=jwt_like).tenant == "acme"
    assert GrpcTransport("grpc://h:1", tenant="initech").tenant == "initech"
    with pytest.raises(InvalidInput, match="tenant"):
        HttpTransport("http://h:1")
    with pytest.raises(InvalidInput, match="host:port"):
        GrpcTransport("grpc://h", tenant="a")


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("", lambda line: json.loads(line)["message"] == "line 0"),
        ("?format=plain", lambda line: " DEBUG app: line 0 n=0" in line),
        ("?format=syslog", lambda line: line.startswith("<15>1 ")),
    ],
)
async def test_file_transport_appends_formatted_lines(
    tmp_path: Path, query: str, check: Any
) -> None:
    path = tmp_path / "api.log"
    path.write_text("before\n")
    shipper = Shipper(transport(f"file://{path}{query}"), service="api", instance="i")
    for record in records(3):
        shipper.submit(record)
    assert await close(shipper)
    lines = path.read_text().splitlines()
    assert lines[0] == "before"
    assert len(lines) == 4
    assert check(lines[1])


def test_file_urls() -> None:
    assert isinstance(FileTransport("file:///tmp/x.log").formatter, JsonFormatter)
    with pytest.raises(InvalidInput):
        FileTransport("file://remote-host/x.log")
    with pytest.raises(InvalidInput, match="no log formatter 'nope'"):
        FileTransport("file:///tmp/x.log?format=nope")
