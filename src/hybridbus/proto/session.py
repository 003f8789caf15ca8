"""The server side of one connection, sans-I/O: `ServerSession` and its `SessionConfig`.

Owns: the protocol state of one connection as the server sees it — the
connect handshake, which commands are allowed when, which ones are in flight,
which patterns are subscribed and which consumer groups joined, the
heartbeat, the outbox with its bound and its coalescing into frames, and why
the connection was closed. Must not do
I/O, start tasks, read clocks (time comes in as `now`), or know about the bus:
the server drives it and executes the commands it hands out.

Theory of operation (as in h11 and websockets). The server feeds every
WebSocket message it reads to `receive_data(data, now)` and gets back the
commands to execute; it answers each one with `reply` or `error`, queues
deliveries with `push`, calls `tick(now)` from a timer, and once per loop tick
takes ONE frame of everything queued with `data_to_send()` (the
write-coalescing point), while the transport is writable. When `closed`
turns True it sends what `data_to_send()` still returns, then closes the
WebSocket with `close_code` and `close_reason`.

The parser never raises on peer input. A frame it cannot use closes the
connection with a `CloseCode` and keeps the cause (`close_cause`); a single
bad command whose id is readable is answered with an `ErrorReply` and the
rest of the frame goes on. A frame that closes the connection is dropped
whole: none of its commands is handed out. Caller misuse (replying to an id
that is not in flight, pushing before `accept`) raises `RuntimeError` or
`ValueError`; after the session closed, outgoing calls are ignored, since
commands still running on the server may complete after a close.

States and what each incoming message does (anything else closes with
BAD_PROTOCOL):

    state       message      action                            next state
    NEW         connect      hand it out                       CONNECTING
    CONNECTING  (none)       the server calls accept/reject    CONNECTED/CLOSED
    CONNECTED   pong         note the peer is alive            CONNECTED
    CONNECTED   other cmd    hand it out, or answer an error   CONNECTED
    CLOSED      anything     ignored                           CLOSED

and in every open state: a frame over `max_frame_size` closes with
MESSAGE_TOO_LARGE; silence closes with NO_PING (no connect within
`connect_timeout`, or nothing heard for two ping intervals); an outbox over
`max_pending_bytes` closes with SLOW_CONSUMER and drops what was queued.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

import msgspec

from hybridbus.errors import BusError, ErrorCode, NotCoordinator, ProtocolError, public_message
from hybridbus.proto.codec import Data, WireCodec
from hybridbus.proto.codes import CloseCode, reconnect_allowed, retriable
from hybridbus.proto.frames import (
    ClientMessage,
    Command,
    Connect,
    ConnectResult,
    Disconnect,
    ErrorReply,
    GroupJoin,
    GroupLeave,
    GroupLeft,
    Pong,
    Result,
    ServerPing,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
)

__all__ = ["ServerSession", "SessionConfig", "State"]


class SessionConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Limits and timings of one connection (both sides; the server's are the rule)."""

    ping_interval: float = 25.0  # seconds between server pings; 0 turns the heartbeat off
    connect_timeout: float = 10.0  # seconds a new connection has to send its connect
    max_frame_size: int = 1 << 20  # bytes a peer's frame may hold
    max_pending_bytes: int = 8 << 20  # bytes queued for the peer before SLOW_CONSUMER
    max_in_flight: int = 1000  # commands awaiting their reply
    max_subscriptions: int = 1000  # patterns one connection may subscribe to
    max_groups: int = 100  # consumer groups one connection may be a member of

    def __post_init__(self) -> None:
        if self.ping_interval < 0 or self.connect_timeout <= 0:
            raise ValueError("ping_interval must be >= 0 and connect_timeout > 0")
        if min(self.max_frame_size, self.max_pending_bytes) < 1024:
            raise ValueError("max_frame_size and max_pending_bytes must be >= 1024")
        if min(self.max_in_flight, self.max_subscriptions, self.max_groups) < 1:
            raise ValueError("max_in_flight, max_subscriptions and max_groups must be >= 1")


class State(Enum):
    """Where a session is in its life (see the module docstring)."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class _Do(Enum):
    PASS = "pass"  # hand the command to the server
    ABSORB = "absorb"  # the session handles it itself
    VIOLATE = "violate"  # out of order: close with BAD_PROTOCOL


# (state, message type) -> (action, next state); a missing entry is `_DEFAULT[state]`.
_TABLE: Final[dict[tuple[State, type[ClientMessage]], tuple[_Do, State]]] = {
    (State.NEW, Connect): (_Do.PASS, State.CONNECTING),
    (State.CONNECTED, Connect): (_Do.VIOLATE, State.CLOSED),
    (State.CONNECTED, Pong): (_Do.ABSORB, State.CONNECTED),
}
_DEFAULT: Final[dict[State, tuple[_Do, State]]] = {
    State.NEW: (_Do.VIOLATE, State.CLOSED),
    State.CONNECTING: (_Do.VIOLATE, State.CLOSED),
    State.CONNECTED: (_Do.PASS, State.CONNECTED),
}


def frame_size(data: Data) -> int:
    """The size of a WebSocket message's payload in bytes (text counts as UTF-8)."""
    if isinstance(data, str):
        # A character is 1-4 bytes: only encode when the count could matter.
        return len(data.encode("utf-8", "surrogatepass")) if not data.isascii() else len(data)
    return data.nbytes if isinstance(data, memoryview) else len(data)


class Outbox:
    """Encoded messages waiting to go out, cut into frames of at most `max_frame_size`."""

    __slots__ = ("_codec", "_max_frame", "messages", "size")

    def __init__(self, codec: WireCodec, max_frame_size: int) -> None:
        self._codec = codec
        # The frame's own bytes: "\n" per message (JSON) or an array header (<= 5).
        self._max_frame = max_frame_size
        self.messages: list[bytes] = []
        self.size = 0

    def add(self, encoded: bytes) -> None:
        self.messages.append(encoded)
        self.size += len(encoded)

    def clear(self) -> None:
        self.messages = []
        self.size = 0

    def take_frame(self) -> bytes | None:
        """ONE frame of the oldest queued messages (all of them unless over the frame size)."""
        messages = self.messages
        if not messages:
            return None
        if self.size + len(messages) + 5 <= self._max_frame or len(messages) == 1:
            self.messages = []
            self.size = 0
            return self._codec.frame(messages)
        # Over the frame size: the longest prefix that fits (at least one message).
        budget = self._max_frame - 5
        count = 0
        taken = 0
        for message in messages:
            cost = len(message) + 1
            if count and taken + cost > budget:
                break
            taken += cost
            count += 1
        head = messages[:count]
        del messages[:count]
        self.size -= taken - count
        return self._codec.frame(head)


def error_fields(error: BaseException | ErrorCode, message: str | None) -> tuple[int, str, bool]:
    """The (code, message, retriable) an `ErrorReply` carries for `error`.

    A `BusError` speaks for itself; a bare `ErrorCode` needs `message`; any
    other exception is an internal error and its details stay out of the reply.
    """
    if isinstance(error, ErrorCode):
        return int(error), message or error.name.lower().replace("_", " "), retriable(error)
    if isinstance(error, BusError):
        return int(error.code), message or public_message(error), error.retriable
    return int(ErrorCode.INTERNAL_ERROR), "internal error", False


class ServerSession:
    """One connection's protocol state, as the server sees it (see the module docstring).

    `phase` (0 < phase <= 1) is the share of `ping_interval` before the first
    ping: connections that connect together and are given spread phases ping
    at spread times, never all in one round.
    """

    # Thousands of idle connections per process: no __dict__ each.
    __slots__ = (
        "_connect_id",
        "_groups",
        "_heard",
        "_in_flight",
        "_next_ping",
        "_outbox",
        "_phase",
        "_started",
        "_subscriptions",
        "close_cause",
        "close_code",
        "close_reason",
        "codec",
        "config",
        "state",
    )

    def __init__(
        self,
        codec: WireCodec,
        config: SessionConfig | None = None,
        *,
        now: float,
        phase: float = 1.0,
    ) -> None:
        if not 0.0 < phase <= 1.0:
            raise ValueError("phase must be > 0 and <= 1")
        self.codec = codec
        self.config = config = config or SessionConfig()
        self.state = State.NEW
        self.close_code: CloseCode | None = None
        self.close_reason: str | None = None
        self.close_cause: ProtocolError | None = None
        self._outbox = Outbox(codec, config.max_frame_size)
        self._in_flight: dict[int, Command] = {}
        # pattern -> the id of the subscribe that holds it
        self._subscriptions: dict[str, int] = {}
        # group name (as the client wrote it) -> the id of the group_join that holds it
        self._groups: dict[str, int] = {}
        self._started = now
        self._heard = now
        self._next_ping = 0.0
        self._phase = phase
        self._connect_id = 0

    # -- what the server reads -----------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session closed (`close_code` says why)."""
        return self.state is State.CLOSED

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet taken by `data_to_send`."""
        return self._outbox.size

    @property
    def in_flight(self) -> int:
        """How many commands await their reply."""
        return len(self._in_flight)

    @property
    def subscriptions(self) -> frozenset[str]:
        """The patterns this connection subscribes to (including those being set up)."""
        return frozenset(self._subscriptions)

    @property
    def groups(self) -> frozenset[str]:
        """The consumer groups this connection is a member of (including joins under way)."""
        return frozenset(self._groups)

    @property
    def deadline(self) -> float | None:
        """The next `now` at which `tick` has something to do (None: nothing ever)."""
        if self.state is State.NEW:
            return self._started + self.config.connect_timeout
        interval = self.config.ping_interval
        if self.state is not State.CONNECTED or not interval:
            return None
        return min(self._next_ping, self._heard + 2 * interval)

    # -- incoming --------------------------------------------------------------

    def heard(self, now: float) -> None:
        """The peer sent something that is not a message (a WebSocket ping or pong)."""
        if self.state is not State.CLOSED:
            self._heard = now

    def receive_data(self, data: Data, now: float) -> list[Command]:
        """The commands of one WebSocket message from the client, to execute in order.

        Never raises on what the peer sent (see the module docstring).
        """
        if self.state is State.CLOSED:
            return []
        self._heard = now
        config = self.config
        size = frame_size(data)
        if size > config.max_frame_size:
            self._violation(
                CloseCode.MESSAGE_TOO_LARGE,
                f"a frame of {size} bytes is over the limit of {config.max_frame_size}",
            )
            return []
        codec = self.codec
        try:
            chunks = codec.split(data)
        except ProtocolError as exc:
            self._violation(CloseCode.BAD_PROTOCOL, str(exc), exc)
            return []
        commands: list[Command] = []
        answers: list[bytes] = []
        for chunk in chunks:
            try:
                message = codec.decode_command(chunk)
            except ProtocolError as exc:
                if exc.id is None or self.state is not State.CONNECTED:
                    self._violation(CloseCode.BAD_PROTOCOL, str(exc), exc)
                    return []
                answers.append(self._error_reply(exc.id, exc.code, str(exc), exc.retriable))
                continue
            action, after = _TABLE.get((self.state, type(message)), _DEFAULT[self.state])
            if action is _Do.ABSORB:
                continue
            if action is _Do.VIOLATE or isinstance(message, Pong):
                what = message.__struct_config__.tag
                self._violation(
                    CloseCode.BAD_PROTOCOL, f"{what!r} is not allowed when {self.state.value}"
                )
                return []
            if message.id in self._in_flight:
                self._violation(
                    CloseCode.BAD_PROTOCOL, f"command id {message.id} is already in flight"
                )
                return []
            refusal = self._refusal(message)
            if refusal is not None:
                code, text = refusal
                answers.append(self._error_reply(message.id, code, text, retriable(code)))
                continue
            if isinstance(message, Connect):
                self._connect_id = message.id
            self._in_flight[message.id] = message
            self.state = after
            commands.append(message)
        for answer in answers:
            self._queue(answer)
        return commands

    def _refusal(self, command: Command) -> tuple[ErrorCode, str] | None:
        """The error the session itself answers `command` with, if any (and book-keeping)."""
        config = self.config
        if len(self._in_flight) >= config.max_in_flight:
            return (
                ErrorCode.TOO_MANY_COMMANDS,
                f"{config.max_in_flight} commands await their reply; wait for some first",
            )
        subscriptions = self._subscriptions
        if isinstance(command, Subscribe):
            pattern = command.pattern
            if pattern in subscriptions:
                return ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {pattern!r}"
            if len(subscriptions) >= config.max_subscriptions:
                return (
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may hold {config.max_subscriptions} subscriptions",
                )
            subscriptions[pattern] = command.id
        elif isinstance(command, Unsubscribe):
            if command.pattern not in subscriptions:
                return ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {command.pattern!r}"
            del subscriptions[command.pattern]
        elif isinstance(command, GroupJoin):
            # A membership is a subscription to a group: the same codes refuse it.
            groups = self._groups
            if command.group in groups:
                return ErrorCode.ALREADY_SUBSCRIBED, f"already a member of group {command.group!r}"
            if len(groups) >= config.max_groups:
                return (
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may be a member of {config.max_groups} groups",
                )
            groups[command.group] = command.id
        elif isinstance(command, GroupLeave):
            if command.group not in self._groups:
                return ErrorCode.NOT_SUBSCRIBED, f"not a member of group {command.group!r}"
            del self._groups[command.group]
        return None

    # -- outgoing --------------------------------------------------------------

    def accept(self, result: ConnectResult) -> None:
        """Answer the connect: the client is in. `ping`/`max_frame_size` come from the config."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTING:
            raise RuntimeError(f"accept() needs a connect awaiting its answer, not {self.state}")
        connect_id = self._connect_id
        self._answered(connect_id)
        config = self.config
        result = msgspec.structs.replace(
            result, ping=config.ping_interval, max_frame_size=config.max_frame_size
        )
        self.state = State.CONNECTED
        self._next_ping = self._heard + config.ping_interval * self._phase
        self._queue(self.codec.encode_reply(connect_id, result))

    def reject(self, code: CloseCode, reason: str) -> None:
        """Refuse the connect (e.g. UNAUTHORIZED): the connection closes with `code`."""
        self.close(code, reason)

    def reply(self, id: int, result: Result) -> None:
        """Answer command `id` with its result struct (see `frames.RESULT_TYPES`)."""
        if self.state is State.CLOSED:
            return
        self._answered(id)
        self._queue(self.codec.encode_reply(id, result))

    def error(self, id: int, error: BaseException | ErrorCode, message: str | None = None) -> None:
        """Answer command `id` with an error: a `BusError`, an `ErrorCode`, or any exception.

        Any exception that is not a `BusError` goes out as INTERNAL_ERROR
        without its details. A failed subscribe frees its pattern, a failed
        group_join its group.
        """
        if self.state is State.CLOSED:
            return
        command = self._answered(id)
        # A failed subscribe frees its pattern only if it still holds it: after an
        # unsubscribe, a newer subscribe may hold it, and this failure must not free that one.
        if isinstance(command, Subscribe) and self._subscriptions.get(command.pattern) == id:
            del self._subscriptions[command.pattern]
        elif isinstance(command, GroupJoin) and self._groups.get(command.group) == id:
            del self._groups[command.group]  # likewise for a failed group_join
        code, text, again = error_fields(error, message)
        if isinstance(error, NotCoordinator):  # where the group's coordinator is (§5.9)
            reply = ErrorReply(
                id=id,
                code=code,
                message=text,
                retriable=again,
                node=error.node or None,
                url=error.url or None,
            )
            self._queue(self.codec.encode(reply))
            return
        self._queue(self._error_reply(id, code, text, again))

    def push(self, encoded: bytes) -> None:
        """Queue an encoded server message, typically `codec.encode_push(...)`."""
        state = self.state
        if state is State.CONNECTED:
            self._queue(encoded)
        elif state is not State.CLOSED:
            raise RuntimeError("push() before the connect was accepted")

    def push_many(self, encoded: list[bytes]) -> None:
        """Queue several encoded server messages at once, in order (a batch of pushes)."""
        state = self.state
        if state is State.CONNECTED:
            outbox = self._outbox
            size = outbox.size + sum(map(len, encoded))
            limit = self.config.max_pending_bytes
            if size > limit and (outbox.messages or len(encoded) > 1):
                # What pushing them one by one would come to: the bound is crossed.
                self.close(CloseCode.SLOW_CONSUMER, f"over {limit} bytes queued for the client")
                return
            outbox.messages.extend(encoded)
            outbox.size = size
        elif state is not State.CLOSED:
            raise RuntimeError("push_many() before the connect was accepted")

    def end_subscription(self, pattern: str, error: BaseException | ErrorCode, reason: str) -> None:
        """Tell the client the server ended its subscription to `pattern` (e.g. too slow)."""
        if self.state is not State.CONNECTED or pattern not in self._subscriptions:
            return
        del self._subscriptions[pattern]
        code, text, _ = error_fields(error, reason)
        self._queue(self.codec.encode(Unsubscribed(pattern=pattern, code=code, reason=text)))

    def end_group(self, group: str, error: BaseException | ErrorCode, reason: str) -> None:
        """Tell the client the server ended its membership of `group` (e.g. it was deleted)."""
        if self.state is not State.CONNECTED or group not in self._groups:
            return
        del self._groups[group]
        code, text, _ = error_fields(error, reason)
        self._queue(self.codec.encode(GroupLeft(group=group, code=code, reason=text)))

    def data_to_send(self) -> bytes | None:
        """ONE frame of what was queued since the last call, or None.

        A frame holds at most `max_frame_size` bytes unless one message alone is
        larger; call again while it returns a frame. Send it as a binary frame
        if `codec.binary`, else as a text frame (the bytes are UTF-8).
        """
        return self._outbox.take_frame()

    def tick(self, now: float) -> None:
        """Run the heartbeat at time `now`: queue a ping, or close a silent peer."""
        state = self.state
        config = self.config
        if state is State.NEW:
            if now - self._started >= config.connect_timeout:
                self.close(CloseCode.NO_PING, f"no connect within {config.connect_timeout:g} s")
            return
        interval = config.ping_interval
        if state is not State.CONNECTED or not interval:
            return
        if now - self._heard >= 2 * interval:
            self.close(CloseCode.NO_PING, f"nothing heard for {2 * interval:g} s")
        elif now >= self._next_ping:
            self._next_ping = now + interval
            self._queue(self.codec.encode(ServerPing()))

    def close(self, code: CloseCode, reason: str) -> None:
        """Close with `code`; the first close wins. Queues a `disconnect` message last.

        What was queued before still goes out, except after SLOW_CONSUMER.
        """
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_code = code
        self.close_reason = reason
        if code is CloseCode.SLOW_CONSUMER:
            self._outbox.clear()
        self._in_flight.clear()
        self._outbox.add(
            self.codec.encode(
                Disconnect(code=int(code), reason=reason, reconnect=reconnect_allowed(code))
            )
        )

    # -- internals ---------------------------------------------------------------

    def _queue(self, encoded: bytes) -> None:
        outbox = self._outbox
        # One message always fits an empty outbox, so the bound is
        # max_pending_bytes plus one message.
        if outbox.messages and outbox.size + len(encoded) > self.config.max_pending_bytes:
            self.close(
                CloseCode.SLOW_CONSUMER,
                f"over {self.config.max_pending_bytes} bytes queued for the client",
            )
            return
        outbox.add(encoded)

    def _answered(self, id: int) -> Command:
        in_flight = self._in_flight
        command = in_flight.pop(id, None)
        if command is None:
            raise ValueError(f"command {id} is not awaiting an answer")
        if not in_flight:
            in_flight.clear()  # frees the table an idle connection would keep
        return command

    def _error_reply(self, id: int, code: int, message: str, again: bool) -> bytes:
        return self.codec.encode(ErrorReply(id=id, code=code, message=message, retriable=again))

    def _violation(self, code: CloseCode, reason: str, cause: ProtocolError | None = None) -> None:
        if self.state is not State.CLOSED:
            self.close_cause = cause
        self.close(code, reason)
