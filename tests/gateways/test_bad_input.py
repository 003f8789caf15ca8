"""Bad input against the running server: every malformed request gets its documented code.

One real server (sqlite engine, so that positions meet a 64-bit column) runs in a
thread for the module; the tests drive it with blocking clients (`httpx`, the
`websockets` sync client), which lets hypothesis make many requests against
the one server. Checked: resume tokens of every shape (HTTP history on both
routes, SSE `since` and Last-Event-ID, WebSocket `history` and `subscribe`),
bodies nested 100,000 levels deep (structured, batch and binary mode), and the
`tenantid` rule (an event's `tenantid` must be its topic's tenant).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.servers import JSON, MSGPACK, running_server
from websockets.sync.client import ClientConnection, connect

import hybridbus
from hybridbus.core.event import MAX_DEPTH
from hybridbus.core.log import MAX_POSITION
from hybridbus.errors import ErrorCode, InvalidEvent

PROBLEM = "application/problem+json"
TIMEOUT = 10.0


@dataclass
class Background:
    """The server of this module: its port and its log's epoch."""

    port: int
    epoch: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    data = tmp_path_factory.mktemp("bad-input") / "data"
    started: list[tuple[Background, asyncio.AbstractEventLoop, asyncio.Event]] = []
    ready = threading.Event()
    failed: list[BaseException] = []

    async def serve() -> None:
        stop = asyncio.Event()
        async with running_server(engine=f"sqlite://{data}") as running:
            epoch = running.node.bus.engine.epoch
            started.append((Background(running.port, epoch), asyncio.get_running_loop(), stop))
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="bad-input-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    assert not failed, failed
    background, loop, stop = started[0]
    try:
        yield background
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@pytest.fixture(scope="module")
def http(server: Background) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=TIMEOUT) as client:
        yield client


def event(**fields: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/test",
        "type": "test.event",
        **fields,
    }


def assert_problem(response: httpx.Response, status: int, code: int, **members: Any) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    for name, value in members.items():
        assert body.get(name) == value, body


class Ws:
    """A blocking protocol client: one connection, commands answered in order."""

    def __init__(self, ws: ClientConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.ids = 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, url: str, subprotocol: str = JSON) -> Iterator[Ws]:
        with connect(
            url,
            subprotocols=[subprotocol],  # type: ignore[list-item]
            open_timeout=TIMEOUT,
            max_size=None,
        ) as ws:
            client = cls(ws, subprotocol == MSGPACK)
            assert client.request("connect")["type"] == "reply"
            yield client

    def request(self, type: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        message = {"type": type, "id": self.ids, **fields}
        self.ws.send(msgspec.msgpack.encode([message]) if self.binary else json.dumps(message))
        while True:
            data = self.ws.recv(TIMEOUT)
            if isinstance(data, bytes):
                messages = msgspec.msgpack.decode(data)
            else:
                messages = [json.loads(line) for line in data.splitlines() if line.strip()]
            for answer in messages:
                if answer.get("id") == self.ids and answer["type"] in ("reply", "error"):
                    return answer  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ws(server: Background) -> Iterator[Ws]:
    with Ws.open(server.ws) as client:
        yield client


# Resume tokens ---------------------------------------------------------------


def since_answers(server: Background, http: httpx.Client, ws: Ws, since: str) -> list[str]:
    """How each way in answers `since`: 'ok', or the error's code; asserts the shape."""
    answers: list[str] = []
    for response in (
        http.get("/v1/events", params={"pattern": "acme/docs/#", "since": since}),
        http.get("/v1/topics/acme/docs/1/events", params={"since": since}),
    ):
        if response.status_code == 200:
            answers.append("ok")
        else:
            assert_problem(response, 400, ErrorCode.INVALID_POSITION, parameter="since")
            answers.append("1005")
    for params, headers, parameter in (
        ({"since": since}, {}, "since"),
        ({}, {"Last-Event-ID": since}, "Last-Event-ID"),
    ):
        if parameter == "Last-Event-ID" and not (
            since.isascii() and since.isprintable() and since == since.strip()
        ):
            continue  # not a header value httpx would send as it is
        with http.stream(
            "GET", "/v1/sse", params={"pattern": "acme/docs/#", **params}, headers=headers
        ) as response:
            if response.status_code == 200:
                answers.append("ok")
            else:
                response.read()
                assert_problem(response, 400, ErrorCode.INVALID_POSITION, parameter=parameter)
                answers.append("1005")
    for command in ("history", "subscribe"):
        answer = ws.request(command, pattern="docs/#", since=since)
        if answer["type"] == "reply":
            answers.append("ok")
            if command == "subscribe":
                assert ws.request("unsubscribe", pattern="docs/#")["type"] == "reply"
        else:
            assert answer["code"] == ErrorCode.INVALID_POSITION, answer
            answers.append("1005")
    return answers


@pytest.mark.parametrize(
    "positions",
    ["99999999999999999999999", str(2**63), f"0.{2**64}", "1" * 4000, "-1", "+1", "\u0661", ""],
)
def test_a_since_out_of_range_or_malformed_is_1005_everywhere(
    server: Background, http: httpx.Client, ws: Ws, positions: str
) -> None:
    since = f"{server.epoch}-{positions}"
    assert set(since_answers(server, http, ws, since)) == {"1005"}


def test_the_largest_position_is_taken_everywhere(
    server: Background, http: httpx.Client, ws: Ws
) -> None:
    since = f"{server.epoch}-{MAX_POSITION}"
    assert since_answers(server, http, ws, since) == ["ok"] * 6


digits = st.sampled_from(["0", "9", "\u0661", "\uff11", "\u00b2", "_", " "])
numbers = (
    st.integers().map(str)
    | st.integers(0, 2**80).map(lambda n: f"+{n}")
    | st.lists(digits, max_size=4).map("".join)
    | st.integers(MAX_POSITION - 2, MAX_POSITION + 2).map(str)
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    epoch=st.sampled_from(["this", "other", "", "a-b"]),
    positions=st.lists(numbers, max_size=30).map(".".join),
)
def test_any_since_is_taken_or_1005_never_a_crash(
    server: Background, http: httpx.Client, ws: Ws, epoch: str, positions: str
) -> None:
    since = f"{server.epoch if epoch == 'this' else epoch}-{positions}"
    answers = since_answers(server, http, ws, since)
    assert len(set(answers)) == 1, (since, answers)  # every way in agrees


# Nested bodies ---------------------------------------------------------------


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


BINARY = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"}


def publishes(body: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """A nested `body` in every publish mode: (what, request body, headers)."""
    inside = json.dumps(event())[:-1].encode() + b',"data":' + body + b"}"
    return [
        ("structured whole", body, {"content-type": "application/cloudevents+json"}),
        ("structured data", inside, {"content-type": "application/cloudevents+json"}),
        ("batch whole", body, {"content-type": "application/cloudevents-batch+json"}),
        (
            "batch data",
            b"[" + inside + b"]",
            {"content-type": "application/cloudevents-batch+json"},
        ),
        ("binary json", body, {**BINARY, "content-type": "application/json"}),
        ("binary unlabelled", body, BINARY),
    ]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_body_nested_100k_deep_is_400_in_every_mode(http: httpx.Client, kind: str) -> None:
    for what, body, headers in publishes(nested(100_000, kind)):
        response = http.post("/v1/topics/acme/deep/events", content=body, headers=headers)
        assert response.status_code == 400, (what, response.text)
        assert_problem(response, 400, ErrorCode.INVALID_EVENT)
    assert http.get("/v1/topics/acme/deep/events").json()["events"] == []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    depth=st.integers(1, 100_000) | st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2),
    kind=st.sampled_from(["list", "dict"]),
)
def test_any_nesting_is_published_or_1001(
    http: httpx.Client, ws: Ws, depth: int, kind: str
) -> None:
    for what, body, headers in publishes(nested(depth, kind)):
        response = http.post("/v1/topics/acme/nest/events", content=body, headers=headers)
        if response.status_code in (200, 201):
            assert depth <= MAX_DEPTH or "whole" in what, what
        else:
            assert_problem(response, 400, ErrorCode.INVALID_EVENT)
            assert depth > MAX_DEPTH or "whole" in what, (what, response.text)
    # Whatever was published can be read back, by HTTP and over the WebSocket.
    assert http.get("/v1/topics/acme/nest/events", params={"limit": 1000}).status_code == 200
    assert ws.request("history", pattern="nest", limit=1000)["type"] == "reply"


def test_data_nested_to_the_limit_is_delivered(http: httpx.Client, ws: Ws) -> None:
    data = json.loads(nested(MAX_DEPTH, "list"))
    response = http.post(
        "/v1/topics/acme/limit/events",
        json=[event(data=data)],
        headers={"content-type": "application/cloudevents-batch+json"},
    )
    assert response.status_code == 201, response.text
    history = ws.request("history", pattern="limit")
    assert [e["event"]["data"] for e in history["result"]["events"]] == [data]
    too_deep = ws.request("publish", topic="limit", event=event(data=[data]))
    assert too_deep["code"] == ErrorCode.INVALID_EVENT and "data" in too_deep["message"]


# tenantid ----------------------------------------------------------------------


def test_tenantid_of_another_tenant_is_refused_over_the_websocket(server: Background) -> None:
    for subprotocol in (JSON, MSGPACK):
        with Ws.open(server.ws, subprotocol) as client:
            refused = client.request("publish", topic="t/1", event=event(tenantid="globex"))
            assert refused["type"] == "error", refused
            assert refused["code"] == ErrorCode.INVALID_EVENT and "tenantid" in refused["message"]
            ok = client.request("publish", topic="t/1", event=event(tenantid="acme"))
            assert ok["type"] == "reply", ok
            bare = client.request("publish", topic="t/1", event=event())
            assert bare["type"] == "reply", bare


def test_tenantid_of_another_tenant_is_refused_over_http(http: httpx.Client) -> None:
    topic = f"/v1/topics/acme/h{uuid.uuid4().hex[:8]}/events"
    structured = {"content-type": "application/cloudevents+json"}
    batch = {"content-type": "application/cloudevents-batch+json"}
    refusals = [
        http.post(topic, content=json.dumps(event(tenantid="globex")), headers=structured),
        http.post(topic, content=b"{}", headers={**BINARY, "ce-tenantid": "globex"}),
    ]
    for response in refusals:
        assert_problem(response, 400, ErrorCode.INVALID_EVENT, attribute="tenantid")
    # A batch is refused whole, naming the bad event: nothing of it is published.
    mixed = [event(tenantid="acme"), event(tenantid="globex"), event()]
    response = http.post(topic, content=json.dumps(mixed), headers=batch)
    assert_problem(response, 400, ErrorCode.INVALID_EVENT, attribute="tenantid", index=1)
    assert http.get(topic).json()["events"] == []
    # Its own tenant, or none (left absent, not filled in).
    accepted = [
        http.post(topic, content=json.dumps(event(tenantid="acme")), headers=structured),
        http.post(topic, content=b"{}", headers={**BINARY, "ce-id": "y", "ce-tenantid": "acme"}),
        http.post(topic, content=json.dumps([event(tenantid="acme"), event()]), headers=batch),
    ]
    assert [r.status_code for r in accepted] == [201, 201, 201]
    events = [e["event"] for e in http.get(topic).json()["events"]]
    assert [e.get("tenantid") for e in events] == ["acme", "acme", "acme", None]


async def test_tenantid_in_process() -> None:
    async with hybridbus.open("memory://") as bus:
        with pytest.raises(InvalidEvent) as info:
            await bus.publish("acme/a", event(tenantid="globex"))
        assert info.value.attribute == "tenantid"
        ack = await bus.publish("acme/a", event(tenantid="acme"))
        assert ack.offset == 1
