"""The two subprotocols: round trips of every message, framing, errors, and encode-once pushes."""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.proto.strategies import commands, events, results, server_messages

from hybridbus.core.codecs import encode_json, encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.errors import ErrorCode, InvalidEvent, ProtocolError
from hybridbus.proto.codec import (
    JSON,
    JSON_SUBPROTOCOL,
    MSGPACK,
    MSGPACK_SUBPROTOCOL,
    SUBPROTOCOLS,
    WireCodec,
    codec_for,
)
from hybridbus.proto.frames import (
    RESULT_TYPES,
    EventPush,
    GroupEventPush,
    Ping,
    Pong,
    Publish,
    Reply,
    ServerPing,
    Subscribe,
    SubscribeResult,
)

CODECS = [JSON, MSGPACK]
codecs = pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.subprotocol)
EVENT = Event(id="e-1", source="/editor", type="com.acme.edit", data={"op": "insert"})


def delivery(position: int = 7, topic: str = "acme/docs/42") -> Delivery:
    return Delivery(topic, offset=3, shard=0, position=position, time=0.0, event=EVENT)


# Round trips ----------------------------------------------------------------------


@codecs
@given(data=st.data())
def test_every_command_round_trips(codec: WireCodec, data: st.DataObject) -> None:
    message = data.draw(commands(codec))
    encoded = codec.encode(message)
    assert codec.decode_commands(codec.frame([encoded])) == [message]
    assert codec.encode(codec.decode_command(encoded)) == encoded


@codecs
@given(data=st.data())
def test_every_server_message_round_trips(codec: WireCodec, data: st.DataObject) -> None:
    message = data.draw(server_messages(codec))
    encoded = codec.encode(message)
    assert codec.decode_server(codec.frame([encoded])) == [message]
    assert codec.encode(codec.decode_server_message(encoded)) == encoded


@codecs
@given(data=st.data(), id=st.integers(1, 2**53 - 1))
def test_every_result_round_trips_through_a_reply(
    codec: WireCodec, data: st.DataObject, id: int
) -> None:
    result = data.draw(results(codec))
    encoded = codec.encode_reply(id, result)
    reply = codec.decode_server_message(encoded)
    assert isinstance(reply, Reply)
    assert reply.id == id
    assert codec.decode_result(reply.result, type(result)) == result
    # encode_reply is a shortcut for encoding a Reply with the result embedded.
    assert codec.encode(reply) == encoded


def test_every_command_has_a_result_type() -> None:
    tags = {cls.__struct_config__.tag for cls in RESULT_TYPES}
    assert tags == {"connect", "subscribe", "unsubscribe", "publish", "history"} | {
        "presence",
        "ping",
        "refresh",
    } | {"group_join", "group_leave", "ack", "nack", "extend", "term"} | {
        "awareness_set",
        "awareness_watch",
        "awareness_unwatch",
        "state_subscribe",
        "state_unsubscribe",
        "state_patch",
    }


@codecs
@given(event=events)
def test_events_round_trip_in_the_subprotocols_encoding(codec: WireCodec, event: Event) -> None:
    encoded = codec.encode_event(event)
    assert encoded == (encode_msgpack(event) if codec.binary else encode_json(event))
    assert codec.decode_event(encoded) == event
    assert codec.decode_event(msgspec.Raw(encoded)) == event


# Framing ------------------------------------------------------------------------------


@codecs
@settings(max_examples=50)
@given(data=st.data())
def test_coalesced_frame_decodes_to_the_same_messages(
    codec: WireCodec, data: st.DataObject
) -> None:
    messages = data.draw(st.lists(server_messages(codec), min_size=1, max_size=12))
    frame = codec.frame([codec.encode(m) for m in messages])
    assert isinstance(frame, bytes)
    assert codec.decode_server(frame) == messages


@given(count=st.integers(1, 40))
def test_json_frame_is_one_object_per_line(count: int) -> None:
    frame = JSON.frame([JSON.encode(Ping(id=i)) for i in range(1, count + 1)])
    lines = frame.decode().split("\n")
    assert len(lines) == count
    assert [json.loads(line) for line in lines] == [
        {"type": "ping", "id": i} for i in range(1, count + 1)
    ]


@pytest.mark.parametrize(
    ("count", "header"),
    [
        (0, b"\x90"),
        (1, b"\x91"),
        (15, b"\x9f"),
        (16, b"\xdc\x00\x10"),
        (65536, b"\xdd\x00\x01\x00\x00"),
    ],
)
def test_msgpack_frame_is_one_array(count: int, header: bytes) -> None:
    pong = MSGPACK.encode(Pong())
    frame = MSGPACK.frame([pong] * count)
    assert frame == header + pong * count
    assert msgspec.msgpack.decode(frame) == [{"type": "pong"}] * count
    assert MSGPACK.decode_commands(frame) == [Pong()] * count


def test_json_frames_skip_blank_lines_and_take_text_or_bytes() -> None:
    text = '\n{"type":"ping","id":1}\r\n\n  \n{"type":"pong"}\n'
    expected = [Ping(id=1), Pong()]
    assert JSON.decode_commands(text) == expected
    assert JSON.decode_commands(text.encode()) == expected
    assert JSON.decode_commands(memoryview(text.encode())) == expected
    assert JSON.decode_commands("") == []


def test_the_wire_shape_of_a_few_messages() -> None:
    # The exact bytes docs/protocol.md shows.
    assert JSON.encode(Subscribe(id=2, pattern="docs/+", since="e1-0")) == (
        b'{"type":"subscribe","id":2,"pattern":"docs/+","since":"e1-0"}'
    )
    assert JSON.encode(ServerPing()) == b'{"type":"ping"}'
    assert MSGPACK.frame([MSGPACK.encode(Ping(id=1))]) == (b"\x91\x82\xa4type\xa4ping\xa2id\x01")


def test_codec_for_knows_both_subprotocols() -> None:
    assert SUBPROTOCOLS == (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)
    assert codec_for("hybridbus.v1.json") is JSON
    assert codec_for("hybridbus.v1.msgpack") is MSGPACK
    assert codec_for("hybridbus.v2.json") is None
    assert codec_for(None) is None
    assert (JSON.binary, MSGPACK.binary) == (False, True)


# Pushes: encode the event once per delivery ---------------------------------------------


@codecs
@given(
    pattern=st.text(min_size=1, max_size=30),
    topic=st.text(min_size=1, max_size=30),
    numbers=st.tuples(*[st.integers(0, 2**63 - 1)] * 3),
    event=events,
    as_raw=st.booleans(),
)
def test_encode_push_is_exactly_encode_of_the_push_message(
    codec: WireCodec,
    pattern: str,
    topic: str,
    numbers: tuple[int, int, int],
    event: Event,
    as_raw: bool,
) -> None:
    offset, shard, position = numbers
    event_bytes = codec.encode_event(event)
    d = Delivery("abs/" + topic, offset, shard, position, 0.0, event)
    shared = msgspec.Raw(event_bytes) if as_raw else event_bytes
    assert codec.encode_push(pattern, d, shared, topic=topic) == codec.encode(
        EventPush(
            pattern=pattern,
            topic=topic,
            offset=offset,
            shard=shard,
            position=position,
            event=msgspec.Raw(event_bytes),
        )
    )


@codecs
@given(
    texts=st.tuples(*[st.text(max_size=30)] * 4),
    numbers=st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
    event=events,
)
def test_encode_group_push_is_exactly_encode_of_the_group_push_message(
    codec: WireCodec, texts: tuple[str, str, str, str], numbers: tuple[int, int], event: Event
) -> None:
    group, delivery_id, dedupe, topic = texts
    attempt, offset = numbers
    event_bytes = codec.encode_event(event)
    encoded = codec.encode_group_push(
        group, delivery_id, attempt, dedupe, topic, offset, event_bytes
    )
    message = GroupEventPush(
        group=group,
        delivery=delivery_id,
        attempt=attempt,
        dedupe=dedupe,
        topic=topic,
        offset=offset,
        event=msgspec.Raw(event_bytes),
    )
    assert encoded == codec.encode(message)
    # The event itself (a backlog's push, its encoding shared with nobody): the same bytes.
    assert codec.encode_group_push(group, delivery_id, attempt, dedupe, topic, offset, event) == (
        encoded
    )
    decoded = codec.decode_server_message(encoded)
    assert isinstance(decoded, GroupEventPush)
    assert codec.decode_event(decoded.event) == event


@codecs
def test_a_group_push_of_an_event_with_no_encoding_is_refused(codec: WireCodec) -> None:
    event = Event(id="1", source="/s", type="t", data={"x": object()})
    with pytest.raises(InvalidEvent):
        codec.encode_group_push("g", "e-0.1.1", 1, "k", "t", 1, event)


@codecs
@given(
    pattern=st.text(min_size=1, max_size=30),
    items=st.lists(
        st.tuples(
            st.sampled_from(["docs/1", "docs/ü", 'do"cs/\\2']),
            st.tuples(*[st.integers(0, 2**63 - 1)] * 3),
            events,
        ),
        max_size=8,
    ),
)
def test_encode_pushes_is_encode_push_of_every_delivery(
    codec: WireCodec, pattern: str, items: list[tuple[str, tuple[int, int, int], Event]]
) -> None:
    # The batch encoder of a recovery must give the very bytes of `encode_push`.
    batch = [
        Delivery("t1/" + topic, offset, shard, position, 0.0, event)
        for topic, (offset, shard, position), event in items
    ]
    assert codec.encode_pushes(pattern, batch, 3) == [
        codec.encode_push(pattern, d, codec.encode_event(d.event), topic=d.topic[3:])
        for d in batch
    ]


@codecs
def test_encode_push_is_the_push_message_with_the_event_bytes_embedded(codec: WireCodec) -> None:
    event_bytes = codec.encode_event(EVENT)
    push = codec.encode_push("docs/+", delivery(), event_bytes, topic="docs/42")
    assert push == codec.encode(
        EventPush(
            pattern="docs/+",
            topic="docs/42",
            offset=3,
            shard=0,
            position=7,
            event=msgspec.Raw(event_bytes),
        )
    )
    assert event_bytes in push
    decoded = codec.decode_server_message(push)
    assert isinstance(decoded, EventPush)
    assert codec.decode_event(decoded.event) == EVENT
    # Without `topic`, the delivery's own (absolute) topic.
    assert codec.decode_server_message(codec.encode_push("#", delivery(), event_bytes)) == (
        EventPush(
            pattern="#",
            topic="acme/docs/42",
            offset=3,
            shard=0,
            position=7,
            event=msgspec.Raw(event_bytes),
        )
    )


def test_a_relayed_json_event_has_each_attribute_once() -> None:
    wire = b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}'
    assert JSON.encode_event(JSON.decode_event(wire)) == wire


@codecs
def test_a_push_for_1000_subscribers_encodes_the_event_once(
    codec: WireCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Event] = []
    real: Callable[[Event], bytes] = codec._encode_event

    def counting(event: Event) -> bytes:
        calls.append(event)
        return real(event)

    monkeypatch.setattr(codec, "_encode_event", counting)
    shared = codec.encode_event(EVENT)
    pushes = [
        codec.encode_push(f"docs/{n}/+", delivery(), shared, topic=f"docs/{n}/x")
        for n in range(1000)
    ]
    assert len(calls) == 1
    assert all(shared in push for push in pushes)
    assert len(set(pushes)) == 1000
    # ...and a frame of them decodes to 1000 pushes sharing one event.
    decoded = codec.decode_server(codec.frame(pushes))
    assert len(decoded) == 1000
    assert {bytes(m.event) for m in decoded if isinstance(m, EventPush)} == {shared}


# Errors ---------------------------------------------------------------------------------

MALFORMED = ErrorCode.MALFORMED_MESSAGE
UNKNOWN = ErrorCode.UNKNOWN_COMMAND
INVALID = ErrorCode.INVALID_COMMAND


def mp(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


@pytest.mark.parametrize(
    ("codec", "data", "code", "id"),
    [
        (JSON, b"nope", MALFORMED, None),
        (JSON, b"[1, 2]", MALFORMED, None),
        (JSON, b'"text"', MALFORMED, None),
        (JSON, b'{"type":"ping","id":1', MALFORMED, None),
        (JSON, b'{"type":"\xff\xfe","id":1}', MALFORMED, None),
        (JSON, b"[" * 100_000, MALFORMED, None),
        (JSON, b'{"type":"frobnicate","id":3}', UNKNOWN, 3),
        (JSON, b'{"id":3}', UNKNOWN, 3),
        (JSON, b'{"type":"subscribe","id":4}', INVALID, 4),
        (JSON, b'{"type":"subscribe","id":4,"pattern":7}', INVALID, 4),
        (JSON, b'{"type":"subscribe","id":4,"pattern":"a","colour":1}', INVALID, 4),
        (JSON, b'{"type":"history","id":5,"pattern":"a","limit":1001}', INVALID, 5),
        (JSON, b'{"type":"ping","id":0}', INVALID, None),
        (JSON, b'{"type":"ping","id":true}', INVALID, None),
        (JSON, b'{"type":"ping","id":9007199254740992}', INVALID, None),
        (JSON, b'{"type":"frobnicate"}', UNKNOWN, None),
        (JSON, b'{"type":"pong","id":6}', INVALID, 6),
        (MSGPACK, "text", MALFORMED, None),
        (MSGPACK, b"\xc1", MALFORMED, None),
        (MSGPACK, mp({"type": "ping", "id": 1}), MALFORMED, None),
        (MSGPACK, mp([1]), MALFORMED, None),
        (MSGPACK, mp([{1: 2}]), MALFORMED, None),
        (MSGPACK, mp([[{"type": "ping", "id": 1}]]), MALFORMED, None),
        (MSGPACK, b"\x91" * 100_000, MALFORMED, None),
        (MSGPACK, mp([{"type": "frobnicate", "id": 3}]), UNKNOWN, 3),
        (MSGPACK, mp([{"type": "subscribe", "id": 4}]), INVALID, 4),
        (MSGPACK, mp([{"type": "ping", "id": -1}]), INVALID, None),
    ],
)
def test_bad_commands_raise_protocol_error_with_code_and_readable_id(
    codec: WireCodec, data: bytes | str, code: ErrorCode, id: int | None
) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_commands(data)
    assert info.value.code is code
    assert info.value.id == id
    assert str(info.value)


def test_invalid_command_names_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"pattern"):
        JSON.decode_commands(b'{"type":"subscribe","id":4,"pattern":7}')
    with pytest.raises(ProtocolError, match=r"colour"):
        JSON.decode_commands(b'{"type":"subscribe","id":4,"pattern":"a","colour":1}')


def test_server_messages_allow_unknown_fields_and_name_unknown_types() -> None:
    assert JSON.decode_server(b'{"type":"ping","new":1}') == [ServerPing()]
    with pytest.raises(ProtocolError) as info:
        JSON.decode_server(b'{"type":"hologram"}')
    assert info.value.code is UNKNOWN


@codecs
def test_decode_result_refuses_the_wrong_shape(codec: WireCodec) -> None:
    raw = codec.encode_reply(1, SubscribeResult(epoch="e", position="e-1", recovered=True))
    reply = codec.decode_server_message(raw)
    assert isinstance(reply, Reply)
    with pytest.raises(ProtocolError) as info:
        codec.decode_result(reply.result, RESULT_TYPES[Publish])
    assert info.value.code is INVALID


@codecs
@pytest.mark.parametrize(
    "bad",
    [
        {"specversion": "1.0", "id": "", "source": "s", "type": "t"},
        {"id": "1", "source": "s", "type": "t"},  # no specversion (JSON); fine in msgpack
        [1, 2],
        "an event",
    ],
)
def test_decode_event_refuses_bad_events(codec: WireCodec, bad: object) -> None:
    encoded = msgspec.msgpack.encode(bad) if codec.binary else msgspec.json.encode(bad)
    if codec.binary and isinstance(bad, dict) and "specversion" not in bad:
        assert codec.decode_event(encoded).id == "1"  # MessagePack defaults specversion
        return
    with pytest.raises(InvalidEvent):
        codec.decode_event(encoded)


@codecs
def test_decode_event_refuses_garbage_without_other_exceptions(codec: WireCodec) -> None:
    deep = b"\x91" * 100_000 if codec.binary else b"[" * 100_000
    for garbage in (b"", b"\xff\xfe\xfd", deep, b'{"data":"\xff"}'):
        with pytest.raises(InvalidEvent):
            codec.decode_event(garbage)


@codecs
def test_encode_event_refuses_data_with_no_encoding(codec: WireCodec) -> None:
    with pytest.raises(InvalidEvent) as info:
        codec.encode_event(Event(id="1", source="s", type="t", data=object()))
    assert info.value.attribute == "data"
