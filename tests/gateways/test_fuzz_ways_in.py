"""Fuzz every way in of one running server; it answers with documented codes and loses nothing.

One real server (`tests.servers.running_server`, the gRPC API on too) runs in
an event loop of its own thread for the whole module, its log written to
memory (`tests.logscan.server_logs`); hypothesis examples are clients of it
over loopback, each in a fresh `asyncio.run` (gRPC's on the server's loop:
`grpc.aio` wants one loop in a process):

    way in                what is sent                                  what may come back
    WebSocket (JSON and   near-valid frames of EVERY command tag, field  errors with an ErrorCode,
    MessagePack)          names from proto/frames*.py, values right or   closes with a CloseCode
                          of the wrong type or size
    Yjs socket            junk bytes, truncated varuints, sync steps and  a YjsCloseCode, or nothing
                          updates with garbage payloads, awareness with
                          broken JSON or huge clocks, auth messages
    gRPC                  invalid protobuf bytes on each method, valid   a status with a documented
                          messages with wrong content                   `hybridbus-code`, never
                                                                        UNKNOWN / INTERNAL
    HTTP                  bodies of every kind to every POST, PUT,       never a 5xx; a 4xx problem
                          PATCH and DELETE route of the OpenAPI document  carries an ErrorCode

Each test ends by checking that a fresh, valid client of that way is served,
that what was acknowledged before the fuzz (events in a topic's log, a Yjs
document's text, a state topic's document) is still there, and that the
server logged no traceback, unhandled error or lost task exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, get_args
from urllib.parse import quote

import grpc
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as seen
from hypothesis import strategies as st
from pycrdt import Doc, Text
from tests.logscan import Logs, server_logs
from tests.servers import JSON, MSGPACK, Server, event, running_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hybridbus.core.yjs_protocol import (
    AwarenessEntry,
    YjsCloseCode,
    decode_messages,
    encode_auth_token,
    encode_awareness,
    encode_query_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
    write_varuint,
)
from hybridbus.errors import ErrorCode
from hybridbus.gateways import openapi
from hybridbus.gateways.grpc_gen import bus_pb2
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import Command, Pong
from hybridbus.serve import GRPC_PORT_KEY
from hybridbus.server.access import new_api_key

pytestmark = pytest.mark.timeout(120)

ERROR_CODES: Final = {int(code) for code in ErrorCode}
CLOSE_CODES: Final = {int(code) for code in CloseCode}
YJS_CLOSE_CODES: Final = {int(code) for code in YjsCloseCode}
ADMIN_KEY, ADMIN_HASH = new_api_key()
# What the server must never log, whatever a peer sends.
BROKEN: Final = re.compile(
    r"Traceback|Unhandled|Exception in callback|Task exception was never retrieved"
)
# The clients' libraries log into the same root logger (the clients run in this process).
CLIENTS: Final = re.compile(r'"logger":"(grpc\.aio\._call|websockets\.client|httpx|httpcore)')
KEPT: Final = [f"kept-{n}" for n in range(3)]  # events on acme/keep, acknowledged before the fuzz
KEPT_TEXT: Final = "kept: héllo 😀 世界"  # the Yjs room "keep"'s text
KEPT_STATE: Final = {"kept": True, "n": 3}  # the state topic acme/keep-state's document
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the server, in a thread ------------------------------------------------------------------


@dataclass
class Live:
    """The server of this module: its ports, its log, and a way to run code on its loop."""

    server: Server
    loop: asyncio.AbstractEventLoop
    logs: Logs

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.app[GRPC_PORT_KEY]}"

    def run(self, coroutine: Any) -> Any:
        """Run `coroutine` on the server's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    @contextlib.contextmanager
    def clean(self) -> Iterator[None]:
        """Fail if the block made the server log a traceback or an unhandled error."""
        start = len(self.logs.lines)
        yield
        broken = broken_lines(self.logs.lines[start:])
        assert not broken, "\n".join(broken[:5])


def broken_lines(lines: list[str]) -> list[str]:
    """The lines of the server saying it failed: a traceback, an unhandled error."""
    return [line for line in lines if BROKEN.search(line) and not CLIENTS.search(line)]


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """The server, on a loop of its own thread, from the first test of the module to the last."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)

    async def serve(ready: asyncio.Future[Server], stop: asyncio.Event) -> None:
        admin = {"name": "ops", "hash": ADMIN_HASH, "admin": True}
        async with running_server(grpc_port=0, api_keys=[admin]) as server:
            await keep(server)
            ready.set_result(server)
            await stop.wait()

    async def start() -> tuple[Server, asyncio.Event, asyncio.Task[None]]:
        ready: asyncio.Future[Server] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(ready, stop))
        either: set[asyncio.Future[Any]] = {ready, task}
        await asyncio.wait(either, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it failed to start: why
        return ready.result(), stop, task

    with server_logs() as logs:
        thread.start()
        try:
            server, stop, task = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
            yield Live(server, loop, logs)
            loop.call_soon_threadsafe(stop.set)
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(task, 30), loop).result(35)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
        broken = broken_lines(logs.lines)  # between the tests too
        assert not broken, "\n".join(broken[:5])


async def keep(server: Server) -> None:
    """What is acknowledged before any fuzz: events, a Yjs document, a state document."""
    for id_ in KEPT:
        await server.node.bus.publish("acme/keep", event(id_, data={"n": id_}))
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    text += KEPT_TEXT
    async with connect(f"ws://127.0.0.1:{server.port}/v1/yjs/keep") as ws:
        await ws.send(encode_sync_update(doc.get_update()))  # anonymous: the first message
        await ws.recv()  # sync step 1: joined
        assert await yjs_text(server.port, "keep", timeout=5) == KEPT_TEXT
    async with httpx.AsyncClient(base_url=server.http) as client:
        response = await client.patch(
            "/v1/states/acme/keep-state",
            content=json.dumps(KEPT_STATE),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text
        # An inbound webhook endpoint, so that the fuzz's posts to it meet its signature check.
        response = await client.put(  # anonymous callers act in tenant acme
            "/v1/webhooks/endpoints/inbound", json={"secrets": ["whsec_" + "A" * 32]}
        )
        assert response.status_code in (200, 201), response.text


async def yjs_text(port: int, room: str, timeout: float = 5) -> str:
    """The text a fresh y-protocols client gets of `room` once synced."""
    async with asyncio.timeout(timeout), connect(f"ws://127.0.0.1:{port}/v1/yjs/{room}") as ws:
        doc: Doc[Any] = Doc()
        await ws.send(encode_sync_step1(doc.get_state()))
        while True:
            data = await ws.recv()
            assert isinstance(data, bytes)
            for message in decode_messages(data):
                update = getattr(message, "update", None)
                if type(message).__name__ == "SyncStep2" and update is not None:
                    doc.apply_update(update)
                    return str(doc.get("text", type=Text))


async def intact(live: Live) -> None:
    """A fresh client of each way is served, and what was acknowledged before is there."""
    port = live.port
    async with connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=[JSON]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connect", "id": 1}))
        await ws.send(json.dumps({"type": "history", "id": 2, "pattern": "keep", "limit": 100}))
        answers: dict[int, Any] = {}
        async with asyncio.timeout(5):
            while 2 not in answers:
                message = json.loads(await ws.recv())
                answers[message.get("id", 0)] = message
        assert answers[1]["type"] == "reply", answers
        ids = [item["event"]["id"] for item in answers[2]["result"]["events"]]
        assert ids[: len(KEPT)] == KEPT, ids
    assert await yjs_text(port, "keep") == KEPT_TEXT
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        response = await client.get("/v1/states/acme/keep-state")
        assert response.status_code == 200, response.text
        assert response.json()["document"] == KEPT_STATE


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True one time in `n` (`integers(0, n - 1) == 0` would be true far more: hypothesis
    tries the simplest value, 0, often)."""
    return st.sampled_from([False] * (n - 1) + [True])


def mostly(
    right: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any], n: int = 5
) -> st.SearchStrategy[Any]:
    """A value of `right`, or one time in `n` of `wrong`."""

    def pick(bad: bool) -> st.SearchStrategy[Any]:
        return wrong if bad else right

    return one_in(n).flatmap(pick)


# -- 1. WebSocket: every command tag ----------------------------------------------------------

COMMANDS: Final = get_args(Command)
TAGS: Final = [
    *(kind.__struct_config__.tag for kind in (*COMMANDS, Pong)),
    "nonsense",
]
KINDS: Final = {kind.__struct_config__.tag: kind for kind in (*COMMANDS, Pong)}
FIELDS: Final = sorted(
    {name for kind in COMMANDS for name in kind.__struct_fields__ if name != "id"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
big_text = st.integers(200, 20_000).map(lambda n: "x" * n)  # past a field's size
wrong = values | big_text | st.integers(-(2**63), -1) | st.just(2**53)
topics = st.sampled_from(["fuzz/1", "fuzz/+", "fuzz/#", "", "+", "a//b", "$x", "fuzz/é"])
positions = st.sampled_from(["e-1", "0-0", "garbage", "x-1.2", "-1"])
filters = st.fixed_dictionaries(
    {},
    optional={
        "level": st.sampled_from(["warn", "loud", "10"]),
        "contains": st.text(max_size=5),
        "regex": st.sampled_from(["a.*", "(a)\\1", "[", "x{99999}"]),
        "fields": st.dictionaries(st.text(max_size=4), scalars, max_size=2),
        "types": st.lists(st.text(max_size=4), max_size=2),
    },
)
groups = st.sampled_from(["work", "work", "g2", "", "bad name", "g" * 300])
WORK: Final = {"ack_wait": 1.0, "ordered": False}  # the group "work"'s settings
DELIVERY: Final = "<a delivery>"  # replaced by the id of a delivery the connection was given
deliveries = st.just(DELIVERY) | st.text(min_size=1, max_size=12)
# Values right for each field name of the commands (a name missing here is fuzzed with `wrong`).
RIGHT: Final[dict[str, st.SearchStrategy[Any]]] = {
    "token": st.text(min_size=1, max_size=20),
    "name": st.text(min_size=1, max_size=10),
    "version": st.text(min_size=1, max_size=10),
    "device": st.text(min_size=1, max_size=10),
    "session": st.text(min_size=1, max_size=20),
    "pattern": topics,
    "topic": topics,
    "since": positions,
    "filter": filters,
    "event": st.builds(lambda n: event(f"f{n}", data={"n": n}), st.integers(0, 5)),
    "exclude_self": st.sampled_from(["connection", "device"]),
    "limit": st.integers(0, 1000),
    "since_time": st.floats(0, 2e9),
    "watch": st.booleans(),
    "cursor": st.text(min_size=1, max_size=10),
    "group": groups,
    "settings": st.dictionaries(
        st.sampled_from(["ack_timeout", "max_attempts", "start", "dead_letter", "x"]),
        values,
        max_size=3,
    ),
    "member": st.text(min_size=1, max_size=8),
    "deliveries": st.lists(deliveries, min_size=1, max_size=3),
    "delivery": deliveries,
    "delay": st.floats(0, 1e9),
    "error": st.text(max_size=10),
    "reason": st.text(max_size=10),
    "state": st.dictionaries(st.text(max_size=5), values, max_size=3),
    "lamport": st.integers(0, 2**53),
    "patch": values,
    "if_version": st.integers(0, 100),
}


@st.composite
def near_command(draw: st.DrawFn, binary: bool) -> dict[str, Any]:
    """A command of any tag with its own fields: right (reaching the command's handling), or
    sloppy (a field left out, of the wrong type or size, or of another command)."""
    tag = draw(st.sampled_from(TAGS))
    kind = KINDS.get(tag)
    sloppy = draw(one_in(4))
    message: dict[str, Any] = {"type": tag}
    if kind is None:
        names = draw(st.lists(st.sampled_from(FIELDS), max_size=3))
    else:
        fields = msgspec.structs.fields(kind)
        names = [field.name for field in fields if field.required or draw(st.booleans())]
    for name in names:
        right = st.integers(10, 1000) if name == "id" else RIGHT.get(name, values)
        if sloppy and draw(one_in(6)):
            continue  # left out (required or not)
        message[name] = draw(mostly(right, wrong, 3) if sloppy else right)
    if sloppy and draw(one_in(6)):
        message[draw(st.sampled_from(FIELDS))] = draw(values)  # a field of another command
    if not binary:  # what JSON carries
        message = json.loads(json.dumps(message))
    return message


@st.composite
def ws_frames(draw: st.DrawFn, binary: bool) -> list[Any]:
    """Frames of near-valid commands; one time in five, a junk frame among them."""
    frames: list[Any] = draw(
        st.lists(st.lists(near_command(binary), min_size=1, max_size=6), min_size=1, max_size=4)
    )
    if draw(one_in(5)):
        junk = draw(st.binary(max_size=64) | st.text(max_size=64))
        frames.insert(draw(st.integers(0, len(frames))), junk)
    return frames


def ws_encode(frame: Any, binary: bool) -> str | bytes:
    if not isinstance(frame, list):
        return frame  # type: ignore[no-any-return]  # junk as it is
    if binary:
        return msgspec.msgpack.encode(frame)
    return "\n".join(json.dumps(message) for message in frame)


def decoded(data: str | bytes) -> list[dict[str, Any]]:
    if isinstance(data, bytes):  # MessagePack frames are binary, JSON ones text
        return list(msgspec.msgpack.decode(data))
    # "\n" only: `splitlines` also splits at U+2028, U+0085, ... which JSON leaves unescaped
    return [json.loads(line) for line in data.split("\n")]


def with_deliveries(frame: Any, given: list[str]) -> Any:
    """`frame` with each DELIVERY replaced by one of the `given` delivery ids (if any)."""
    if not isinstance(frame, list) or not given:
        return frame
    text = json.dumps(frame)
    for id_ in given:
        text = text.replace(json.dumps(DELIVERY), json.dumps(id_), 1)
    return json.loads(text.replace(json.dumps(DELIVERY), json.dumps(given[0])))


async def ws_exchange(port: int, subprotocol: str, frames: list[Any]) -> int | None:
    """Connect, subscribe to fuzz/# and join group "work", send `frames` (settling the
    deliveries it gave, with DELIVERY); the close code (None: still open).

    Every error carries an ErrorCode, every `disconnect` a CloseCode.
    """
    binary = subprotocol == MSGPACK
    url = f"ws://127.0.0.1:{port}/v1/ws"
    async with connect(url, subprotocols=[subprotocol], max_size=None) as ws:  # type: ignore[list-item]
        await ws.send(ws_encode([{"type": "connect", "id": 1}], binary))
        await asyncio.wait_for(ws.recv(), 5)  # its reply
        setup = [
            {"type": "subscribe", "id": 2, "pattern": "fuzz/#"},
            {"type": "group_join", "id": 3, "group": "work", "pattern": "fuzz/#", "settings": WORK},
        ]
        await ws.send(ws_encode(setup, binary))
        given: list[str] = []
        joined = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5) as waiting:  # the join's reply, then a delivery
                while not given:
                    for message in decoded(await ws.recv()):
                        if message.get("id") == 3:
                            assert message["type"] == "reply", message
                            joined = True
                            waiting.reschedule(asyncio.get_running_loop().time() + 0.3)
                        elif message.get("type") == "group_event":
                            given.append(message["delivery"])
        assert joined
        seen(f"deliveries given: {min(len(given), 2)}")
        sentinel = 2**53 - 1
        try:
            for frame in frames:
                await ws.send(ws_encode(with_deliveries(frame, given), binary))
            await ws.send(ws_encode([{"type": "ping", "id": sentinel}], binary))
            async with asyncio.timeout(5):
                while True:
                    for message in decoded(await ws.recv()):
                        if message.get("type") == "error":
                            seen(f"error {message['code']}")
                            assert message["code"] in ERROR_CODES, message
                            assert message["code"] != ErrorCode.INTERNAL_ERROR, message
                        if message.get("type") == "disconnect":
                            seen(f"disconnect {message['code']} {message.get('reason', '')[:50]}")
                            assert message["code"] in CLOSE_CODES, message
                        if message.get("type") == "reply" and message.get("id") == sentinel:
                            return None  # every command before it was read
        except ConnectionClosed as closed:
            return -1 if closed.rcvd is None else closed.rcvd.code


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
def test_websocket_every_command_tag_near_valid(live: Live, subprotocol: str) -> None:
    binary = subprotocol == MSGPACK

    @settings(FUZZ, max_examples=400)
    @given(frames=ws_frames(binary))
    def fuzz(frames: list[Any]) -> None:
        # An event for the group "work": ack / nack / extend / term meet a delivery.
        live.run(live.server.node.bus.publish("acme/fuzz/1", event(data={"fuzz": True})))
        code = asyncio.run(ws_exchange(live.port, subprotocol, frames))
        # -1: no close frame read — aiohttp drops the TCP connection right after its close
        # frame when the close comes from another task, and a client still sending gets a
        # reset that discards it (aio-libs/aiohttp#3448; docs/protocol.md §11)
        assert code is None or code == -1 or code in CLOSE_CODES, code

    with live.clean():
        fuzz()
        asyncio.run(intact(live))


# -- 2. the Yjs socket --------------------------------------------------------------------------


def varuint(value: int) -> bytes:
    out = bytearray()
    write_varuint(out, value)
    return bytes(out)


def varbytes(data: bytes) -> bytes:
    return varuint(len(data)) + data


def truncated(data: bytes, cut: int) -> bytes:
    return data[: max(0, len(data) - cut)]


@st.composite
def real_update(draw: st.DrawFn) -> bytes:
    """A valid update to the Text "fuzz" (never "text": what was kept stays as it was)."""
    doc: Doc[Any] = Doc()
    text = doc.get("fuzz", type=Text)
    text += draw(st.text(min_size=1, max_size=8))
    return doc.get_update()


awareness_json = st.sampled_from(["null", "{}", '{"user":"é"}', "{", "[1,", '"x', "\x00", "{}}"])
raw_awareness = st.builds(
    lambda entries: varuint(len(entries)) + b"".join(entries),
    st.lists(
        st.builds(
            lambda client, clock, state: varuint(client) + varuint(clock) + varbytes(state),
            st.integers(0, 2**53 - 1),
            st.integers(0, 2**53 - 1) | st.just(2**53 - 1),
            awareness_json.map(str.encode) | st.binary(max_size=12),
        ),
        max_size=3,
    ),
)
yjs_messages = st.one_of(
    st.binary(max_size=64),  # junk
    st.binary(max_size=40).map(encode_sync_step1),  # a garbage state vector
    st.binary(max_size=40).map(encode_sync_step2),  # a garbage update
    st.binary(max_size=40).map(encode_sync_update),
    real_update().map(encode_sync_update),
    real_update().map(encode_sync_step2),
    st.builds(truncated, real_update().map(encode_sync_update), st.integers(1, 6)),
    st.builds(
        lambda entries: encode_awareness(entries),
        st.lists(
            st.builds(
                AwarenessEntry, st.integers(0, 2**32), st.integers(0, 2**53 - 1), awareness_json
            ),
            max_size=3,
        ),
    ),
    raw_awareness.map(lambda body: b"\x01" + varbytes(body)),
    raw_awareness.map(lambda body: b"\x01" + varuint(len(body) + 5) + body),  # lying length
    st.text(max_size=20).map(encode_auth_token),
    st.just(encode_query_awareness()),
    st.builds(lambda n: b"\x00" * n + b"\x80" * 9, st.integers(0, 2)),  # truncated varuints
    st.just(b"\xff" * 10),  # a varuint past 2**53
    st.builds(lambda kind, rest: varuint(kind) + rest, st.integers(0, 300), st.binary(max_size=8)),
)


async def yjs_exchange(
    port: int, room: str, messages: list[bytes], text: bool, join: bool
) -> int | None:
    """Send `messages` (after a valid sync step 1 if `join`); the close code, or None if the
    socket is still open (and answers)."""
    url = f"ws://127.0.0.1:{port}/v1/yjs/{room}"
    async with connect(url, max_size=None) as ws:
        try:
            if join:  # no credentials: the socket joins its room at the first message
                await ws.send(encode_sync_step1(b"\x00"))
                await ws.recv()  # sync step 1: joined
            for message in messages:
                await ws.send(message)
            if text:
                await ws.send("not binary")
            await ws.send(encode_query_awareness())  # answered if the socket is still fine
            async with asyncio.timeout(5):
                while True:
                    data = await ws.recv()
                    if isinstance(data, bytes) and data[:1] == b"\x01":
                        return None
        except ConnectionClosed as closed:
            return -1 if closed.rcvd is None else closed.rcvd.code


def test_yjs_socket_junk_and_near_valid_messages(live: Live) -> None:
    @settings(FUZZ, max_examples=400)
    @given(
        messages=st.lists(yjs_messages, min_size=1, max_size=4),
        room=st.sampled_from(["keep", "fuzz"]),
        text=one_in(10),
        join=one_in(5).map(lambda no: not no),
    )
    def fuzz(messages: list[bytes], room: str, text: bool, join: bool) -> None:
        code = asyncio.run(yjs_exchange(live.port, room, messages, text, join))
        seen(f"yjs closed {code}")
        assert code is None or code == -1 or code in YJS_CLOSE_CODES, code  # -1: as above
        assert code != YjsCloseCode.SERVER_ERROR, code
        if room == "keep":
            assert asyncio.run(yjs_text(live.port, "keep")) == KEPT_TEXT

    with live.clean():
        fuzz()
        asyncio.run(intact(live))


# -- 3. gRPC ----------------------------------------------------------------------------------

SERVICE: Final = "/hybridbus.v1.Bus/"
UNARY: Final = ("Publish", "History")
# What a refusal may say (docs/grpc.md); never UNKNOWN or INTERNAL, the marks of a crash.
STATUSES: Final = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
}

grpc_text = st.sampled_from(["acme/fuzz/1", "acme/fuzz/#", "fuzz", "", "acme//x", "acme/$"]) | (
    st.text(max_size=20)
)
cloudevents = st.builds(
    lambda id_, source, type_, spec, data: {
        "id": id_,
        "source": source,
        "type": type_,
        "spec_version": spec,
        "text_data": data,
    },
    st.text(max_size=8),
    st.sampled_from(["/s", ""]) | st.text(max_size=6),
    st.sampled_from(["t", ""]),
    st.sampled_from(["1.0", "0.3", ""]),
    st.text(max_size=10),
)
grpc_filters = st.builds(
    lambda level, regex, contains: bus_pb2.Filter(level=level, regex=regex, contains=contains),
    st.sampled_from(["", "warn", "loud"]),
    st.sampled_from(["", "a.*", "(a)\\1", "["]),
    st.text(max_size=4),
)


def publish_request(topic: str, fields: dict[str, Any]) -> bytes:
    request = bus_pb2.PublishRequest(topic=topic)
    event_message = request.event
    for name, value in fields.items():
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            setattr(event_message, name, value)
    return bytes(request.SerializeToString())


grpc_requests: dict[str, st.SearchStrategy[bytes]] = {
    "Publish": st.builds(publish_request, grpc_text, cloudevents),
    "Ingest": st.builds(publish_request, grpc_text, cloudevents),
    "History": st.builds(
        lambda pattern, since, limit: bus_pb2.HistoryRequest(
            pattern=pattern, since=since, limit=limit
        ).SerializeToString(),
        grpc_text,
        st.sampled_from(["", "e-1", "garbage", "x-1.2"]),
        st.integers(0, 2**31 - 1),
    ),
    "Subscribe": st.builds(
        lambda pattern, since, spec: bus_pb2.SubscribeRequest(
            pattern=pattern, since=since, filter=spec
        ).SerializeToString(),
        grpc_text,
        st.sampled_from(["", "e-1", "garbage", "x-1.2"]),
        grpc_filters,
    ),
}


def grpc_bodies(method: str) -> st.SearchStrategy[bytes]:
    junk = st.binary(max_size=64)
    # Bytes that almost parse: a valid message with bytes flipped or cut.
    mangled = st.builds(
        lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
        grpc_requests[method],
        st.integers(0, 40),
        st.integers(0, 255),
    )
    return st.one_of(junk, mangled, grpc_requests[method], grpc_requests[method])


def checked(exc: grpc.aio.AioRpcError) -> str:
    """A refusal: a documented status and a documented code in `hybridbus-code`; both."""
    assert exc.code() in STATUSES, (exc.code(), exc.details())
    trailers = dict(exc.trailing_metadata() or ())
    assert "hybridbus-code" in trailers, (exc.code(), exc.details(), trailers)
    assert int(trailers["hybridbus-code"]) in ERROR_CODES, trailers
    return f"{exc.code().name} {trailers['hybridbus-code']}"


async def grpc_exchange(target: str, method: str, bodies: list[bytes]) -> str:
    """Call `method` with `bodies` (a request, or Ingest's stream); how the call ended."""
    path = SERVICE + method
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            if method in UNARY:
                await channel.unary_unary(path)(bodies[0], timeout=5)
            elif method == "Ingest":
                call = channel.stream_unary(path)(timeout=5)
                # Written one by one: the server may end the call at any of them. Writing
                # more then fails here, at times as this client's own INTERNAL (not the
                # server's status: grpc's core could not send).
                try:
                    for body in bodies:
                        await call.write(body)
                    await call.done_writing()
                except asyncio.InvalidStateError:
                    pass
                except grpc.aio.AioRpcError as exc:
                    if exc.details() != "Internal error from Core":
                        raise
                    return "cut short"
                await call
            else:
                call = channel.unary_stream(path)(bodies[0], timeout=5)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.3):  # `subscribed`, then maybe nothing more
                        async for _ in call:
                            pass
                call.cancel()
        except grpc.aio.AioRpcError as exc:
            return checked(exc)
    return "OK"


async def grpc_served(target: str) -> None:
    """A fresh, valid gRPC client is served: History of acme/keep holds what was kept."""
    async with grpc.aio.insecure_channel(target) as channel:
        request = bus_pb2.HistoryRequest(pattern="acme/keep", limit=100)
        call = channel.unary_unary(
            SERVICE + "History",
            request_serializer=bus_pb2.HistoryRequest.SerializeToString,
            response_deserializer=bus_pb2.HistoryResponse.FromString,
        )
        answer = await call(request, timeout=5)
        assert [item.event.id for item in answer.events][: len(KEPT)] == KEPT


@pytest.mark.parametrize("method", ["Publish", "Ingest", "Subscribe", "History"])
def test_grpc_raw_and_wrong_messages_on_each_method(live: Live, method: str) -> None:
    @settings(FUZZ, max_examples=200)
    @given(bodies=st.lists(grpc_bodies(method), min_size=1, max_size=3))
    def fuzz(bodies: list[bytes]) -> None:
        # On the server's loop: grpc.aio's client wants one loop, not one per example.
        seen(live.run(grpc_exchange(live.grpc_target, method, bodies)))

    with live.clean():
        fuzz()
        live.run(grpc_served(live.grpc_target))
        asyncio.run(intact(live))


# -- 4. HTTP ----------------------------------------------------------------------------------

WRITES: Final = ("post", "put", "patch", "delete")
ROUTES: Final = sorted(
    (method.upper(), path)
    for path, item in openapi.document()["paths"].items()
    for method in item
    if method in WRITES
)
# Path parameters (never a kept resource: a DELETE of one would lose it by right): a topic
# takes the rest of the path, slashes included; the others are one segment each, else the
# request would not be for a route of the document.
segment_text = st.characters(codec="ascii", exclude_characters="/?#%{}")  # aiohttp: [^{}/]+
segments = st.sampled_from(["fuzz", "g1", "x", "acme", "a b", "é"]) | st.text(
    alphabet=segment_text, min_size=1, max_size=8
).filter(lambda text: text.strip(".") != "")  # "." and ".." would leave the route
topic_values = st.sampled_from(["acme/fuzz/1", "acme//x", "acme/fuzz/+", "acme/$x", "fuzz"]) | (
    segments.map(lambda text: f"acme/fuzz/{text}")
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
near_bodies = st.fixed_dictionaries(
    {},
    optional={
        "pattern": topic_values,
        "topic": topic_values,
        "event": st.just(event("h")) | json_values,
        "events": st.lists(st.just(event()) | json_values, max_size=3),
        "url": st.sampled_from(["http://127.0.0.1:1/x", "ftp://x", "not a url"]),
        "max": st.integers(-5, 2**40),
        "wait": st.floats(-1, 1e9) | json_values,
        "deliveries": st.lists(st.text(max_size=6), max_size=3),
        "schema": json_values,
        "specversion": st.sampled_from(["1.0", "2"]),
        "id": st.text(max_size=4),
        "source": st.text(max_size=4),
        "type": st.text(max_size=4),
        "data": json_values,
    },
).map(json.dumps)
bodies = st.one_of(
    near_bodies,
    json_values.map(json.dumps),
    st.binary(max_size=64),
    st.integers(1, 200).map(lambda depth: "[" * depth * 50 + "]" * depth * 50),  # deep nesting
    st.sampled_from(["1e999999", "-1e999999", str(2**4000), '{"a":1e400}', "NaN", "{", ""]),
    st.lists(json_values.map(json.dumps), min_size=1, max_size=3).map("\n".join),  # NDJSON
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/x-ndjson",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=latin-1",
    ]
)


DOCUMENT: Final = openapi.document()


def resolved(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def near_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of `schema` (its properties, its types), a wrong value one time in five."""
    return mostly(of_schema(resolved(schema), depth), json_values)


def of_schema(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    choices = schema.get("oneOf") or schema.get("anyOf")
    if choices:
        return st.one_of([near_schema(choice, depth + 1) for choice in choices])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if depth > 3:
        return json_values
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = [name for name in schema.get("required", []) if name in properties]
        return st.fixed_dictionaries(
            {name: near_schema(properties[name], depth + 1) for name in required},
            optional={
                name: near_schema(value, depth + 1)
                for name, value in properties.items()
                if name not in required
            },
        )
    if kind == "array":
        return st.lists(near_schema(schema.get("items", {}), depth + 1), max_size=3)
    if kind == "string":
        return st.sampled_from(["acme/fuzz/1", "fuzz/#", "0-0", "http://127.0.0.1:9/x"]) | (
            st.text(max_size=12)
        )
    if kind == "integer":
        return st.integers(-5, 2**40)
    if kind == "number":
        return st.floats(-1, 1e12)
    if kind == "boolean":
        return st.booleans()
    return json_values


def documented_bodies(method: str, template: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(content type, body) as the document says the route takes, values near its schema."""
    body = DOCUMENT["paths"][template][method.lower()].get("requestBody")
    if body is None:
        return st.just(("application/json", b""))
    return st.one_of(
        [
            st.tuples(st.just(kind), near_schema(content.get("schema", {})).map(as_body))
            for kind, content in body["content"].items()
        ]
    )


def as_body(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str | None, bytes]:
    """A route of the document with its parameters filled in, a content type and a body:
    as documented (values near its schema) two times in three, else anything."""
    method, template = draw(st.sampled_from(ROUTES))

    def value(match: re.Match[str]) -> str:
        if match.group(1) == "topic":
            return quote(draw(topic_values), safe="/")
        return quote(draw(segments), safe="")

    path = re.sub(r"\{(\w+)\}", value, template)
    if template == "/v1/webhooks/{tenant}/{endpoint}" and draw(st.booleans()):
        path = "/v1/webhooks/acme/inbound"  # the endpoint `keep` made: its signature check
    content_type: str | None
    if not draw(one_in(3)):
        content_type, body = draw(documented_bodies(method, template))
    else:
        content_type, anything = draw(content_types), draw(bodies)
        body = anything.encode() if isinstance(anything, str) else anything
    return method, path, content_type, body


def http_exchange(
    client: httpx.Client,
    method: str,
    path: str,
    content_type: str | None,
    body: bytes,
    admin: bool,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if admin:
        headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    response = client.request(method, path, content=body, headers=headers)
    seen(f"http {method} {path.split('/')[2]} {response.status_code}")
    assert response.status_code < 500, (method, path, response.status_code, response.text)
    if 400 <= response.status_code < 500:
        kind = response.headers.get("content-type", "")
        assert "json" in kind, (method, path, response.status_code, kind, response.text)
        said = response.json()
        assert said.get("code") in ERROR_CODES, (method, path, response.status_code, said)


def test_http_bodies_to_every_write_route(live: Live) -> None:
    @settings(FUZZ, max_examples=1500)
    @given(request=requests(), admin=st.booleans())
    def fuzz(request: tuple[str, str, str | None, bytes], admin: bool) -> None:
        http_exchange(client, *request, admin)

    with live.clean(), httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10) as client:
        fuzz()
        asyncio.run(intact(live))
