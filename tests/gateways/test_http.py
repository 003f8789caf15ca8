"""The HTTP API on a real aiohttp server, driven by httpx and the official CloudEvents SDK.

Events are written by the `cloudevents` SDK (the legacy `cloudevents.v1` API
and the new `cloudevents.core` one), in structured, binary and batch mode,
and read back through the history routes; every refusal is checked as
application/problem+json with its code and the attribute or parameter it names.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tests.gateways.support import Api, GatedEngine, event, serving

import hybridbus
from hybridbus.core.codecs import JSON_BATCH_CONTENT_TYPE, JSON_CONTENT_TYPE
from hybridbus.errors import EngineUnavailable, ErrorCode
from hybridbus.gateways.http import HttpConfig, HttpGateway
from hybridbus.hub.bus import Bus, BusConfig
from hybridbus.proto.frames import ClientInfo
from hybridbus.server.metrics import Metrics

pytest.importorskip("cloudevents", minversion="2.2", reason="the cloudevents SDK is a test extra")

from cloudevents.core.bindings import http as core_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1.conversion import to_binary as v1_to_binary
from cloudevents.v1.conversion import to_structured as v1_to_structured
from cloudevents.v1.http import CloudEvent as V1Event

PROBLEM = "application/problem+json"
JSON_FORMAT = JSONFormat()
WHEN = datetime(2026, 11, 23, 11, 2, 7, tzinfo=UTC)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with hybridbus.open("memory://") as bus, serving(bus) as running:
        yield running


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base, timeout=10.0) as http:
        yield http


def wire(headers: dict[str, Any], body: bytes | str | None) -> tuple[dict[str, str], bytes]:
    """The legacy SDK's output as an HTTP request carries it: text headers, bytes body."""
    text = {key: str(value) for key, value in headers.items()}
    return text, body.encode() if isinstance(body, str) else body or b""


async def history(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    page: dict[str, Any] = response.json()
    return page


def assert_problem(
    response: httpx.Response, status: int, code: ErrorCode, **members: Any
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "urn:hybridbus:error:" + code.name.lower().replace("_", "-")
    assert body["title"] and body["detail"]
    for key, value in members.items():
        assert body.get(key) == value, (key, body)
    return body


# -- publish ------------------------------------------------------------------------


async def test_structured_mode_from_both_sdk_apis(api: Api, client: httpx.AsyncClient) -> None:
    attributes: dict[str, Any] = {"type": "doc.edited", "source": "/editor", "id": "e-1"}
    attributes |= {"subject": "42", "lamport": 7}
    legacy = V1Event(
        attributes,
        {"op": "insert", "text": "hi"},
    )
    headers, body = wire(*v1_to_structured(legacy))
    first = await client.post("/v1/topics/acme/docs/42/events", headers=headers, content=body)
    assert first.status_code == 201, first.text
    assert first.json() == {
        "acks": [
            {
                "topic": "acme/docs/42",
                "offset": 1,
                "shard": 0,
                "position": 1,
                "epoch": api.bus.engine.epoch,
                "duplicate": False,
                "token": f"{api.bus.engine.epoch}-1",  # the resume token after it
            }
        ]
    }
    modern = CoreEvent(
        {
            "specversion": "1.0",
            "type": "doc.edited",
            "source": "/editor",
            "id": "e-2",
            "time": WHEN,
        },
        {"op": "delete"},
    )
    message = core_http.to_structured(modern, JSON_FORMAT)
    second = await client.post(
        "/v1/topics/acme/docs/42/events", headers=message.headers, content=message.body
    )
    assert second.status_code == 201, second.text
    assert second.json()["acks"][0]["offset"] == 2

    page = await history(client, "/v1/topics/acme/docs/42/events")
    events = [item["event"] for item in page["events"]]
    assert events[0].pop("time")  # the legacy SDK sets it
    assert events[0] == {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/editor",
        "type": "doc.edited",
        "subject": "42",
        "lamport": 7,
        "data": {"op": "insert", "text": "hi"},
    }
    assert events[1]["time"] == "2026-11-23T11:02:07Z"
    # What we send back, the SDK reads.
    again = JSON_FORMAT.read(None, httpx.Response(200, json=events[1]).content)
    assert again.get_attributes()["id"] == "e-2"
    assert again.get_data() == {"op": "delete"}
    assert api.sample("hybridbus_publishes_total", gateway="http") == 2


async def test_binary_mode_from_both_sdk_apis(client: httpx.AsyncClient) -> None:
    legacy = V1Event(
        {
            "type": "blob",
            "source": "/up",
            "id": "b-1",
            "datacontenttype": "application/octet-stream",
        },
        b"\x00\x01\xfe\xff",
    )
    headers, body = wire(*v1_to_binary(legacy, data_marshaller=lambda data: data))
    response = await client.post("/v1/topics/acme/files/events", headers=headers, content=body)
    assert response.status_code == 201, response.text
    modern = CoreEvent(
        {
            "specversion": "1.0",
            "type": "note",
            "source": "/notes",
            "id": "n-1 with space %",  # the SDK percent-encodes it in the header
            "datacontenttype": "text/plain",
            "tenantid": "acme",
            "traceparent": "00-abc-01",
        },
        "héllo",
    )
    message = core_http.to_binary(modern, JSON_FORMAT)
    response = await client.post(
        "/v1/topics/acme/files/events", headers=message.headers, content=message.body
    )
    assert response.status_code == 201, response.text

    blob, note = (
        item["event"] for item in (await history(client, "/v1/events", pattern="acme/#"))["events"]
    )
    assert base64.b64decode(blob["data_base64"]) == b"\x00\x01\xfe\xff"
    assert blob["datacontenttype"] == "application/octet-stream"
    assert note["id"] == "n-1 with space %"
    assert note["data"] == "héllo"
    assert (note["tenantid"], note["traceparent"]) == ("acme", "00-abc-01")


async def test_a_duplicate_is_answered_200_with_the_original(
    api: Api, client: httpx.AsyncClient
) -> None:
    body = event("same", data={"n": 1})
    first = await client.post(
        "/v1/topics/acme/a/events", json=body, headers={"content-type": JSON_CONTENT_TYPE}
    )
    again = await client.post(
        "/v1/topics/acme/a/events", json=body, headers={"content-type": JSON_CONTENT_TYPE}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["acks"][0] == {**first.json()["acks"][0], "duplicate": True}
    assert len((await history(client, "/v1/topics/acme/a/events"))["events"]) == 1
    assert api.sample("hybridbus_duplicates_total", gateway="http") == 1


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_batch_is_published_in_order(engine: str, tmp_path: Path) -> None:
    url = "memory://" if engine == "memory" else f"sqlite://{tmp_path / 'data'}"
    events = [
        CoreEvent({"specversion": "1.0", "type": "t", "source": "/b", "id": str(i)}, {"i": i})
        for i in range(50)
    ]
    body = b"[" + b",".join(JSON_FORMAT.write(e) for e in events) + b"]"
    async with (
        hybridbus.open(url) as bus,
        serving(bus) as api,
        httpx.AsyncClient(base_url=api.base, timeout=10.0) as client,
    ):
        response = await client.post(
            "/v1/topics/acme/batch/events",
            content=body,
            headers={"content-type": JSON_BATCH_CONTENT_TYPE},
        )
        assert response.status_code == 201, response.text
        acks = response.json()["acks"]
        assert [a["offset"] for a in acks] == list(range(1, 51))
        assert [a["position"] for a in acks] == sorted(a["position"] for a in acks)
        page = await history(client, "/v1/topics/acme/batch/events", limit=1000)
        assert [item["event"]["data"] for item in page["events"]] == [{"i": i} for i in range(50)]
        # The same batch again: every event is a duplicate, nothing is appended.
        again = await client.post(
            "/v1/topics/acme/batch/events",
            content=body,
            headers={"content-type": JSON_BATCH_CONTENT_TYPE},
        )
        assert again.status_code == 200
        assert all(a["duplicate"] for a in again.json()["acks"])
        assert api.sample("hybridbus_publishes_total", gateway="http") == 100


async def test_a_batch_with_one_bad_event_publishes_nothing(client: httpx.AsyncClient) -> None:
    batch = [event("0"), event("1"), {**event("2"), "time": "yesterday"}, event("3")]
    response = await client.post(
        "/v1/topics/acme/b/events", json=batch, headers={"content-type": JSON_BATCH_CONTENT_TYPE}
    )
    body = assert_problem(response, 400, ErrorCode.INVALID_EVENT, attribute="time", index=2)
    assert "time" in body["detail"]
    big = [event("0"), event("1", data="x" * 2_000_000)]
    response = await client.post(
        "/v1/topics/acme/b/events", json=big, headers={"content-type": JSON_BATCH_CONTENT_TYPE}
    )
    assert_problem(response, 413, ErrorCode.EVENT_TOO_LARGE, index=1)
    response = await client.post(
        "/v1/topics/acme/b/events",
        json={"not": "an array"},
        headers={"content-type": JSON_BATCH_CONTENT_TYPE},
    )
    assert_problem(response, 400, ErrorCode.INVALID_EVENT)
    assert (await history(client, "/v1/events", pattern="#"))["events"] == []


# -- history ------------------------------------------------------------------------


async def test_history_pages_by_topic_and_pattern_with_since(
    api: Api, client: httpx.AsyncClient
) -> None:
    for i in range(9):
        topic = ["acme/docs/1", "acme/docs/2", "acme/chat/1"][i % 3]
        await api.bus.publish(topic, event(str(i), data=i))
    # A topic, in pages of 2, each continuing from the last one's position.
    seen: list[int] = []
    since = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"since": since} if since else {})
        page = await history(client, "/v1/topics/acme/docs/1/events", **params)
        seen += [item["event"]["data"] for item in page["events"]]
        assert page["exact"]
        since = page["position"]
        if not page["more"]:
            break
    assert seen == [0, 3, 6]
    # At the head: nothing more, and the token stays usable.
    page = await history(client, "/v1/topics/acme/docs/1/events", since=since)
    assert page == {"events": [], "position": since, "more": False, "exact": True}
    # A pattern ('+' sent as %2B by httpx), with topic and offsets alongside each event.
    page = await history(client, "/v1/events", pattern="acme/docs/+", limit=3)
    assert [(i["topic"], i["offset"], i["event"]["data"]) for i in page["events"]] == [
        ("acme/docs/1", 1, 0),
        ("acme/docs/2", 1, 1),
        ("acme/docs/1", 2, 3),
    ]
    assert page["more"]
    rest = await history(client, "/v1/events", pattern="acme/docs/+", since=page["position"])
    assert [i["event"]["data"] for i in rest["events"]] == [4, 6, 7]
    # A literal '+' in the query is a plus, not a space (as curl users write it).
    literal = await client.get("/v1/events?pattern=acme/docs/+&limit=3")
    assert literal.json()["events"] == page["events"]
    # '#' percent-encoded in the query; a plain topic works as a pattern too.
    assert len((await history(client, "/v1/events", pattern="acme/#"))["events"]) == 9
    raw = await client.get("/v1/events?pattern=acme%2Fchat%2F%23")
    assert [i["event"]["data"] for i in raw.json()["events"]] == [2, 5, 8]
    assert len((await history(client, "/v1/events", pattern="acme/chat/1"))["events"]) == 3
    # The topic in the path may also be percent-encoded as a whole.
    encoded = await client.get("/v1/topics/acme%2Fchat%2F1/events")
    assert [i["event"]["data"] for i in encoded.json()["events"]] == [2, 5, 8]


async def test_a_token_from_another_epoch_is_not_exact(api: Api, client: httpx.AsyncClient) -> None:
    await api.bus.publish("acme/a", event("1"))
    page = await history(client, "/v1/topics/acme/a/events", since="Zz9-123")
    assert not page["exact"]
    assert [i["event"]["id"] for i in page["events"]] == ["1"]


async def test_a_page_stops_early_at_its_byte_budget() -> None:
    config = HttpConfig(max_page_bytes=3_000)
    async with (
        hybridbus.open("memory://") as bus,
        serving(bus, config=config) as api,
        httpx.AsyncClient(base_url=api.base) as client,
    ):
        for i in range(10):
            await bus.publish("acme/big", event(str(i), data="x" * 1000))
        got: list[str] = []
        sizes: list[int] = []
        since = None
        pages = 0
        while True:
            page = await history(
                client, "/v1/events", pattern="acme/#", **({"since": since} if since else {})
            )
            pages += 1
            sizes.append(len(page["events"]))
            got += [i["event"]["id"] for i in page["events"]]
            since = page["position"]
            if not page["more"]:
                break
        assert got == [str(i) for i in range(10)]
        assert pages >= 4
        # Every page but the last is as full as the 3,000-byte budget allows.
        assert sizes == [2, 2, 2, 2, 2]


# -- presence and topics -------------------------------------------------------------


async def test_presence_comes_from_the_injected_callable(client: httpx.AsyncClient) -> None:
    # Without one (this fixture), nobody is there, and that is not an error.
    response = await client.get("/v1/topics/acme/docs/42/presence")
    assert response.json() == {"topic": "acme/docs/42", "clients": []}
    asked: list[str] = []

    def presence(topic: str) -> list[ClientInfo]:
        asked.append(topic)
        return [ClientInfo(client="c-1", user="ann", device="laptop"), ClientInfo(client="c-2")]

    async with (
        hybridbus.open("memory://") as bus,
        serving(bus, presence=presence) as api,
        httpx.AsyncClient(base_url=api.base) as other,
    ):
        response = await other.get("/v1/topics/acme/docs/42/presence")
        assert response.status_code == 200
        assert response.json() == {
            "topic": "acme/docs/42",
            "clients": [{"client": "c-1", "user": "ann", "device": "laptop"}, {"client": "c-2"}],
        }
        assert asked == ["acme/docs/42"]
        bad = await other.get("/v1/topics/acme/+/presence")
        assert_problem(bad, 400, ErrorCode.INVALID_TOPIC)
        assert asked == ["acme/docs/42"]


async def test_topics_are_listed_by_prefix_and_paged(api: Api, client: httpx.AsyncClient) -> None:
    for topic in ["acme/b", "acme/a", "acme/a", "acmeco/x", "globex/a"]:
        await api.bus.publish(topic, event())
    response = await client.get("/v1/topics", params={"prefix": "acme/"})
    assert response.json() == {
        "topics": [{"topic": "acme/a", "offset": 2}, {"topic": "acme/b", "offset": 1}],
        "more": False,
    }
    first = (await client.get("/v1/topics", params={"limit": 2})).json()
    assert [t["topic"] for t in first["topics"]] == ["acme/a", "acme/b"] and first["more"]
    after = first["topics"][-1]["topic"]
    second = (await client.get("/v1/topics", params={"limit": 2, "after": after})).json()
    assert [t["topic"] for t in second["topics"]] == ["acmeco/x", "globex/a"]
    assert not second["more"]


async def test_a_listing_shows_what_the_visibility_hook_allows_in_full_pages() -> None:
    """Hidden topics are filtered out, yet a page is full while `more` is true.

    1,500 hidden topics lie between two visible ones: more than one read from the
    engine, so the gateway reads on until the page is full or the topics run out.
    """
    asked: list[str] = []

    async def visibility(request: web.Request, prefix: str) -> Callable[[str], bool]:
        asked.append(prefix)
        return lambda topic: "/hidden/" not in topic

    async with hybridbus.open("memory://") as bus:
        for topic in ["acme/a", "acme/b", "acme/c", "acme/hidden/x"]:
            await bus.publish(topic, event())
        await asyncio.gather(*(bus.publish(f"acme/b/hidden/{n:04}", event()) for n in range(1500)))
        gateway = HttpGateway(bus, Metrics(), visibility=visibility)
        app = web.Application()
        app.add_routes(gateway.routes())
        async with (
            TestServer(app, host="127.0.0.1") as server,
            httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10.0) as client,
        ):
            params: dict[str, Any] = {"prefix": "acme/", "limit": 2}
            first = (await client.get("/v1/topics", params=params)).json()
            assert [t["topic"] for t in first["topics"]] == ["acme/a", "acme/b"]
            assert first["more"] is True
            after = first["topics"][-1]["topic"]
            second = (await client.get("/v1/topics", params={**params, "after": after})).json()
            assert second == {"topics": [{"topic": "acme/c", "offset": 1}], "more": False}
            # limit=0 says whether anything visible is there, nothing more.
            for after, more in (("", True), ("acme/c", False)):
                params = {"prefix": "acme/", "limit": 0, "after": after}
                page = (await client.get("/v1/topics", params=params)).json()
                assert page == {"topics": [], "more": more}
        gateway.close()
    assert set(asked) == {"acme/"}


# -- problems --------------------------------------------------------------------


CE = {"content-type": JSON_CONTENT_TYPE}
BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "members"),
    [
        # topics and patterns
        ("POST", "/v1/topics/acme//x/events", CE, event(), 400, ErrorCode.INVALID_TOPIC, {}),
        ("POST", "/v1/topics/acme/%2B/events", CE, event(), 400, ErrorCode.INVALID_TOPIC, {}),
        ("GET", "/v1/topics/acme/%23/events", {}, None, 400, ErrorCode.INVALID_TOPIC, {}),
        ("GET", "/v1/topics/a%20b/presence", {}, None, 400, ErrorCode.INVALID_TOPIC, {}),
        ("GET", "/v1/events?pattern=acme/%23/x", {}, None, 400, ErrorCode.INVALID_PATTERN, {}),
        ("GET", "/v1/events?pattern=a%2B", {}, None, 400, ErrorCode.INVALID_PATTERN, {}),
        # parameters
        ("GET", "/v1/events", {}, None, 400, ErrorCode.INVALID_INPUT, {"parameter": "pattern"}),
        (
            "GET",
            "/v1/events?pattern=a&limit=-1",
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "limit"},
        ),
        (
            "GET",
            "/v1/events?pattern=a&limit=1001",
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "limit"},
        ),
        (
            "GET",
            "/v1/events?pattern=a&limit=" + "9" * 5000,
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "limit"},
        ),
        (
            "GET",
            "/v1/events?pattern=a&limit=1&limit=2",
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "limit"},
        ),
        (
            "GET",
            "/v1/events?pattern=a&since=nope",
            {},
            None,
            400,
            ErrorCode.INVALID_POSITION,
            {"parameter": "since"},
        ),
        (
            "GET",
            "/v1/topics?prefix=%01",
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "prefix"},
        ),
        (
            "GET",
            "/v1/topics?after=" + "a" * 1025,
            {},
            None,
            400,
            ErrorCode.INVALID_INPUT,
            {"parameter": "after"},
        ),
        # events: the attribute at fault is named
        (
            "POST",
            "/v1/topics/acme/a/events",
            CE,
            {"specversion": "1.0", "source": "/s", "type": "t"},
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "id"},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            CE,
            {**event(), "specversion": "0.3"},
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "specversion"},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            CE,
            {**event(), "Bad-Name": 1},
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "Bad-Name"},
        ),
        ("POST", "/v1/topics/acme/a/events", CE, b'{"id": ', 400, ErrorCode.INVALID_EVENT, {}),
        ("POST", "/v1/topics/acme/a/events", CE, b"\xff\xfe", 400, ErrorCode.INVALID_EVENT, {}),
        (
            "POST",
            "/v1/topics/acme/a/events",
            {**BINARY, "ce-source": ""},
            b"",
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "source"},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            {**BINARY, "ce-time": "noon"},
            b"",
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "time"},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            {**BINARY, "ce-lamport": "-1"},
            b"",
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "lamport"},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            {**BINARY, "content-type": "application/json"},
            b"{nope",
            400,
            ErrorCode.INVALID_EVENT,
            {"attribute": "data"},
        ),
        # sizes
        (
            "POST",
            "/v1/topics/acme/a/events",
            CE,
            event(data="x" * 1_100_000),
            413,
            ErrorCode.EVENT_TOO_LARGE,
            {},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            BINARY,
            b"x" * (9 << 20),
            413,
            ErrorCode.EVENT_TOO_LARGE,
            {},
        ),
        # media types
        (
            "POST",
            "/v1/topics/acme/a/events",
            {"content-type": "application/json"},
            event(),
            415,
            ErrorCode.INVALID_INPUT,
            {},
        ),
        (
            "POST",
            "/v1/topics/acme/a/events",
            {"content-type": "text/plain"},
            b"hello",
            415,
            ErrorCode.INVALID_INPUT,
            {},
        ),
        ("POST", "/v1/topics/acme/a/events", {}, b"", 415, ErrorCode.INVALID_INPUT, {}),
    ],
)
async def test_bad_input_is_a_problem_that_names_what_was_wrong(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: ErrorCode,
    members: dict[str, Any],
) -> None:
    content = (
        body
        if isinstance(body, bytes) or body is None
        else httpx.Request("POST", "/", json=body).content
    )
    response = await client.request(method, path, headers=headers, content=content)
    assert_problem(response, status, code, **members)
    # Nothing was published by any of them.
    assert (await history(client, "/v1/events", pattern="#"))["events"] == []


async def test_undecodable_header_bytes_and_broken_bodies_are_refused(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(api.base.rsplit(":", 1)[1])

    async def exchange(raw: bytes, half_close: bool = False) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        if half_close:
            writer.write_eof()
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        return answer

    start = b"POST /v1/topics/acme/a/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    binary = b"ce-specversion: 1.0\r\nce-source: /s\r\nce-type: t\r\n"
    answer = await exchange(start + binary + b"ce-id: \xff\xfe\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"application/problem+json" in answer and b'"attribute":"id"' in answer
    # A chunked body that breaks off mid-chunk.
    answer = await exchange(
        start + binary + b"ce-id: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        half_close=True,
    )
    # The client half-closed without finishing: no answer is owed, but no 5xx either.
    assert not answer.startswith(b"HTTP/1.1 5"), answer
    # A chunk header that is not hexadecimal.
    answer = await exchange(
        start + binary + b"ce-id: 1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer
    assert (await api.bus.history("#")).deliveries == []
    assert not [r for r in caplog.records if r.name.startswith("hybridbus") and r.levelno >= 40]


async def test_server_side_failures_are_5xx_without_details() -> None:
    engine = GatedEngine()
    bus = Bus(engine, BusConfig())
    await bus.start()

    def broken_presence(topic: str) -> list[ClientInfo]:
        raise RuntimeError("secret detail")

    async with (
        serving(bus, presence=broken_presence) as api,
        httpx.AsyncClient(base_url=api.base) as client,
    ):
        engine.failure = EngineUnavailable("sqlite engine: disk I/O error at /var/secret")
        response = await client.post("/v1/topics/acme/a/events", json=event(), headers=CE)
        body = assert_problem(response, 503, ErrorCode.ENGINE_UNAVAILABLE, retriable=True)
        assert response.headers["retry-after"] == "1"
        assert "secret" not in body["detail"]
        engine.failure = None

        response = await client.get("/v1/topics/acme/a/presence")
        body = assert_problem(response, 500, ErrorCode.INTERNAL_ERROR, retriable=False)
        assert "secret" not in response.text

        await bus.close()
        response = await client.post("/v1/topics/acme/a/events", json=event(), headers=CE)
        assert_problem(response, 503, ErrorCode.BUS_CLOSED)
        response = await client.get("/v1/topics")
        assert_problem(response, 503, ErrorCode.BUS_CLOSED)
