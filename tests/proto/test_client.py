"""ClientSession: ids and typed results, exactly-once pushes, tokens, heartbeat, bad servers."""

from __future__ import annotations

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Position
from hybridbus.errors import ErrorCode, EventTooLarge
from hybridbus.proto.client import (
    ClientSession,
    Ended,
    Failed,
    HistoryItem,
    HistoryPage,
    Received,
    Replied,
)
from hybridbus.proto.codec import JSON, MSGPACK, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    ClientInfo,
    ClientMessage,
    Connect,
    ConnectResult,
    Disconnect,
    ErrorReply,
    History,
    HistoryEvent,
    HistoryResult,
    Join,
    Ping,
    PingResult,
    Pong,
    Publish,
    PublishResult,
    ServerMessage,
    ServerPing,
    Subscribe,
    SubscribeResult,
    Unsubscribed,
)
from hybridbus.proto.session import SessionConfig, State

codecs = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.subprotocol)
EVENT = Event(id="1", source="/s", type="t", data="hello")


def server_frame(codec: WireCodec, *messages: ServerMessage | bytes) -> bytes:
    return codec.frame([m if isinstance(m, bytes) else codec.encode(m) for m in messages])


def client_sent(client: ClientSession) -> list[ClientMessage]:
    out: list[ClientMessage] = []
    while (data := client.data_to_send()) is not None:
        out.extend(client.codec.decode_commands(data))
    return out


def connected(codec: WireCodec = JSON, ping: float = 25.0) -> ClientSession:
    client = ClientSession(codec, now=0.0)
    assert client.connect(token="t", name="hybridbus-py") == 1
    assert client_sent(client) == [Connect(id=1, token="t", name="hybridbus-py")]
    [replied] = client.receive_data(
        server_frame(
            codec, codec.encode_reply(1, ConnectResult(client="c1", version="v", ping=ping))
        ),
        0.0,
    )
    assert isinstance(replied, Replied)
    assert client.state is State.CONNECTED
    return client


def subscribed(codec: WireCodec, pattern: str = "docs/+", token: str = "e1-10") -> ClientSession:
    client = connected(codec)
    sub_id = client.subscribe(pattern, since="e1-3")
    result = SubscribeResult(epoch="e1", position=token, recovered=True)
    [replied] = client.receive_data(server_frame(codec, codec.encode_reply(sub_id, result)), 1.0)
    assert isinstance(replied, Replied)
    assert replied.result == SubscribeResult(epoch="e1", position=token, recovered=True)
    return client


def encoded_push(codec: WireCodec, position: int, shard: int = 0, pattern: str = "docs/+") -> bytes:
    d = Delivery("docs/x", position, shard, position, 0.0, EVENT)
    return codec.encode_push(pattern, d, codec.encode_event(EVENT))


def push(codec: WireCodec, position: int, shard: int = 0, pattern: str = "docs/+") -> bytes:
    """A frame of one push."""
    return server_frame(codec, encoded_push(codec, position, shard, pattern))


@codecs
def test_commands_get_increasing_ids_and_typed_results(codec: WireCodec) -> None:
    client = connected(codec)
    assert client.connect_result == ConnectResult(client="c1", version="v", ping=25.0)
    ids = [client.ping(), client.publish("docs/x", EVENT), client.subscribe("a")]
    assert ids == [2, 3, 4]
    commands = [c for c in client_sent(client) if not isinstance(c, Pong)]
    assert [type(c) for c in commands] == [Ping, Publish, Subscribe]
    assert set(client.in_flight) == {2, 3, 4}
    ack = PublishResult(offset=1, shard=0, position=11, epoch="e1", duplicate=False)
    data = server_frame(
        codec,
        codec.encode_reply(3, ack),
        codec.encode_reply(2, PingResult()),
        ErrorReply(id=4, code=1003, message="bad pattern", retriable=False),
    )
    out = client.receive_data(data, 1.0)
    assert out == [
        Replied(3, commands[1], ack),
        Replied(2, commands[0], PingResult()),
        Failed(4, commands[2], ErrorCode.INVALID_PATTERN, "bad pattern", False),
    ]
    assert client.in_flight == {}


def test_commands_wait_for_the_connect_reply() -> None:
    client = ClientSession(JSON, now=0.0)
    with pytest.raises(RuntimeError):
        client.ping()
    client.connect()
    with pytest.raises(RuntimeError):
        client.subscribe("a")
    with pytest.raises(RuntimeError):
        client.connect()


@codecs
def test_pushes_are_delivered_once_with_their_token(codec: WireCodec) -> None:
    client = subscribed(codec)
    assert client.position("docs/+") == Position("e1", (10,))
    out = client.receive_data(
        server_frame(codec, *(encoded_push(codec, p) for p in (9, 11, 11, 12))), 2.0
    )
    assert [(r.position, str(r.token)) for r in out if isinstance(r, Received)] == [
        (11, "e1-11"),
        (12, "e1-12"),
    ]
    assert len(out) == 2
    first = out[0]
    assert isinstance(first, Received)
    assert (first.pattern, first.topic, first.event) == ("docs/+", "docs/x", EVENT)
    assert client.position("docs/+") == Position("e1", (12,))


def test_tokens_keep_one_position_per_shard() -> None:
    client = subscribed(JSON, token="e2-5.7.0")
    out = client.receive_data(
        server_frame(JSON, *(encoded_push(JSON, p, shard=s) for p, s in ((6, 0), (7, 1), (1, 2)))),
        1.0,
    )
    assert [str(r.token) for r in out if isinstance(r, Received)] == ["e2-6.7.0", "e2-6.7.1"]


def test_pushes_of_patterns_not_subscribed_are_skipped() -> None:
    client = subscribed(JSON)
    assert client.receive_data(push(JSON, 11, pattern="other"), 1.0) == []
    client.unsubscribe("docs/+")
    assert client.position("docs/+") is None
    assert client.receive_data(push(JSON, 12), 1.0) == []
    assert not client.closed


def test_history_results_are_decoded() -> None:
    client = connected(MSGPACK)
    history_id = client.history("docs/#", since="e1-0", limit=2)
    assert client_sent(client) == [History(id=history_id, pattern="docs/#", since="e1-0", limit=2)]
    raw = msgspec.Raw(MSGPACK.encode_event(EVENT))
    result = HistoryResult(
        events=[HistoryEvent(topic="docs/a", offset=1, shard=0, position=4, event=raw)],
        position="e1-4",
        more=True,
        exact=True,
    )
    [replied] = client.receive_data(
        server_frame(MSGPACK, MSGPACK.encode_reply(history_id, result)), 1.0
    )
    assert isinstance(replied, Replied)
    assert replied.result == HistoryPage(
        [HistoryItem("docs/a", 1, 0, 4, EVENT)], Position("e1", (4,)), more=True, exact=True
    )


def test_server_pings_are_answered_with_pongs() -> None:
    client = connected()
    assert client.receive_data(server_frame(JSON, ServerPing(), ServerPing()), 5.0) == []
    assert client_sent(client) == [Pong(), Pong()]


def test_unsubscribed_ends_the_subscription_with_its_position() -> None:
    client = subscribed(JSON)
    client.receive_data(push(JSON, 11), 1.0)
    out = client.receive_data(
        server_frame(JSON, Unsubscribed(pattern="docs/+", code=1201, reason="too slow")), 1.0
    )
    assert out == [Ended("docs/+", 1201, "too slow", Position("e1", (11,)))]
    assert client.position("docs/+") is None


def test_disconnect_closes_with_the_servers_code() -> None:
    client = connected()
    join = Join(topic="t", info=ClientInfo(client="c2"))
    bye = Disconnect(code=4000, reason="restart", reconnect=True)
    assert client.receive_data(server_frame(JSON, join, bye, ServerPing()), 1.0) == [join, bye]
    assert client.closed
    assert (client.close_code, client.close_reason) == (4000, "restart")
    assert client.data_to_send() is None  # no pong after the disconnect


def test_unknown_server_messages_are_skipped() -> None:
    client = connected()
    assert client.receive_data(b'{"type":"hologram","id":1}\n{"type":"ping","x":1}', 1.0) == []
    assert not client.closed
    assert client_sent(client) == [Pong()]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"type":"reply","id":99,"result":{}}', "not awaiting"),
        (b'{"type":"error","id":99,"code":1000,"message":"x","retriable":false}', "not awaiting"),
        (b'{"type":"reply","id":2,"result":{"epoch":1}}', "invalid SubscribeResult"),
        (
            b'{"type":"reply","id":2,"result":{"epoch":"e","position":"garbage","recovered":true}}',
            "malformed position",
        ),
        (
            b'{"type":"event","pattern":"docs/+","topic":"x","offset":1,"shard":0,"position":99,"event":{"id":1}}',
            "specversion",
        ),
        (
            b'{"type":"event","pattern":"docs/+","topic":"x","offset":1,"shard":3,"position":99,"event":{}}',
            "shard 3",
        ),
        (b'{"type":"error","id":"x"}\n', "invalid error"),
    ],
)
def test_a_misbehaving_server_closes_the_session_with_bad_protocol(
    frame: bytes, reason: str
) -> None:
    client = subscribed(JSON)
    client.subscribe("more")  # id 3 in flight; ids 2 answered
    client._pending[2] = Subscribe(id=2, pattern="x")  # pretend id 2 is in flight again
    assert client.receive_data(frame, 1.0) == []
    assert client.closed
    assert client.close_code == CloseCode.BAD_PROTOCOL
    assert reason in (client.close_reason or "")


def test_client_heartbeat_closes_a_silent_server() -> None:
    client = connected(ping=10.0)  # heard at 0
    client.tick(19.9)
    assert not client.closed
    client.receive_data(server_frame(JSON, ServerPing()), 15.0)
    client.tick(34.9)
    assert not client.closed
    client.tick(35.0)
    assert client.close_code == CloseCode.NO_PING


def test_no_connect_reply_in_time_closes() -> None:
    client = ClientSession(JSON, SessionConfig(connect_timeout=3.0), now=10.0)
    client.connect()
    client.tick(12.9)
    assert not client.closed
    client.tick(13.0)
    assert client.close_code == CloseCode.NO_PING


def test_a_publish_over_the_frame_limit_is_refused_before_sending() -> None:
    client = connected()
    with pytest.raises(EventTooLarge):
        client.publish("a", Event(id="1", source="s", type="t", data="x" * (1 << 20)))
    assert client.data_to_send() is None
    assert client.in_flight == {}
