"""Hypothesis strategies for every protocol message, in a given codec (imported by the tests)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

from hybridbus.core.event import Event
from hybridbus.proto.codec import WireCodec
from hybridbus.proto.frames import (
    ClientInfo,
    ClientMessage,
    Connect,
    ConnectResult,
    Disconnect,
    ErrorReply,
    EventPush,
    GroupAck,
    GroupEventPush,
    GroupExtend,
    GroupJoin,
    GroupJoinResult,
    GroupLeave,
    GroupLeaveResult,
    GroupNack,
    GroupTerm,
    History,
    HistoryEvent,
    HistoryResult,
    Join,
    Leave,
    Ping,
    PingResult,
    Pong,
    Presence,
    PresenceResult,
    Publish,
    PublishResult,
    Refresh,
    RefreshResult,
    Reply,
    Result,
    ServerMessage,
    ServerPing,
    SettleResult,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
    Unsubscribed,
    UnsubscribeResult,
)

ids = st.integers(1, 2**53 - 1)
texts = st.text(min_size=1, max_size=16)
maybe = st.none() | texts
ints = st.integers(0, 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
events = st.builds(
    Event,
    id=texts,
    source=texts,
    type=texts,
    subject=st.none() | texts,
    data=json_values,
    lamport=st.none() | st.integers(0, 2**31),
)
client_infos = st.builds(ClientInfo, client=texts, user=maybe, device=maybe, name=maybe)


def raw_events(codec: WireCodec) -> st.SearchStrategy[msgspec.Raw]:
    """A CloudEvent already in `codec`'s encoding, as it travels inside messages."""
    return events.map(lambda event: msgspec.Raw(codec.encode_event(event)))


def commands(codec: WireCodec) -> st.SearchStrategy[ClientMessage]:
    """Every client → server message."""
    return st.one_of(
        st.builds(Connect, id=ids, token=maybe, name=maybe, version=maybe, device=maybe),
        st.builds(Subscribe, id=ids, pattern=texts, since=maybe),
        st.builds(Unsubscribe, id=ids, pattern=texts),
        st.builds(
            Publish,
            id=ids,
            topic=texts,
            event=raw_events(codec),
            exclude_self=st.sampled_from([None, "connection", "device"]),
        ),
        st.builds(History, id=ids, pattern=texts, since=maybe, limit=st.integers(0, 1000)),
        st.builds(Presence, id=ids, topic=texts, watch=st.booleans()),
        st.builds(Ping, id=ids),
        st.builds(Refresh, id=ids, token=texts),
        st.builds(
            GroupJoin,
            id=ids,
            group=texts,
            pattern=maybe,
            settings=st.none() | st.dictionaries(texts, json_values, max_size=3),
            member=maybe,
        ),
        st.builds(GroupLeave, id=ids, group=texts),
        st.builds(
            GroupAck, id=ids, group=texts, deliveries=st.lists(texts, min_size=1, max_size=3)
        ),
        st.builds(
            GroupNack,
            id=ids,
            group=texts,
            delivery=texts,
            delay=st.none() | st.floats(0, 1e9),
            error=maybe,
        ),
        st.builds(
            GroupExtend, id=ids, group=texts, deliveries=st.lists(texts, min_size=1, max_size=3)
        ),
        st.builds(GroupTerm, id=ids, group=texts, delivery=texts, reason=maybe),
        st.just(Pong()),
    )


def history_events(codec: WireCodec) -> st.SearchStrategy[HistoryEvent]:
    return st.builds(
        HistoryEvent, topic=texts, offset=ints, shard=ints, position=ints, event=raw_events(codec)
    )


def results(codec: WireCodec) -> st.SearchStrategy[Result]:
    """The result of every command."""
    return st.one_of(
        st.builds(
            ConnectResult,
            client=texts,
            version=texts,
            ping=floats,
            max_frame_size=ints,
            tenant=maybe,
            expires=st.none() | floats,
        ),
        st.builds(SubscribeResult, epoch=texts, position=texts, recovered=st.booleans()),
        st.just(UnsubscribeResult()),
        st.builds(
            PublishResult,
            offset=ints,
            shard=ints,
            position=ints,
            epoch=texts,
            duplicate=st.booleans(),
        ),
        st.builds(
            HistoryResult,
            events=st.lists(history_events(codec), max_size=3),
            position=texts,
            more=st.booleans(),
            exact=st.booleans(),
        ),
        st.builds(PresenceResult, clients=st.lists(client_infos, max_size=3)),
        st.just(PingResult()),
        st.builds(RefreshResult, expires=st.none() | floats),
        st.builds(GroupJoinResult, group=texts, member=texts, pattern=texts),
        st.just(GroupLeaveResult()),
        st.just(SettleResult()),
    )


def _reply(codec: WireCodec) -> st.SearchStrategy[Reply]:
    def build(id: int, result: Any) -> Reply:
        return codec.decode_server_message(codec.encode_reply(id, result))  # type: ignore[return-value]

    return st.builds(build, ids, results(codec))


def server_messages(codec: WireCodec) -> st.SearchStrategy[ServerMessage]:
    """Every server → client message."""
    return st.one_of(
        _reply(codec),
        st.builds(ErrorReply, id=ids, code=ints, message=st.text(), retriable=st.booleans()),
        st.builds(
            EventPush,
            pattern=texts,
            topic=texts,
            offset=ints,
            shard=ints,
            position=ints,
            event=raw_events(codec),
        ),
        st.builds(
            GroupEventPush,
            group=texts,
            delivery=texts,
            attempt=ints,
            dedupe=texts,
            topic=texts,
            offset=ints,
            event=raw_events(codec),
        ),
        st.builds(Unsubscribed, pattern=texts, code=ints, reason=st.text()),
        st.builds(Join, topic=texts, info=client_infos),
        st.builds(Leave, topic=texts, info=client_infos),
        st.just(ServerPing()),
        st.builds(Disconnect, code=ints, reason=st.text(), reconnect=st.booleans()),
    )
