"""Fuzz: whatever a peer sends, neither session raises, and every code it uses is documented.

Three kinds of input per side: junk (arbitrary bytes and text), well-formed
values that are not messages, and objects shaped almost like messages (real
tags and field names, values sometimes right and sometimes not), which reach
the per-command paths. `hypothesis.event` records what happened; run with
`--hypothesis-show-statistics` to see that each path is reached.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.proto.strategies import commands, server_messages

from hybridbus.errors import ErrorCode
from hybridbus.proto.client import ClientSession, Failed
from hybridbus.proto.codec import JSON, MSGPACK, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    Command,
    Connect,
    ConnectResult,
    Disconnect,
    ErrorReply,
    ServerMessage,
    SubscribeResult,
)
from hybridbus.proto.session import ServerSession, SessionConfig, State

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
CONFIG = SessionConfig(max_frame_size=64 * 1024, max_in_flight=20, max_subscriptions=5)
COMMAND_TYPES = get_args(Command)
COMMAND_TAGS = [*(t.__struct_config__.tag for t in COMMAND_TYPES), "pong", "reply", "nonsense"]
SERVER_TAGS = [*(t.__struct_config__.tag for t in get_args(ServerMessage)), "pong", "nonsense"]
CLOSE_CODES = set(CloseCode)
ERROR_CODES = set(ErrorCode)


# Strategies ---------------------------------------------------------------------------------


def value_strategy(low: int, high: int) -> st.SearchStrategy[Any]:
    """Any JSON / MessagePack value; integers in [low, high] (MessagePack's are 64-bit)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(low, high)
        | st.floats(allow_nan=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` four times in five, else `bad`."""
    return st.one_of(good, good, good, good, bad)


def near_commands(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    event_dicts = st.fixed_dictionaries(
        {"specversion": st.just("1.0"), "id": st.text(max_size=3), "source": st.just("/s")},
        optional={"type": st.just("t"), "data": values, "colour": values},
    )
    return st.fixed_dictionaries(
        {"type": st.sampled_from(COMMAND_TAGS), "id": mostly(st.integers(1, 30), values)},
        optional={
            "pattern": st.sampled_from(["a/#", "b", "c/+"]) | values,
            "topic": st.sampled_from(["a/b", "b"]) | values,
            "since": st.sampled_from(["e-1", "garbage"]) | values,
            "limit": st.integers(-5, 2000),
            "watch": st.booleans(),
            "exclude_self": st.sampled_from(["connection", "device", "nobody"]),
            "event": event_dicts | values,
            "token": st.text(max_size=8),
            "unknown": values,
        },
    )


def near_server_messages(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    event_dicts = st.fixed_dictionaries(
        {"specversion": st.just("1.0"), "id": st.just("1"), "source": st.just("/s")},
        optional={"type": st.just("t"), "data": values},
    )
    results = st.fixed_dictionaries(
        {},
        optional={
            "epoch": st.just("e"),
            "position": st.sampled_from(["e-1", "e-1.2", "nope"]),
            "recovered": st.booleans(),
            "client": st.just("c"),
            "version": st.just("v"),
            "events": st.lists(values, max_size=2),
            "more": st.booleans(),
            "exact": st.booleans(),
        },
    )
    return st.fixed_dictionaries(
        {"type": st.sampled_from(SERVER_TAGS)},
        optional={
            "id": mostly(st.sampled_from([3, 4, 5]), values),
            "result": mostly(results, values),
            "code": st.integers(1000, 4999) | values,
            "message": st.text(max_size=8),
            "retriable": st.booleans(),
            "pattern": st.sampled_from(["a/#", "b"]),
            "topic": st.just("a/b"),
            "offset": st.integers(0, 9),
            "shard": st.integers(-1, 2),
            "position": st.integers(-1, 9),
            "event": mostly(event_dicts, values),
            "reason": st.text(max_size=8),
            "reconnect": st.booleans(),
            "info": st.fixed_dictionaries({"client": st.text(max_size=4)}) | values,
        },
    )


def json_frame(items: list[Any]) -> bytes:
    return b"\n".join(msgspec.json.encode(item) for item in items)


json_values = value_strategy(-(2**70), 2**70)
msgpack_values = value_strategy(-(2**63), 2**64 - 1)
junk = st.binary(max_size=200) | st.text(max_size=200)
json_other = st.lists(json_values, min_size=1, max_size=3).map(json_frame)
msgpack_other = msgpack_values.map(msgspec.msgpack.encode)
json_commands = st.lists(near_commands(json_values), min_size=1, max_size=3).map(json_frame)
msgpack_commands = st.lists(near_commands(msgpack_values), max_size=3).map(msgspec.msgpack.encode)
json_server = st.lists(near_server_messages(json_values), min_size=1, max_size=3).map(json_frame)
msgpack_server = st.lists(near_server_messages(msgpack_values), max_size=3).map(
    msgspec.msgpack.encode
)


# The server session ---------------------------------------------------------------------------


def feed_server(codec: WireCodec, frames: list[bytes | str], connect: bool) -> None:
    session = ServerSession(codec, CONFIG, now=0.0)
    if connect:
        session.receive_data(codec.frame([codec.encode(Connect(id=1))]), 0.0)
        session.accept(ConnectResult(client="c", version="v"))
    handed_out: list[Any] = []
    for n, data in enumerate(frames):
        batch = session.receive_data(data, float(n))
        handed_out.extend(batch)
        # Answer like a server, so that ids leave the in-flight set.
        for command in batch:
            if isinstance(command, Connect):
                session.accept(ConnectResult(client="c", version="v"))
            else:
                session.error(command.id, ErrorCode.INVALID_INPUT, "fuzzed")
        session.tick(float(n) * 20)

    assert all(isinstance(c, COMMAND_TYPES) for c in handed_out)
    if handed_out:
        event("server: handed out commands")
    if session.closed:
        assert session.close_code in CLOSE_CODES
        event(f"server: closed {session.close_code}")
    while (out := session.data_to_send()) is not None:
        for message in codec.decode_server(out):
            if isinstance(message, ErrorReply):
                assert message.code in ERROR_CODES
                event(f"server: error {message.code}")
            elif isinstance(message, Disconnect):
                assert message.code in CLOSE_CODES
                assert message.code == session.close_code


@FUZZ
@given(frames=st.lists(junk | json_other | json_commands, max_size=3), connect=st.booleans())
def test_server_session_survives_anything_json(frames: list[bytes | str], connect: bool) -> None:
    feed_server(JSON, frames, connect)


@FUZZ
@given(frames=st.lists(junk | msgpack_other | msgpack_commands, max_size=3), connect=st.booleans())
def test_server_session_survives_anything_msgpack(frames: list[bytes | str], connect: bool) -> None:
    feed_server(MSGPACK, frames, connect)


@FUZZ
@given(data=st.data())
def test_server_session_survives_near_commands(data: st.DataObject) -> None:
    codec = data.draw(st.sampled_from([JSON, MSGPACK]))
    near = json_commands if codec is JSON else msgpack_commands
    feed_server(codec, data.draw(st.lists(near, min_size=1, max_size=4)), connect=True)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), connect=st.booleans())
def test_server_session_survives_valid_commands_in_any_order(
    data: st.DataObject, connect: bool
) -> None:
    codec = data.draw(st.sampled_from([JSON, MSGPACK]))
    messages = data.draw(st.lists(commands(codec), max_size=8))
    feed_server(codec, [codec.frame([codec.encode(m)]) for m in messages], connect)


# The client session ---------------------------------------------------------------------------


def feed_client(codec: WireCodec, frames: list[bytes | str]) -> None:
    client = ClientSession(codec, now=0.0)
    client.connect()
    reply = codec.encode_reply(1, ConnectResult(client="c", version="v", ping=5.0))
    client.receive_data(codec.frame([reply]), 0.0)
    client.subscribe("a/#", since="e-1")  # id 2, answered: pushes for "a/#" are taken
    reply = codec.encode_reply(2, SubscribeResult(epoch="e", position="e-1", recovered=True))
    client.receive_data(codec.frame([reply]), 0.0)
    client.subscribe("b")  # 3
    client.history("a/#")  # 4
    client.ping()  # 5
    client.data_to_send()
    assert client.state is State.CONNECTED
    told: Disconnect | None = None
    for n, data in enumerate(frames):
        for item in client.receive_data(data, float(n)):
            event(f"client: handed out {type(item).__name__}")
            if isinstance(item, Failed):
                assert isinstance(item.command, COMMAND_TYPES)
            elif isinstance(item, Disconnect):
                told = item
        client.tick(float(n) * 5)
    if told is not None:
        assert client.close_code == told.code  # the server's code, whatever it is
    elif client.closed:
        assert client.close_code in (int(CloseCode.BAD_PROTOCOL), int(CloseCode.NO_PING))
        event(f"client: closed {client.close_code}")
    while (out := client.data_to_send()) is not None:  # pongs, well-formed
        codec.decode_commands(out)


@FUZZ
@given(frames=st.lists(junk | json_other | json_server, max_size=3))
def test_client_session_survives_anything_json(frames: list[bytes | str]) -> None:
    feed_client(JSON, frames)


@FUZZ
@given(frames=st.lists(junk | msgpack_other | msgpack_server, max_size=3))
def test_client_session_survives_anything_msgpack(frames: list[bytes | str]) -> None:
    feed_client(MSGPACK, frames)


@FUZZ
@given(data=st.data())
def test_client_session_survives_near_server_messages(data: st.DataObject) -> None:
    codec = data.draw(st.sampled_from([JSON, MSGPACK]))
    near = json_server if codec is JSON else msgpack_server
    feed_client(codec, data.draw(st.lists(near, min_size=1, max_size=4)))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_client_session_survives_valid_server_messages_out_of_the_blue(data: st.DataObject) -> None:
    codec = data.draw(st.sampled_from([JSON, MSGPACK]))
    messages = data.draw(st.lists(server_messages(codec), max_size=8))
    feed_client(codec, [codec.frame([codec.encode(m)]) for m in messages])
