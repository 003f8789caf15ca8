"""ClientSession and ServerSession talking through frames only, with a tiny synchronous server.

`FakeServer` does what the asyncio server will do with the Bus, in a list:
scope topics to the connection's tenant, append, fan out (encoding each
event once per delivery and each push once per pattern), replay from `since`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest

from hybridbus.core.event import Event
from hybridbus.core.log import Delivery, Position
from hybridbus.core.topics import matches, scope_pattern, scope_topic, unscope
from hybridbus.errors import BusError, ErrorCode
from hybridbus.proto.client import (
    ClientEvent,
    ClientSession,
    Failed,
    HistoryPage,
    Received,
    Replied,
)
from hybridbus.proto.codec import JSON, MSGPACK, WireCodec
from hybridbus.proto.codes import CloseCode, reconnect_allowed
from hybridbus.proto.frames import (
    Command,
    Connect,
    ConnectResult,
    Disconnect,
    History,
    HistoryEvent,
    HistoryResult,
    Ping,
    PingResult,
    Publish,
    PublishResult,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
    UnsubscribeResult,
)
from hybridbus.proto.session import ServerSession, SessionConfig

codecs = pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.subprotocol)
EPOCH = "e1"


@dataclass
class Conn:
    session: ServerSession
    client: ClientSession
    tenant: str
    name: str
    inbox: list[ClientEvent] = field(default_factory=list)
    patterns: dict[str, str] = field(default_factory=dict)  # relative -> absolute


class FakeServer:
    def __init__(self, codec: WireCodec) -> None:
        self.codec = codec
        self.log: list[Delivery] = []
        self.conns: list[Conn] = []
        self.event_encodings = 0
        self.now = 0.0

    def connect(self, name: str, tenant: str = "acme") -> Conn:
        config = SessionConfig(ping_interval=10.0)
        conn = Conn(
            ServerSession(self.codec, config, now=self.now),
            ClientSession(self.codec, config, now=self.now),
            tenant,
            name,
        )
        self.conns.append(conn)
        conn.client.connect(token="anonymous", device=name)
        self.pump()
        return conn

    # -- moving frames ------------------------------------------------------------

    def pump(self) -> None:
        """Move frames both ways until nothing is left to send."""
        busy = True
        while busy:
            busy = False
            for conn in self.conns:
                while (data := conn.client.data_to_send()) is not None:
                    busy = True
                    for command in conn.session.receive_data(data, self.now):
                        self.execute(conn, command)
                while (data := conn.session.data_to_send()) is not None:
                    busy = True
                    conn.inbox.extend(conn.client.receive_data(data, self.now))

    # -- the server's side ---------------------------------------------------------

    def execute(self, conn: Conn, command: Command) -> None:
        session = conn.session
        try:
            if isinstance(command, Connect):
                session.accept(ConnectResult(client=conn.name, version="test", tenant=conn.tenant))
            elif isinstance(command, Subscribe):
                self.subscribe(conn, command)
            elif isinstance(command, Unsubscribe):
                conn.patterns.pop(command.pattern, None)
                session.reply(command.id, UnsubscribeResult())
            elif isinstance(command, Publish):
                self.publish(conn, command)
            elif isinstance(command, History):
                self.history(conn, command)
            elif isinstance(command, Ping):
                session.reply(command.id, PingResult())
            else:
                session.error(command.id, ErrorCode.UNKNOWN_COMMAND, "not in this test")
        except BusError as exc:
            session.error(command.id, exc)

    def _after(self, since: str | None) -> tuple[int, bool]:
        if since is None:
            return len(self.log), True
        token = Position.parse(since)
        if token.epoch != EPOCH:
            return len(self.log), False
        return token.positions[0], True

    def subscribe(self, conn: Conn, command: Subscribe) -> None:
        absolute = scope_pattern(conn.tenant, command.pattern)
        after, recovered = self._after(command.since)
        conn.session.reply(
            command.id,
            SubscribeResult(epoch=EPOCH, position=f"{EPOCH}-{after}", recovered=recovered),
        )
        for d in self.log[after:]:
            if matches(absolute, d.topic):
                event = self.codec.encode_event(d.event)
                topic = unscope(conn.tenant, d.topic)
                conn.session.push(self.codec.encode_push(command.pattern, d, event, topic=topic))
        conn.patterns[command.pattern] = absolute

    def publish(self, conn: Conn, command: Publish) -> None:
        event = self.codec.decode_event(command.event)
        topic = scope_topic(conn.tenant, command.topic)
        offset = 1 + sum(d.topic == topic for d in self.log)
        d = Delivery(topic, offset, 0, len(self.log) + 1, self.now, event)
        self.log.append(d)
        conn.session.reply(
            command.id,
            PublishResult(
                offset=offset, shard=0, position=d.position, epoch=EPOCH, duplicate=False
            ),
        )
        # Encode the event once for this delivery, and each push once per pattern and tenant.
        event_bytes = self.codec.encode_event(event)
        self.event_encodings += 1
        pushes: dict[tuple[str, str], bytes] = {}
        for other in self.conns:
            if other.session.closed or (command.exclude_self and other is conn):
                continue
            for relative, absolute in other.patterns.items():
                if matches(absolute, topic):
                    key = (relative, other.tenant)
                    if key not in pushes:
                        pushes[key] = self.codec.encode_push(
                            relative, d, event_bytes, topic=unscope(other.tenant, topic)
                        )
                    other.session.push(pushes[key])

    def history(self, conn: Conn, command: History) -> None:
        absolute = scope_pattern(conn.tenant, command.pattern)
        after, exact = self._after(command.since)
        found = [d for d in self.log[after:] if matches(absolute, d.topic)][: command.limit]
        position = found[-1].position if found else len(self.log)
        events = [
            HistoryEvent(
                topic=unscope(conn.tenant, d.topic),
                offset=d.offset,
                shard=d.shard,
                position=d.position,
                event=msgspec.Raw(self.codec.encode_event(d.event)),
            )
            for d in found
        ]
        more = bool(found) and found[-1].position < len(self.log)
        conn.session.reply(
            command.id,
            HistoryResult(events=events, position=f"{EPOCH}-{position}", more=more, exact=exact),
        )


def event(n: int) -> Event:
    return Event(id=f"ev-{n}", source="/test", type="com.acme.edit", data={"n": n})


def received(conn: Conn) -> list[Received]:
    got = [e for e in conn.inbox if isinstance(e, Received)]
    conn.inbox[:] = [e for e in conn.inbox if not isinstance(e, Received)]
    return got


def answers(conn: Conn) -> list[Replied | Failed]:
    got = [e for e in conn.inbox if isinstance(e, (Replied, Failed))]
    conn.inbox[:] = [e for e in conn.inbox if not isinstance(e, (Replied, Failed))]
    return got


@codecs
def test_a_full_exchange(codec: WireCodec) -> None:
    server = FakeServer(codec)
    alice = server.connect("alice")
    bob = server.connect("bob")
    mallory = server.connect("mallory", tenant="evil")
    for conn in (alice, bob, mallory):
        [connected] = answers(conn)
        assert isinstance(connected, Replied)
        assert isinstance(connected.result, ConnectResult)
        assert connected.result.ping == 10.0

    bob.client.subscribe("docs/+")
    alice.client.subscribe("docs/#")
    mallory.client.subscribe("#")
    server.pump()
    assert all(isinstance(a, Replied) for c in (alice, bob, mallory) for a in answers(c))

    for n in range(1, 4):
        alice.client.publish("docs/1", event(n), exclude_self="connection" if n == 2 else None)
    server.pump()
    acks = answers(alice)
    assert [
        a.result.offset
        for a in acks
        if isinstance(a, Replied) and isinstance(a.result, PublishResult)
    ] == [1, 2, 3]
    assert server.event_encodings == 3  # once per delivery, whoever receives it

    got = received(bob)
    assert [(r.topic, r.offset, r.event) for r in got] == [
        ("docs/1", n, event(n)) for n in (1, 2, 3)
    ]
    assert [str(r.token) for r in got] == ["e1-1", "e1-2", "e1-3"]
    assert [r.event.id for r in received(alice)] == ["ev-1", "ev-3"]  # excluded herself once
    assert received(mallory) == []  # another tenant sees nothing
    token_after_two = got[1].token

    # Errors: one from the session, one from the server, the connection goes on.
    bob.client.subscribe("docs/+")
    bob.client.publish("bad//topic", event(9))
    server.pump()
    failed = answers(bob)
    assert [(f.code, type(f.command)) for f in failed if isinstance(f, Failed)] == [
        (ErrorCode.ALREADY_SUBSCRIBED, Subscribe),
        (ErrorCode.INVALID_TOPIC, Publish),
    ]

    # History.
    bob.client.history("docs/#", since="e1-1", limit=10)
    server.pump()
    [page] = answers(bob)
    assert isinstance(page, Replied)
    assert isinstance(page.result, HistoryPage)
    assert [i.event for i in page.result.events] == [event(2), event(3)]
    assert page.result.position == Position("e1", (3,))

    # Heartbeat: pings are answered by the client session on its own.
    for now in (10.0, 20.0, 30.0, 40.0):
        server.now = now
        for conn in server.conns:
            conn.session.tick(now)
            conn.client.tick(now)
        server.pump()
    assert not any(c.session.closed or c.client.closed for c in server.conns)

    # The server shuts down; bob reconnects and resumes after the second event.
    bob.session.close(CloseCode.SHUTDOWN, "restarting")
    server.pump()
    [bye] = [e for e in bob.inbox if isinstance(e, Disconnect)]
    assert bye.reconnect and reconnect_allowed(bob.client.close_code or 0)
    alice.client.publish("docs/2", event(4))  # published while bob is away
    server.pump()
    bob2 = server.connect("bob")
    bob2.client.subscribe("docs/+", since=token_after_two)
    server.pump()
    [resumed] = answers(bob2)[1:]
    assert isinstance(resumed, Replied)
    assert resumed.result == SubscribeResult(epoch="e1", position="e1-2", recovered=True)
    assert [(r.topic, r.event.id) for r in received(bob2)] == [
        ("docs/1", "ev-3"),
        ("docs/2", "ev-4"),
    ]
    alice.client.publish("docs/3", event(5))
    server.pump()
    assert [r.event.id for r in received(bob2)] == ["ev-5"]
    assert bob2.client.position("docs/+") == Position("e1", (5,))

    # A token from another epoch: recovered is False, live events still flow.
    bob2.client.unsubscribe("docs/+")
    bob2.client.subscribe("docs/+", since="e0-3")
    server.pump()
    last = answers(bob2)[-1]
    assert isinstance(last, Replied)
    assert last.result == SubscribeResult(epoch="e1", position="e1-5", recovered=False)


@codecs
def test_a_misbehaving_client_is_cut_off_and_the_others_carry_on(codec: WireCodec) -> None:
    server = FakeServer(codec)
    good = server.connect("good")
    bad = server.connect("bad")
    good.client.subscribe("a")
    server.pump()
    bad.session.receive_data(b"\x00\x01 garbage", 0.0)
    server.pump()
    assert bad.session.close_code is CloseCode.BAD_PROTOCOL
    assert bad.client.close_code == CloseCode.BAD_PROTOCOL  # told by the disconnect message
    assert not good.session.closed
    good.client.publish("a", event(1))
    server.pump()
    assert [r.event for r in received(good)] == [event(1)]
