"""ServerSession: the state table, each bad input's code, heartbeats, the outbox and its bound."""

from __future__ import annotations

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery
from hybridbus.errors import ErrorCode, InvalidTopic, ProtocolError
from hybridbus.proto.codec import JSON, MSGPACK, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    ClientMessage,
    Connect,
    ConnectResult,
    Disconnect,
    ErrorReply,
    EventPush,
    History,
    Ping,
    PingResult,
    Pong,
    Publish,
    Reply,
    ServerMessage,
    ServerPing,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
    Unsubscribed,
    UnsubscribeResult,
)
from hybridbus.proto.session import ServerSession, SessionConfig, State

codecs = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.subprotocol)
EVENT = Event(id="1", source="/s", type="t", data={"n": 1})


def frame(codec: WireCodec, *messages: ClientMessage) -> bytes:
    return codec.frame([codec.encode(m) for m in messages])


def sent(session: ServerSession) -> list[ServerMessage]:
    """Everything the session queued, decoded (drains it)."""
    out: list[ServerMessage] = []
    while (data := session.data_to_send()) is not None:
        out.extend(session.codec.decode_server(data))
    return out


def connected(codec: WireCodec = JSON, config: SessionConfig | None = None) -> ServerSession:
    session = ServerSession(codec, config, now=0.0)
    assert session.receive_data(frame(codec, Connect(id=1, token="t")), 0.0) == [
        Connect(id=1, token="t")
    ]
    session.accept(ConnectResult(client="c1", version="test"))
    sent(session)
    return session


def push_bytes(codec: WireCodec, position: int = 1, pattern: str = "a/#") -> bytes:
    d = Delivery("a/b", position, 0, position, 0.0, EVENT)
    return codec.encode_push(pattern, d, codec.encode_event(EVENT))


def errors(messages: list[ServerMessage]) -> list[tuple[int, int]]:
    return [(m.id, m.code) for m in messages if isinstance(m, ErrorReply)]


# The connect handshake --------------------------------------------------------------


@codecs
def test_connect_accept_answers_with_the_configs_limits(codec: WireCodec) -> None:
    config = SessionConfig(ping_interval=7.5, max_frame_size=4096)
    session = ServerSession(codec, config, now=0.0)
    states = [session.state]
    assert session.receive_data(frame(codec, Connect(id=9, device="laptop")), 1.0) == [
        Connect(id=9, device="laptop")
    ]
    states.append(session.state)
    session.accept(ConnectResult(client="c1", version="1.2", tenant="acme"))
    states.append(session.state)
    assert states == [State.NEW, State.CONNECTING, State.CONNECTED]
    [reply] = sent(session)
    assert isinstance(reply, Reply)
    assert reply.id == 9
    result = codec.decode_result(reply.result, ConnectResult)
    assert result == ConnectResult(
        client="c1", version="1.2", ping=7.5, max_frame_size=4096, tenant="acme"
    )


def test_reject_closes_with_the_code_and_says_so() -> None:
    session = ServerSession(JSON, now=0.0)
    session.receive_data(frame(JSON, Connect(id=1, token="bad")), 0.0)
    session.reject(CloseCode.UNAUTHORIZED, "invalid token")
    assert session.closed
    assert (session.close_code, session.close_reason) == (CloseCode.UNAUTHORIZED, "invalid token")
    assert sent(session) == [Disconnect(code=4501, reason="invalid token", reconnect=False)]
    assert session.data_to_send() is None


# Bad input: one row per case of the spec's table ------------------------------------------

CLOSE = "close"
ERROR = "error"

BAD_INPUT = [
    # (name, state, frame bytes, expected kind, expected code)
    ("garbage", State.CONNECTED, b"\x00garbage", CLOSE, CloseCode.BAD_PROTOCOL),
    ("not an object", State.CONNECTED, b"[1]", CLOSE, CloseCode.BAD_PROTOCOL),
    ("no readable id", State.CONNECTED, b'{"type":"ping","id":"x"}', CLOSE, CloseCode.BAD_PROTOCOL),
    (
        "unknown command",
        State.CONNECTED,
        b'{"type":"fly","id":5}',
        ERROR,
        ErrorCode.UNKNOWN_COMMAND,
    ),
    (
        "missing field",
        State.CONNECTED,
        b'{"type":"subscribe","id":5}',
        ERROR,
        ErrorCode.INVALID_COMMAND,
    ),
    (
        "unknown field",
        State.CONNECTED,
        b'{"type":"ping","id":5,"x":1}',
        ERROR,
        ErrorCode.INVALID_COMMAND,
    ),
    (
        "second connect",
        State.CONNECTED,
        b'{"type":"connect","id":5}',
        CLOSE,
        CloseCode.BAD_PROTOCOL,
    ),
    ("command before connect", State.NEW, b'{"type":"ping","id":5}', CLOSE, CloseCode.BAD_PROTOCOL),
    ("pong before connect", State.NEW, b'{"type":"pong"}', CLOSE, CloseCode.BAD_PROTOCOL),
    ("unknown before connect", State.NEW, b'{"type":"fly","id":5}', CLOSE, CloseCode.BAD_PROTOCOL),
    (
        "bad connect",
        State.NEW,
        b'{"type":"connect","id":5,"token":1}',
        CLOSE,
        CloseCode.BAD_PROTOCOL,
    ),
    (
        "command while connecting",
        State.CONNECTING,
        b'{"type":"ping","id":5}',
        CLOSE,
        CloseCode.BAD_PROTOCOL,
    ),
    (
        "id in flight",
        State.CONNECTED,
        b'{"type":"ping","id":7}\n{"type":"ping","id":7}',
        CLOSE,
        CloseCode.BAD_PROTOCOL,
    ),
]


def in_state(state: State) -> ServerSession:
    if state is State.CONNECTED:
        return connected()
    session = ServerSession(JSON, now=0.0)
    if state is State.CONNECTING:
        session.receive_data(frame(JSON, Connect(id=1)), 0.0)
    assert session.state is state
    return session


@pytest.mark.parametrize(
    ("name", "state", "data", "kind", "code"), BAD_INPUT, ids=[r[0] for r in BAD_INPUT]
)
def test_each_bad_input_gets_its_documented_code(
    name: str, state: State, data: bytes, kind: str, code: int
) -> None:
    session = in_state(state)
    assert session.receive_data(data, 1.0) == []
    out = sent(session)
    if kind == CLOSE:
        assert session.closed
        assert session.close_code is code
        assert isinstance(out[-1], Disconnect)
        assert out[-1].code == code
        assert out[-1].reconnect is False
    else:
        assert not session.closed
        assert errors(out) == [(5, code)]


def test_a_frame_over_the_limit_closes_with_message_too_large() -> None:
    session = connected(config=SessionConfig(max_frame_size=1024))
    # 600 characters, 1,200 bytes of UTF-8: text is measured in bytes.
    text = '{"type":"ping","id":1,"x":"' + "é" * 600 + '"}'
    assert session.receive_data(text, 1.0) == []
    assert session.close_code is CloseCode.MESSAGE_TOO_LARGE
    assert "over the limit of 1024" in (session.close_reason or "")


@codecs
def test_a_bad_command_is_answered_and_the_rest_of_the_frame_goes_on(codec: WireCodec) -> None:
    session = connected(codec)
    bad = (
        b'{"type":"teleport","id":3}'
        if codec is JSON
        else msgspec.msgpack.encode({"type": "teleport", "id": 3})
    )
    data = codec.frame(
        [codec.encode(Ping(id=2)), bad, codec.encode(Subscribe(id=4, pattern="a/#"))]
    )
    assert session.receive_data(data, 1.0) == [Ping(id=2), Subscribe(id=4, pattern="a/#")]
    [error] = sent(session)
    assert isinstance(error, ErrorReply)
    assert (error.id, error.code, error.retriable) == (3, ErrorCode.UNKNOWN_COMMAND, False)
    assert "teleport" in error.message


def test_a_frame_that_closes_the_connection_is_dropped_whole() -> None:
    session = connected()
    data = b'{"type":"ping","id":2}\n{"type":"subscribe","id":3,"pattern":"a"}\nnot json'
    assert session.receive_data(data, 1.0) == []
    assert session.close_code is CloseCode.BAD_PROTOCOL
    assert isinstance(session.close_cause, ProtocolError)
    assert session.close_cause.code is ErrorCode.MALFORMED_MESSAGE
    assert [type(m) for m in sent(session)] == [Disconnect]


def test_connect_and_another_command_in_one_frame_is_out_of_order() -> None:
    session = ServerSession(JSON, now=0.0)
    data = frame(JSON, Connect(id=1), Subscribe(id=2, pattern="a"))
    assert session.receive_data(data, 0.0) == []
    assert session.close_code is CloseCode.BAD_PROTOCOL
    assert "when connecting" in (session.close_reason or "")


def test_a_closed_session_ignores_everything() -> None:
    session = connected()
    session.close(CloseCode.SHUTDOWN, "bye")
    assert session.receive_data(frame(JSON, Ping(id=2)), 1.0) == []
    session.reply(2, PingResult())
    session.error(2, ErrorCode.INVALID_TOPIC, "x")
    session.push(push_bytes(JSON))
    session.close(CloseCode.BAD_PROTOCOL, "later")
    assert (session.close_code, session.close_reason) == (CloseCode.SHUTDOWN, "bye")
    assert sent(session) == [Disconnect(code=4000, reason="bye", reconnect=True)]


# Subscriptions and in-flight commands ---------------------------------------------------------


def test_subscriptions_are_tracked_and_refused_twice() -> None:
    session = connected()
    assert session.receive_data(frame(JSON, Subscribe(id=2, pattern="a/#")), 1.0)
    assert session.subscriptions == {"a/#"}
    assert session.receive_data(frame(JSON, Subscribe(id=3, pattern="a/#")), 1.0) == []
    assert errors(sent(session)) == [(3, ErrorCode.ALREADY_SUBSCRIBED)]
    assert session.receive_data(frame(JSON, Unsubscribe(id=4, pattern="b")), 1.0) == []
    assert errors(sent(session)) == [(4, ErrorCode.NOT_SUBSCRIBED)]
    assert session.receive_data(frame(JSON, Unsubscribe(id=5, pattern="a/#")), 1.0) == [
        Unsubscribe(id=5, pattern="a/#")
    ]
    assert session.subscriptions == frozenset()


def test_a_failed_subscribe_frees_its_pattern() -> None:
    session = connected()
    session.receive_data(frame(JSON, Subscribe(id=2, pattern="a b")), 1.0)
    session.error(2, InvalidTopic("pattern 'a b' contains whitespace"))
    assert errors(sent(session)) == [(2, ErrorCode.INVALID_TOPIC)]
    assert session.subscriptions == frozenset()
    assert session.receive_data(frame(JSON, Subscribe(id=3, pattern="a b")), 1.0)


def test_a_failed_subscribe_does_not_free_a_newer_subscribe_of_its_pattern() -> None:
    session = connected()
    session.receive_data(frame(JSON, Subscribe(id=2, pattern="a")), 1.0)
    session.receive_data(frame(JSON, Unsubscribe(id=3, pattern="a")), 1.0)
    session.receive_data(frame(JSON, Subscribe(id=4, pattern="a")), 1.0)
    session.error(2, ErrorCode.INVALID_PATTERN, "the first one failed late")
    assert session.subscriptions == frozenset({"a"})  # still held by subscribe 4
    session.receive_data(frame(JSON, Subscribe(id=5, pattern="a")), 1.0)
    assert (5, ErrorCode.ALREADY_SUBSCRIBED) in errors(sent(session))


def test_subscription_limit() -> None:
    session = connected(config=SessionConfig(max_subscriptions=2))
    commands = session.receive_data(
        frame(JSON, *(Subscribe(id=i, pattern=f"p{i}") for i in range(2, 5))), 1.0
    )
    assert [c.id for c in commands] == [2, 3]
    assert errors(sent(session)) == [(4, ErrorCode.TOO_MANY_SUBSCRIPTIONS)]


def test_in_flight_limit_is_answered_retriable() -> None:
    session = connected(config=SessionConfig(max_in_flight=3))
    commands = session.receive_data(frame(JSON, *(Ping(id=i) for i in range(2, 7))), 1.0)
    assert [c.id for c in commands] == [2, 3, 4]
    assert session.in_flight == 3
    refused = [m for m in sent(session) if isinstance(m, ErrorReply)]
    assert [(m.id, m.code, m.retriable) for m in refused] == [
        (5, ErrorCode.TOO_MANY_COMMANDS, True),
        (6, ErrorCode.TOO_MANY_COMMANDS, True),
    ]
    session.reply(2, PingResult())
    assert session.in_flight == 2
    assert session.receive_data(frame(JSON, Ping(id=5)), 1.0) == [Ping(id=5)]


def test_reply_and_error_need_a_command_in_flight() -> None:
    session = connected()
    with pytest.raises(ValueError, match="not awaiting"):
        session.reply(42, PingResult())
    session.receive_data(frame(JSON, Ping(id=2)), 1.0)
    session.reply(2, PingResult())
    with pytest.raises(ValueError, match="not awaiting"):
        session.error(2, ErrorCode.INVALID_INPUT, "twice")


def test_errors_carry_codes_and_hide_internal_details() -> None:
    session = connected()
    session.receive_data(frame(JSON, Ping(id=2), Ping(id=3), Ping(id=4)), 1.0)
    session.error(2, RuntimeError("database password is hunter2"))
    session.error(3, ErrorCode.ENGINE_UNAVAILABLE, "disk full")
    session.error(4, ErrorCode.INVALID_INPUT)
    assert sent(session) == [
        ErrorReply(id=2, code=1399, message="internal error", retriable=False),
        ErrorReply(id=3, code=1301, message="disk full", retriable=True),
        ErrorReply(id=4, code=1000, message="invalid input", retriable=False),
    ]


def test_misuse_before_accept_raises() -> None:
    session = ServerSession(JSON, now=0.0)
    with pytest.raises(RuntimeError):
        session.push(push_bytes(JSON))
    with pytest.raises(RuntimeError):
        session.accept(ConnectResult(client="c", version="v"))


def test_end_subscription_pushes_unsubscribed_and_frees_the_pattern() -> None:
    session = connected()
    session.receive_data(frame(JSON, Subscribe(id=2, pattern="a/#")), 1.0)
    session.reply(2, SubscribeResult(epoch="e", position="e-0", recovered=True))
    session.end_subscription("a/#", ErrorCode.SUBSCRIBER_TOO_SLOW, "fell behind")
    session.end_subscription("not/subscribed", ErrorCode.SUBSCRIBER_TOO_SLOW, "ignored")
    out = sent(session)
    assert out[-1] == Unsubscribed(pattern="a/#", code=1201, reason="fell behind")
    assert len(out) == 2
    assert session.subscriptions == frozenset()


# Heartbeat -----------------------------------------------------------------------------------


def test_no_connect_in_time_closes_with_no_ping() -> None:
    session = ServerSession(JSON, SessionConfig(connect_timeout=5.0), now=100.0)
    assert session.deadline == 105.0
    session.tick(104.9)
    assert not session.closed
    session.tick(105.0)
    assert session.close_code is CloseCode.NO_PING


def test_pings_every_interval_and_closes_a_peer_silent_for_two() -> None:
    session = connected(config=SessionConfig(ping_interval=25.0))  # heard at 0
    assert session.deadline == 25.0
    session.tick(24.9)
    assert sent(session) == []
    session.tick(25.0)
    assert sent(session) == [ServerPing()]
    session.tick(26.0)
    assert sent(session) == []
    session.receive_data(frame(JSON, Pong()), 26.0)  # a pong is absorbed
    assert session.deadline == 50.0
    session.tick(50.0)
    assert sent(session) == [ServerPing()]
    session.tick(75.9)
    assert not session.closed
    assert sent(session) == [ServerPing()]
    session.tick(76.0)
    assert session.close_code is CloseCode.NO_PING
    assert sent(session) == [Disconnect(code=4002, reason="nothing heard for 50 s", reconnect=True)]


def test_any_command_counts_as_heard() -> None:
    session = connected(config=SessionConfig(ping_interval=10.0))
    session.receive_data(frame(JSON, Ping(id=2)), 15.0)
    session.tick(34.9)
    assert not session.closed
    session.tick(35.0)
    assert session.closed


def test_the_phase_brings_the_first_ping_forward_then_it_keeps_the_interval() -> None:
    config = SessionConfig(ping_interval=20.0)
    session = ServerSession(JSON, config, now=0.0, phase=0.25)
    session.receive_data(frame(JSON, Connect(id=1, token="t")), 2.0)
    session.accept(ConnectResult(client="c1", version="test"))
    sent(session)
    assert session.deadline == 7.0  # heard at 2, a quarter of the interval
    session.tick(6.9)
    assert sent(session) == []
    session.tick(7.0)
    assert sent(session) == [ServerPing()]
    assert session.deadline == 27.0
    with pytest.raises(ValueError, match="phase"):
        ServerSession(JSON, config, now=0.0, phase=0.0)


def test_a_websocket_ping_or_pong_counts_as_heard() -> None:
    session = connected(config=SessionConfig(ping_interval=10.0))
    session.heard(15.0)
    session.tick(34.9)
    assert not session.closed
    session.tick(35.0)
    assert session.close_code is CloseCode.NO_PING


def test_an_idle_session_keeps_no_dict_and_frees_its_command_table() -> None:
    session = connected()
    assert not hasattr(session, "__dict__")
    assert session.in_flight == 0
    # The connect's entry is gone and so is the table it grew (an empty dict's size).
    assert session._in_flight.__sizeof__() == {}.__sizeof__()


def test_ping_interval_zero_turns_the_heartbeat_off() -> None:
    session = connected(config=SessionConfig(ping_interval=0.0))
    assert session.deadline is None
    session.tick(1e9)
    assert not session.closed
    assert sent(session) == []


# The outbox: coalescing and its bound ---------------------------------------------------------


@codecs
def test_everything_queued_in_a_tick_goes_out_as_one_frame(codec: WireCodec) -> None:
    session = connected(codec)
    session.receive_data(frame(codec, Ping(id=2), History(id=3, pattern="a")), 1.0)
    pushes = [push_bytes(codec, p) for p in range(1, 101)]
    for push in pushes[:50]:
        session.push(push)
    session.reply(2, PingResult())
    for push in pushes[50:]:
        session.push(push)
    assert session.pending_bytes == sum(map(len, pushes)) + len(codec.encode_reply(2, PingResult()))
    data = session.data_to_send()
    assert data is not None
    assert session.data_to_send() is None
    assert session.pending_bytes == 0
    messages = codec.decode_server(data)
    assert len(messages) == 101
    assert isinstance(messages[50], Reply)
    assert [m.position for m in messages if isinstance(m, EventPush)] == list(range(1, 101))


@codecs
def test_frames_are_cut_at_the_frame_size(codec: WireCodec) -> None:
    session = connected(codec, SessionConfig(max_frame_size=1024))
    pushes = [push_bytes(codec, p, pattern="p" * 200) for p in range(1, 21)]
    big = codec.encode_push(
        "q" * 3000, Delivery("a", 1, 0, 99, 0.0, EVENT), codec.encode_event(EVENT)
    )
    for push in pushes[:10]:
        session.push(push)
    session.push(big)
    for push in pushes[10:]:
        session.push(push)
    frames = []
    while (data := session.data_to_send()) is not None:
        frames.append(data)
    assert len(frames) > 3
    assert all(len(f) <= 1024 for f in frames if big not in f)
    assert sum(big in f for f in frames) == 1
    got = [m for f in frames for m in codec.decode_server(f)]
    assert [m.position for m in got if isinstance(m, EventPush)] == [
        *range(1, 11),
        99,
        *range(11, 21),
    ]
    assert session.pending_bytes == 0


def test_an_overflowing_outbox_closes_with_slow_consumer() -> None:
    session = connected(config=SessionConfig(max_pending_bytes=4096))
    push = push_bytes(JSON)
    count = 0
    while not session.closed:
        session.push(push)
        count += 1
    assert count == 4096 // len(push) + 1
    assert session.close_code is CloseCode.SLOW_CONSUMER
    # What was queued is dropped: the client recovers it after reconnecting.
    out = sent(session)
    assert out == [
        Disconnect(code=4001, reason="over 4096 bytes queued for the client", reconnect=True)
    ]


def test_one_message_larger_than_the_bound_still_fits_an_empty_outbox() -> None:
    session = connected(config=SessionConfig(max_pending_bytes=1024))
    big = JSON.encode_push("p" * 2000, Delivery("a", 1, 0, 1, 0.0, EVENT), JSON.encode_event(EVENT))
    session.push(big)
    assert not session.closed
    assert session.data_to_send() == big
    session.push(big)
    session.push(push_bytes(JSON))
    assert session.close_code is CloseCode.SLOW_CONSUMER


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_push_many_crosses_the_bound_where_pushing_one_by_one_would(batch: int) -> None:
    push = push_bytes(JSON)
    one_by_one = connected(config=SessionConfig(max_pending_bytes=4096))
    at_once = connected(config=SessionConfig(max_pending_bytes=4096))
    rounds = 0
    while not one_by_one.closed:
        for _ in range(batch):
            one_by_one.push(push)
        at_once.push_many([push] * batch)
        rounds += 1
        # Either both are still open with the same bytes queued, or both closed.
        assert at_once.closed == one_by_one.closed
        if not at_once.closed:
            assert at_once.pending_bytes == one_by_one.pending_bytes
    assert at_once.close_code is CloseCode.SLOW_CONSUMER
    assert rounds == (4096 // len(push)) // batch + 1


def test_push_many_keeps_order_and_one_big_message_fits_an_empty_outbox() -> None:
    session = connected(config=SessionConfig(max_pending_bytes=1024))
    big = JSON.encode_push("p" * 2000, Delivery("a", 1, 0, 1, 0.0, EVENT), JSON.encode_event(EVENT))
    session.push_many([big])
    assert not session.closed
    assert session.data_to_send() == big
    first, second = (
        push_bytes(JSON),
        JSON.encode_push("q", Delivery("b", 2, 0, 2, 0.0, EVENT), JSON.encode_event(EVENT)),
    )
    session.push_many([first, second])
    assert session.data_to_send() == JSON.frame([first, second])
    session.push_many([])
    assert session.data_to_send() is None


def test_push_many_before_accept_raises_and_after_close_is_ignored() -> None:
    session = ServerSession(JSON, SessionConfig(), now=0.0)
    with pytest.raises(RuntimeError):
        session.push_many([push_bytes(JSON)])
    session = connected()
    session.close(CloseCode.NORMAL, "bye")
    session.push_many([push_bytes(JSON)])
    assert [type(m).__name__ for m in sent(session)] == ["Disconnect"]


def test_graceful_close_flushes_what_was_queued_then_disconnect() -> None:
    session = connected()
    session.receive_data(frame(JSON, Unsubscribe(id=2, pattern="x")), 1.0)  # refused: queued
    session.push(push_bytes(JSON))
    session.close(CloseCode.SHUTDOWN, "restarting")
    out = sent(session)
    assert [type(m) for m in out] == [ErrorReply, EventPush, Disconnect]
    assert out[-1] == Disconnect(code=4000, reason="restarting", reconnect=True)


def test_unsubscribe_reply_has_an_empty_result() -> None:
    session = connected(MSGPACK)
    session.receive_data(frame(MSGPACK, Subscribe(id=2, pattern="a")), 1.0)
    session.receive_data(frame(MSGPACK, Unsubscribe(id=3, pattern="a")), 1.0)
    session.reply(3, UnsubscribeResult())
    [reply] = [m for m in sent(session) if isinstance(m, Reply)]
    assert msgspec.msgpack.decode(reply.result) == {}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="ping_interval"):
        SessionConfig(ping_interval=-1)
    with pytest.raises(ValueError, match="max_frame_size"):
        SessionConfig(max_frame_size=10)
    with pytest.raises(ValueError, match="max_in_flight"):
        SessionConfig(max_in_flight=0)


def test_publish_commands_carry_the_event_raw_for_the_server_to_decode() -> None:
    session = connected()
    event_bytes = JSON.encode_event(EVENT)
    data = JSON.frame([JSON.encode(Publish(id=2, topic="a", event=msgspec.Raw(event_bytes)))])
    [command] = session.receive_data(data, 1.0)
    assert isinstance(command, Publish)
    assert JSON.decode_event(command.event) == EVENT
