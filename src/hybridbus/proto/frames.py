"""The messages of the client protocol, as typed tagged unions.

Owns: every message a client and a server exchange (docs/protocol.md is the
specification), one `type` tag per message, the result of each command, and
the limits on their fields. Must not do I/O, nor know about the bus or a
codec: an event travels as `msgspec.Raw`, the bytes of a CloudEvent already
in the subprotocol's encoding (see `proto.codec`), so that one encoding of an
event is shared by every push that carries it.

Direction matters: `ClientMessage` (a `Command` or a `Pong`) goes client →
server, `ServerMessage` server → client; each direction is its own union, so
both may use the tag `ping`. Every command carries an `id` chosen by the
client and is answered by exactly one `Reply` or `ErrorReply` with that id.

Topics and patterns here are RELATIVE to the connection's tenant: the server
scopes them (`core.topics.scope_topic` / `scope_pattern`) and unscopes the
topics it pushes; the protocol layer never does.

Commands refuse unknown fields (a client learns that a server does not know an
option instead of having it ignored); server messages and results allow them
(a newer server may add fields, an older client skips them).

The consumer-group messages live in `proto.frames_groups`, the awareness and
state-topic ones in `proto.frames_collab`; this module puts them in its unions
and re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from hybridbus.core.filters import Filter
from hybridbus.proto.frames_collab import (
    AwarenessCommand,
    AwarenessPush,
    AwarenessResult,
    AwarenessSet,
    AwarenessSetResult,
    AwarenessState,
    AwarenessUnwatch,
    AwarenessWatch,
    StateCommand,
    StatePatch,
    StatePatchResult,
    StatePush,
    StateResult,
    StateSubscribe,
    StateUnsubscribe,
)
from hybridbus.proto.frames_groups import (
    MAX_SETTLE_IDS,
    GroupAck,
    GroupCommand,
    GroupEventPush,
    GroupExtend,
    GroupJoin,
    GroupJoinResult,
    GroupLeave,
    GroupLeaveResult,
    GroupLeft,
    GroupNack,
    GroupTerm,
    SettleResult,
)

__all__ = [
    "MAX_HISTORY_LIMIT",
    "MAX_PRESENCE_LIMIT",
    "MAX_SETTLE_IDS",
    "RESULT_TYPES",
    "AwarenessCommand",
    "AwarenessPush",
    "AwarenessResult",
    "AwarenessSet",
    "AwarenessSetResult",
    "AwarenessState",
    "AwarenessUnwatch",
    "AwarenessWatch",
    "ClientInfo",
    "ClientMessage",
    "Command",
    "Connect",
    "ConnectResult",
    "Disconnect",
    "ErrorReply",
    "EventPush",
    "GroupAck",
    "GroupCommand",
    "GroupEventPush",
    "GroupExtend",
    "GroupJoin",
    "GroupJoinResult",
    "GroupLeave",
    "GroupLeaveResult",
    "GroupLeft",
    "GroupNack",
    "GroupTerm",
    "History",
    "HistoryEvent",
    "HistoryResult",
    "Join",
    "Leave",
    "Ping",
    "PingResult",
    "Pong",
    "Presence",
    "PresenceChanged",
    "PresenceResult",
    "Publish",
    "PublishResult",
    "Refresh",
    "RefreshResult",
    "Reply",
    "Result",
    "ServerMessage",
    "ServerPing",
    "SettleResult",
    "StateCommand",
    "StatePatch",
    "StatePatchResult",
    "StatePush",
    "StateResult",
    "StateSubscribe",
    "StateUnsubscribe",
    "Subscribe",
    "SubscribeResult",
    "Unsubscribe",
    "UnsubscribeResult",
    "Unsubscribed",
]

MAX_HISTORY_LIMIT: Final = 1000

# Command ids fit a JavaScript number exactly.
CommandId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# Topic and pattern syntax, their length included, is the server's to check: it answers
# 1002 / 1003 as protocol.md §9 says (the frame size bounds what arrives here).
TopicText = str
PositionText = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=MAX_HISTORY_LIMIT)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
SessionToken = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# Members one `presence` page may hold, and its cursor (opaque to the client).
MAX_PRESENCE_LIMIT: Final = 10_000
PresenceLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PRESENCE_LIMIT)]
PageCursor = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


# -- client → server -----------------------------------------------------------


class _Command(msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=True):
    # Not kw_only, so that `id` comes first on the wire; construct with keywords.
    id: CommandId


class Connect(_Command, tag="connect"):
    """First command of a connection: credentials and who the client is."""

    token: Token | None = None
    name: Label | None = None  # the client software, e.g. "hybridbus-py"
    version: Label | None = None  # its version
    device: Label | None = None  # groups connections for exclude_self="device"
    # The `session` of an earlier ConnectResult: continue that session (docs/protocol.md §4.1).
    session: SessionToken | None = None


class Subscribe(_Command, tag="subscribe"):
    """Subscribe to a topic or pattern; with `since`, missed events come first.

    With `filter`, only the events it lets through are pushed (`core.filters`;
    the server checks it: 1000 if it refuses it).
    """

    pattern: TopicText
    since: PositionText | None = None
    filter: Filter | None = None


class Unsubscribe(_Command, tag="unsubscribe"):
    """End the subscription to `pattern`."""

    pattern: TopicText


class Publish(_Command, tag="publish"):
    """Publish an event (a CloudEvent in the subprotocol's encoding) to a topic."""

    topic: TopicText
    event: msgspec.Raw
    exclude_self: Literal["connection", "device"] | None = None


class History(_Command, tag="history"):
    """Up to `limit` retained events of a topic or pattern after `since`, oldest first."""

    pattern: TopicText
    since: PositionText | None = None
    limit: Limit = 100
    filter: Filter | None = None  # only what it lets through (`limit` counts what was read)
    # Instead of `since`: from the first event appended at or after this Unix time.
    since_time: Seconds | None = None


class Presence(_Command, tag="presence"):
    """Who is subscribed to a topic; `watch` asks for join/leave/presence pushes too.

    With `limit`, one page of at most that many members, oldest first, from
    after `cursor` (the previous page's); without it, every member.
    """

    topic: TopicText
    watch: bool = False
    limit: PresenceLimit | None = None
    cursor: PageCursor | None = None


class Ping(_Command, tag="ping"):
    """Round trip: answered with an empty result."""


class Refresh(_Command, tag="refresh"):
    """A fresh token for the open connection, before the current one expires."""

    token: Token


Command = (
    Connect
    | Subscribe
    | Unsubscribe
    | Publish
    | History
    | Presence
    | Ping
    | Refresh
    | GroupJoin
    | GroupLeave
    | GroupAck
    | GroupNack
    | GroupExtend
    | GroupTerm
    | AwarenessSet
    | AwarenessWatch
    | AwarenessUnwatch
    | StateSubscribe
    | StateUnsubscribe
    | StatePatch
)


class Pong(msgspec.Struct, tag_field="type", tag="pong", forbid_unknown_fields=True):
    """The answer to a server's `ping`; has no id and gets no reply."""


ClientMessage = Command | Pong


# -- server → client -------------------------------------------------------------


class _Server(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class Reply(_Server, tag="reply"):
    """The success answer to command `id`; `result` is the command's result struct."""

    id: int
    result: msgspec.Raw


class ErrorReply(_Server, tag="error"):
    """The failure answer to command `id`: an `ErrorCode` and a message for humans.

    NOT_COORDINATOR (1405) also names the node coordinating the group
    (`node`) and its WebSocket URL (`url`, absent if the registry does not know it).
    """

    id: int
    code: int
    message: str
    retriable: bool
    node: str | None = None
    url: str | None = None


class EventPush(_Server, tag="event"):
    """One delivery for the subscription `pattern`.

    `position` is the event's position in log shard `shard`: the client's
    resume token after it is the subscription's token with that shard's
    number replaced by `position`.
    """

    pattern: str
    topic: str
    offset: int
    shard: int
    position: int
    event: msgspec.Raw


class Unsubscribed(_Server, tag="unsubscribed"):
    """The server ended the subscription to `pattern` (an `ErrorCode` says why).

    After a 12xx code, subscribe again from the last position: nothing is lost
    (or the reply says `recovered: false`).
    """

    pattern: str
    code: int
    reason: str


class ClientInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A connected client as presence shows it.

    `session` is its session's public id (the same across the connections
    that continue it; docs/protocol.md "Sessions"); `state` is "degraded"
    while its connection is gone and the session waits for it (omitted: "active").
    """

    client: str
    user: str | None = None
    device: str | None = None
    name: str | None = None
    session: str | None = None
    state: Literal["active", "degraded"] = "active"


class Join(_Server, tag="join"):
    """A client subscribed to a watched `topic`."""

    topic: str
    info: ClientInfo


class Leave(_Server, tag="leave"):
    """A client left a watched `topic`."""

    topic: str
    info: ClientInfo


class PresenceChanged(_Server, tag="presence"):
    """A member of a watched `topic` changed `state` ("degraded", then "active" or a `leave`)."""

    topic: str
    info: ClientInfo
    state: Literal["active", "degraded"]


class ServerPing(_Server, tag="ping"):
    """Heartbeat: the client answers with a `pong`."""


class Disconnect(_Server, tag="disconnect"):
    """The last message before the server closes; `code` is a `CloseCode`."""

    code: int
    reason: str
    reconnect: bool


ServerMessage = (
    Reply
    | ErrorReply
    | EventPush
    | GroupEventPush
    | GroupLeft
    | Unsubscribed
    | Join
    | Leave
    | PresenceChanged
    | AwarenessPush
    | StatePush
    | ServerPing
    | Disconnect
)


# -- results (the `result` of a `Reply`) -------------------------------------------


class _Result(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class ConnectResult(_Result):
    """Who the connection is, and the limits it must keep.

    `ping` and `max_frame_size` are filled in by the `ServerSession` from its
    config; the server sets the rest.
    """

    client: str  # this connection's id, as presence shows it
    version: str  # the server's version
    ping: float = 0.0  # seconds between server pings; be silent for two and be closed
    max_frame_size: int = 0  # the largest frame the server accepts, in bytes
    tenant: str | None = None  # the tenant topics are relative to
    expires: float | None = None  # Unix time the token expires
    # The session: present `session` in the next connect to continue it within
    # `grace` seconds of a drop; `resumed` says this connect continued one.
    session: str | None = None
    resumed: bool = False
    grace: float | None = None


class SubscribeResult(_Result):
    """Where the subscription starts: `position` is its resume token now.

    `recovered` is False when `since` could not be honoured exactly (another
    epoch, or retention removed missed events).
    """

    epoch: str
    position: str
    recovered: bool


class UnsubscribeResult(_Result):
    """Nothing: the subscription is over."""


class PublishResult(_Result):
    """Where the event went; for a duplicate, where the original went.

    `token` is the resume token right after the event: `since=token` gives
    exactly the later events of its topic (docs/protocol.md §5.3 says what it
    holds for other shards). `position` alone is one shard's log position, not
    a token. None only from a server older than the field.
    """

    offset: int
    shard: int
    position: int
    epoch: str
    duplicate: bool
    token: str | None = None


class HistoryEvent(_Result):
    """One retained event of a history page."""

    topic: str
    offset: int
    shard: int
    position: int
    event: msgspec.Raw


class HistoryResult(_Result):
    """A page of history; `position` is the token to continue from (as `since`)."""

    events: list[HistoryEvent]
    position: str
    more: bool
    exact: bool


class PresenceResult(_Result):
    """The clients subscribed to the topic (a page of them, with `limit`).

    `count` is how many members the topic has; `cursor`, with `limit`, is where
    the next page starts (absent: this was the last page).
    """

    clients: list[ClientInfo]
    count: int | None = None
    cursor: str | None = None


class PingResult(_Result):
    """Nothing: the round trip is the answer."""


class RefreshResult(_Result):
    """When the new token expires (Unix time), if it does."""

    expires: float | None = None


Result = (
    ConnectResult
    | SubscribeResult
    | UnsubscribeResult
    | PublishResult
    | HistoryResult
    | PresenceResult
    | PingResult
    | RefreshResult
    | GroupJoinResult
    | GroupLeaveResult
    | SettleResult
    | AwarenessResult
    | AwarenessSetResult
    | StateResult
    | StatePatchResult
)

# The result a successful reply to each command carries.
RESULT_TYPES: Final[dict[type[Command], type[Result]]] = {
    Connect: ConnectResult,
    Subscribe: SubscribeResult,
    Unsubscribe: UnsubscribeResult,
    Publish: PublishResult,
    History: HistoryResult,
    Presence: PresenceResult,
    Ping: PingResult,
    Refresh: RefreshResult,
    GroupJoin: GroupJoinResult,
    GroupLeave: GroupLeaveResult,
    GroupAck: SettleResult,
    GroupNack: SettleResult,
    GroupExtend: SettleResult,
    GroupTerm: SettleResult,
    AwarenessSet: AwarenessSetResult,
    AwarenessWatch: AwarenessResult,
    AwarenessUnwatch: AwarenessResult,
    StateSubscribe: StateResult,
    StateUnsubscribe: StateResult,
    StatePatch: StatePatchResult,
}
