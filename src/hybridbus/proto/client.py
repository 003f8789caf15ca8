"""The client side of one connection, sans-I/O: `ClientSession` and what it hands out.

Owns: encoding commands with increasing ids, matching each reply to its
command and decoding its result into the struct that command expects, the
exactly-once rule for pushes (a push is handed out only if its position lies
past the last one seen in its shard, per subscription), each subscription's
resume token, which consumer groups are joined (their `group_event` pushes
are handed out as `GroupReceived` while joined), and the client's half of
the heartbeat. Must not do I/O, start
tasks or read clocks; reconnecting, backoff and futures belong to the client
library built on it, which carries `position(pattern)` over to the next
session as `since`.

Like `ServerSession`, it never raises on what the peer sent: a server
message it cannot use closes it with BAD_PROTOCOL (`close_code`, and the cause
in `close_cause`), a `disconnect` closes it with the server's code, and
messages of an unknown type are skipped (a newer server may send them).
Caller misuse (a command before the connect reply, after the close) raises
`RuntimeError`.

    state       what may be sent       left by
    NEW         connect                connect()
    CONNECTING  nothing                the connect reply (or a close)
    CONNECTED   every other command    close, disconnect, silence
    CLOSED      nothing
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.filters import Filter
from hybridbus.core.log import Position
from hybridbus.errors import BusError, ErrorCode, EventTooLarge, InvalidEvent, ProtocolError
from hybridbus.proto.codec import Data, WireCodec
from hybridbus.proto.codes import CloseCode
from hybridbus.proto.frames import (
    RESULT_TYPES,
    AwarenessPush,
    Command,
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
    GroupLeft,
    GroupNack,
    GroupTerm,
    History,
    HistoryResult,
    Join,
    Leave,
    Ping,
    PingResult,
    Pong,
    Presence,
    PresenceChanged,
    PresenceResult,
    Publish,
    PublishResult,
    Refresh,
    RefreshResult,
    Reply,
    ServerMessage,
    ServerPing,
    SettleResult,
    StatePush,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
    Unsubscribed,
    UnsubscribeResult,
)
from hybridbus.proto.session import Outbox, SessionConfig, State

__all__ = [
    "ClientEvent",
    "ClientResult",
    "ClientSession",
    "Ended",
    "Failed",
    "GroupEnded",
    "GroupReceived",
    "HistoryItem",
    "HistoryPage",
    "Received",
    "Replied",
]


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One retained event of a history page."""

    topic: str
    offset: int
    shard: int
    position: int
    event: Event


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A decoded `HistoryResult`: events oldest first, and the token to go on from."""

    events: list[HistoryItem]
    position: Position
    more: bool
    exact: bool


ClientResult = (
    ConnectResult
    | SubscribeResult
    | UnsubscribeResult
    | PublishResult
    | HistoryPage
    | PresenceResult
    | PingResult
    | RefreshResult
    | GroupJoinResult
    | GroupLeaveResult
    | SettleResult
)


@dataclass(frozen=True, slots=True)
class Replied:
    """Command `id` succeeded; `result` is the struct its command type returns."""

    id: int
    command: Command
    result: ClientResult


@dataclass(frozen=True, slots=True)
class Failed:
    """Command `id` was refused with an `ErrorCode` (`retriable`: it may succeed later).

    `node` and `url` come with NOT_COORDINATOR (1405): where the group's coordinator is.
    """

    id: int
    command: Command
    code: int
    message: str
    retriable: bool
    node: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class Received:
    """A pushed event, seen for the first time; `token` is the resume token after it."""

    pattern: str
    topic: str
    offset: int
    shard: int
    position: int
    event: Event
    token: Position


class GroupReceived(msgspec.Struct, frozen=True):
    """A delivery of consumer group `group` to this connection's member.

    Settle it by `delivery` (its id) with `ack`, `nack`, `extend` or `term`;
    unsettled, it comes back to the group after its lease (`ack_wait`).
    A struct, not a dataclass like the others: one is made per delivery, and
    a struct is made ten times faster.
    """

    group: str
    delivery: str
    attempt: int
    dedupe: str
    topic: str
    offset: int
    event: Event


@dataclass(frozen=True, slots=True)
class Ended:
    """The server ended the subscription to `pattern`; resubscribe from `position`."""

    pattern: str
    code: int
    reason: str
    position: Position


@dataclass(frozen=True, slots=True)
class GroupEnded:
    """The server ended the membership of `group` (e.g. 1401: it was deleted)."""

    group: str
    code: int
    reason: str


ClientEvent = (
    Replied | Failed | Received | GroupReceived | Ended | GroupEnded | Join | Leave | Disconnect
) | PresenceChanged | AwarenessPush | StatePush


class _Subscription:
    __slots__ = ("epoch", "positions")

    def __init__(self, position: Position) -> None:
        self.epoch = position.epoch
        self.positions = list(position.positions)

    def position(self) -> Position:
        return Position(self.epoch, tuple(self.positions))


class _Violation(Exception):
    """The server broke the protocol; carries the reason (internal to this module)."""


class ClientSession:
    """One connection's protocol state, as the client sees it (see the module docstring)."""

    def __init__(
        self, codec: WireCodec, config: SessionConfig | None = None, *, now: float
    ) -> None:
        self.codec = codec
        self.config = config = config or SessionConfig()
        self.state = State.NEW
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.close_cause: BusError | None = None
        self.connect_result: ConnectResult | None = None
        self._outbox = Outbox(codec, config.max_frame_size)
        self._max_frame = config.max_frame_size
        self._pending: dict[int, Command] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._groups: set[str] = set()  # the groups joined (their group_join answered)
        self._left: dict[str, int] = {}  # group -> the id of its last group_leave
        self._next_id = 1
        self._started = now
        self._heard = now
        self._pong = codec.encode(Pong())

    # -- what the client library reads ------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session closed (`close_code` says why)."""
        return self.state is State.CLOSED

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet taken by `data_to_send`."""
        return self._outbox.size

    @property
    def in_flight(self) -> dict[int, Command]:
        """The commands awaiting their reply, by id (a copy)."""
        return dict(self._pending)

    def position(self, pattern: str) -> Position | None:
        """The resume token of the subscription to `pattern` (None: not subscribed)."""
        sub = self._subscriptions.get(pattern)
        return None if sub is None else sub.position()

    # -- commands (each returns its id) -------------------------------------------

    def connect(
        self,
        *,
        token: str | None = None,
        name: str | None = None,
        version: str | None = None,
        device: str | None = None,
        session: str | None = None,
    ) -> int:
        """Queue the connect (`session`: continue it); the other commands wait for its reply."""
        if self.state is not State.NEW:
            raise RuntimeError(f"connect() is the first command, the session is {self.state}")
        connect = Connect(id=self._next_id, token=token, name=name, version=version,
                          device=device, session=session)  # fmt: skip
        command_id = self._send(connect)
        self.state = State.CONNECTING
        return command_id

    def subscribe(
        self,
        pattern: str,
        since: Position | str | None = None,
        *,
        filter: Filter | None = None,
    ) -> int:
        """Subscribe to `pattern`; with `since`, missed events come first; `filter`: server-side."""
        return self._command(
            Subscribe(
                id=self._next_id,
                pattern=pattern,
                since=None if since is None else str(since),
                filter=filter,
            )
        )

    def unsubscribe(self, pattern: str) -> int:
        """End the subscription to `pattern`; its pushes stop being handed out now."""
        command_id = self._command(Unsubscribe(id=self._next_id, pattern=pattern))
        self._subscriptions.pop(pattern, None)
        return command_id

    def publish(
        self,
        topic: str,
        event: Event,
        *,
        exclude_self: Literal["connection", "device"] | None = None,
    ) -> int:
        """Publish `event` to `topic`. Raises `InvalidEvent` / `EventTooLarge` for a bad event."""
        raw = msgspec.Raw(self.codec.encode_event(event))
        return self._command(
            Publish(id=self._next_id, topic=topic, event=raw, exclude_self=exclude_self)
        )

    def history(
        self, pattern: str, *, since: Position | str | float | None = None, limit: int = 100
    ) -> int:
        """Ask for up to `limit` retained events of `pattern` after `since` (a float: a time)."""
        if isinstance(since, float):  # a Unix time: from the first event appended at or after
            command = History(id=self._next_id, pattern=pattern, since_time=since, limit=limit)
        else:
            token = None if since is None else str(since)
            command = History(id=self._next_id, pattern=pattern, since=token, limit=limit)
        return self._command(command)

    def presence(self, topic: str, *, watch: bool = False, limit: int | None = None,
                 cursor: str | None = None) -> int:  # fmt: skip
        """Ask who is subscribed to `topic` (`limit`, `cursor`: a page); `watch`: push changes."""
        command = Presence(id=self._next_id, topic=topic, watch=watch, limit=limit, cursor=cursor)
        return self._command(command)

    def ping(self) -> int:
        """A round trip to the server."""
        return self._command(Ping(id=self._next_id))

    def command(self, make: Callable[[int], Command]) -> int:
        """Send the command `make(id)` builds (awareness and state commands: `client.collab`)."""
        return self._command(make(self._next_id))

    def refresh(self, token: str) -> int:
        """Hand the server a fresh token before the current one expires."""
        return self._command(Refresh(id=self._next_id, token=token))

    def group_join(
        self,
        group: str,
        pattern: str | None = None,
        *,
        settings: dict[str, Any] | None = None,
        member: str | None = None,
    ) -> int:
        """Join consumer group `group` (created over `pattern` with `settings` if missing)."""
        return self._command(
            GroupJoin(
                id=self._next_id, group=group, pattern=pattern, settings=settings, member=member
            )
        )

    def group_leave(self, group: str) -> int:
        """Leave `group`; its pushes stop being handed out now."""
        command_id = self._command(GroupLeave(id=self._next_id, group=group))
        self._groups.discard(group)
        self._left[group] = command_id
        return command_id

    def ack(self, group: str, deliveries: list[str]) -> int:
        """Ack deliveries of `group` by id (from any connection); answered once durable."""
        return self._command(GroupAck(id=self._next_id, group=group, deliveries=deliveries))

    def nack(
        self, group: str, delivery: str, *, delay: float | None = None, error: str | None = None
    ) -> int:
        """The delivery failed: it comes back after `delay` s (None: the group's backoff)."""
        return self._command(
            GroupNack(id=self._next_id, group=group, delivery=delivery, delay=delay, error=error)
        )

    def extend(self, group: str, deliveries: list[str]) -> int:
        """Start the leases of these deliveries over."""
        return self._command(GroupExtend(id=self._next_id, group=group, deliveries=deliveries))

    def term(self, group: str, delivery: str, *, reason: str | None = None) -> int:
        """Give up on the delivery now: it goes to the group's dead letters."""
        return self._command(
            GroupTerm(id=self._next_id, group=group, delivery=delivery, reason=reason)
        )

    def _command(self, command: Command) -> int:
        if self.state is not State.CONNECTED:
            raise RuntimeError(f"commands wait for the connect reply; the session is {self.state}")
        return self._send(command)

    def _send(self, command: Command) -> int:
        encoded = self.codec.encode(command)
        if len(encoded) > self._max_frame:
            if isinstance(command, Publish):
                raise EventTooLarge(len(encoded), self._max_frame)
            raise ValueError(f"the command is {len(encoded)} bytes, over the frame limit")
        self._pending[command.id] = command
        self._next_id += 1
        self._outbox.add(encoded)
        return command.id

    # -- incoming -----------------------------------------------------------------

    def receive_data(self, data: Data, now: float) -> list[ClientEvent]:
        """What one WebSocket message from the server means; never raises on its content."""
        if self.state is State.CLOSED:
            return []
        self._heard = now
        codec = self.codec
        events: list[ClientEvent] = []
        try:
            for chunk in codec.split(data):
                try:
                    message = codec.decode_server_message(chunk)
                except ProtocolError as exc:
                    if exc.code is ErrorCode.UNKNOWN_COMMAND:
                        continue  # a newer server's message: skip it
                    raise
                event = self._handle(message)
                if event is not None:
                    events.append(event)
                if self.closed:  # a disconnect: the rest of the frame is moot
                    break
        except (ProtocolError, InvalidEvent) as exc:
            self._fail(str(exc), exc)
            return []
        except _Violation as exc:
            self._fail(str(exc), None)
            return []
        return events

    def _handle(self, message: ServerMessage) -> ClientEvent | None:
        if isinstance(message, EventPush):
            return self._received(message)
        if isinstance(message, GroupEventPush):
            if message.group not in self._groups:
                return None  # in flight while leaving
            return GroupReceived(
                message.group,
                message.delivery,
                message.attempt,
                message.dedupe,
                message.topic,
                message.offset,
                self.codec.decode_event(message.event),
            )
        if isinstance(message, Reply):
            return self._replied(message)
        if isinstance(message, ErrorReply):
            command = self._answered(message.id)
            return Failed(
                message.id,
                command,
                message.code,
                message.message,
                message.retriable,
                message.node or "",
                message.url or "",
            )
        if isinstance(message, ServerPing):
            if self.state is State.CONNECTED:
                self._outbox.add(self._pong)
            return None
        if isinstance(message, GroupLeft):
            if message.group not in self._groups:
                return None
            self._groups.discard(message.group)
            return GroupEnded(message.group, message.code, message.reason)
        if isinstance(message, Unsubscribed):
            sub = self._subscriptions.pop(message.pattern, None)
            if sub is None:
                return None
            return Ended(message.pattern, message.code, message.reason, sub.position())
        if isinstance(message, Disconnect):
            self.close(message.code, message.reason)
            return message
        return message  # Join, Leave, PresenceChanged

    def _received(self, push: EventPush) -> Received | None:
        sub = self._subscriptions.get(push.pattern)
        if sub is None:
            return None  # in flight while unsubscribing, or before the subscribe reply
        positions = sub.positions
        shard = push.shard
        if not 0 <= shard < len(positions):
            raise _Violation(f"a push for shard {shard} of a {len(positions)}-shard log")
        if push.position <= positions[shard]:
            return None  # seen already (history and live overlapped)
        event = self.codec.decode_event(push.event)
        positions[shard] = push.position
        return Received(
            push.pattern,
            push.topic,
            push.offset,
            shard,
            push.position,
            event,
            Position(sub.epoch, tuple(positions)),
        )

    def _replied(self, reply: Reply) -> Replied:
        command = self._answered(reply.id)
        codec = self.codec
        result_type = RESULT_TYPES[type(command)]
        decoded: Any = codec.decode_result(reply.result, result_type)
        result: ClientResult = decoded
        if isinstance(command, Connect):
            self.connect_result = decoded
            self.state = State.CONNECTED
            if decoded.max_frame_size > 0:
                self._max_frame = decoded.max_frame_size
        elif isinstance(command, Subscribe):
            self._subscriptions[command.pattern] = _Subscription(_parse(decoded.position))
        elif isinstance(command, GroupJoin) and self._left.get(command.group, 0) < command.id:
            self._groups.add(command.group)  # (not if a group_leave followed the join)
        elif isinstance(decoded, HistoryResult):
            result = HistoryPage(
                [
                    HistoryItem(e.topic, e.offset, e.shard, e.position, codec.decode_event(e.event))
                    for e in decoded.events
                ],
                _parse(decoded.position),
                decoded.more,
                decoded.exact,
            )
        return Replied(reply.id, command, result)

    def _answered(self, id: int) -> Command:
        command = self._pending.pop(id, None)
        if command is None:
            raise _Violation(f"an answer to command {id}, which is not awaiting one")
        return command

    # -- outgoing and time ----------------------------------------------------------

    def data_to_send(self) -> bytes | None:
        """ONE frame of the commands queued since the last call, or None."""
        return self._outbox.take_frame()

    def tick(self, now: float) -> None:
        """Close with NO_PING if the server is silent (no connect reply, no ping) too long."""
        state = self.state
        if state is State.CONNECTING:
            if now - self._started >= self.config.connect_timeout:
                self.close(CloseCode.NO_PING, "no connect reply in time")
        elif state is State.CONNECTED and self.connect_result is not None:
            interval = self.connect_result.ping
            if interval > 0 and now - self._heard >= 2 * interval:
                self.close(CloseCode.NO_PING, f"nothing heard for {2 * interval:g} s")

    def close(self, code: int, reason: str) -> None:
        """Close (the first close wins); the library then closes the WebSocket with `code`."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._outbox.clear()

    def _fail(self, reason: str, cause: BusError | None) -> None:
        if self.state is not State.CLOSED:
            self.close_cause = cause
        self.close(CloseCode.BAD_PROTOCOL, reason)


def _parse(token: str) -> Position:
    try:
        return Position.parse(token)
    except BusError as exc:
        raise _Violation(f"the server sent a malformed position: {exc}") from exc
