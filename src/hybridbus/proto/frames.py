"""The messages of the client protocol, as typed tagged unions.

Owns: every message a client and a server exchange (docs/protocol.md is the
specification), one `type` tag per message, and the limits a frame must obey.
Must not do I/O, nor know about the bus: events travel as raw bytes here (an
encoded CloudEvent), decoded by the session with `core.codecs`.

Direction matters: `Command` is client → server, `ServerMessage` is
server → client; each direction is its own union, so both may use `ping`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ClientInfo",
    "Command",
    "Connect",
    "ConnectResult",
    "Disconnect",
    "ErrorReply",
    "EventPush",
    "History",
    "HistoryResult",
    "Join",
    "Leave",
    "Ping",
    "Presence",
    "PresenceResult",
    "Publish",
    "PublishResult",
    "Refresh",
    "Reply",
    "ServerMessage",
    "ServerPing",
    "Subscribe",
    "SubscribeResult",
    "Unsubscribe",
]

CommandId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class _Command(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True):
    id: CommandId


class Connect(_Command, tag="connect"):
    """First command of a connection: credentials and who the client is."""

    token: Text | None = None
    name: Text | None = None
    version: Text | None = None
    device: Text | None = None


class Subscribe(_Command, tag="subscribe"):
    """Subscribe to a topic or pattern; with `since`, missed events come first."""

    pattern: Text
    since: Text | None = None


class Unsubscribe(_Command, tag="unsubscribe"):
    pattern: Text


class Publish(_Command, tag="publish"):
    """Publish an event (a CloudEvent in the subprotocol's encoding) to a topic."""

    topic: Text
    event: msgspec.Raw
    exclude_self: Literal["connection", "device"] | None = None


class History(_Command, tag="history"):
    topic: Text
    since: Text | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100


class Presence(_Command, tag="presence"):
    """Who is subscribed to a topic; `watch` asks for join/leave pushes too."""

    topic: Text
    watch: bool = False


class Ping(_Command, tag="ping"):
    pass


class Refresh(_Command, tag="refresh"):
    """A fresh token for the open connection, before the current one expires."""

    token: Text


Command = Connect | Subscribe | Unsubscribe | Publish | History | Presence | Ping | Refresh


# -- server → client ---------------------------------------------------------


class _Server(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class Reply(_Server, tag="reply"):
    """The success answer to command `id`; `result`'s shape depends on the command."""

    id: int
    result: Any = None


class ErrorReply(_Server, tag="error"):
    """The failure answer to command `id` (0: not about one command)."""

    id: int
    code: int
    message: str


class EventPush(_Server, tag="event"):
    """One delivery for the subscription `pattern`.

    `position` (with the subscription's epoch) is the resume token after it.
    """

    pattern: str
    topic: str
    offset: int
    position: int
    event: Any
    shard: int = 0


class ClientInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A connected client as presence shows it."""

    client: str
    user: str | None = None
    device: str | None = None
    name: str | None = None


class Join(_Server, tag="join"):
    topic: str
    info: ClientInfo


class Leave(_Server, tag="leave"):
    topic: str
    info: ClientInfo


class ServerPing(_Server, tag="ping"):
    """Heartbeat: the client answers with a `ping` command (or any command)."""


class Disconnect(_Server, tag="disconnect"):
    """Sent before the server closes; `reconnect` tells whether to come back."""

    code: int
    reason: str
    reconnect: bool


ServerMessage = Reply | ErrorReply | EventPush | Join | Leave | ServerPing | Disconnect


# -- results -------------------------------------------------------------------


class ConnectResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    client: str
    version: str
    ping: float  # seconds between server pings; be silent for two and be closed
    tenant: str | None = None
    expires: float | None = None  # Unix time the token expires


class SubscribeResult(msgspec.Struct, kw_only=True):
    pattern: str
    epoch: str
    position: str  # the resume token as of now
    recovered: bool


class PublishResult(msgspec.Struct, kw_only=True):
    topic: str
    offset: int
    position: int
    epoch: str
    duplicate: bool


class HistoryResult(msgspec.Struct, kw_only=True):
    events: list[EventPush]
    position: str
    more: bool
    exact: bool


class PresenceResult(msgspec.Struct, kw_only=True):
    clients: list[ClientInfo]
