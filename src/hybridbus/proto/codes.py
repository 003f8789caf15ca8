"""Close codes of the client protocol, and what each code tells a client to do.

Owns: the numbers a connection is closed with (`CloseCode`, sent as the
WebSocket close code), whether a client reconnects after one, and which error
codes of single commands are worth retrying. The error codes themselves are
`hybridbus.errors.ErrorCode` (one numbering for the library and the wire).
Must not do I/O. docs/protocol.md has both tables.

    1000       normal: the client asked to close; nothing to do
    4000-4499  reconnect: reconnect with backoff and resubscribe from the last
               positions (nothing is lost)
    4500-4999  terminal: reconnecting as-is fails the same way
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from hybridbus.errors import ErrorCode

__all__ = ["RETRIABLE_ERRORS", "CloseCode", "reconnect_allowed", "retriable"]


class CloseCode(IntEnum):
    """Why a connection was closed (sent as the WebSocket close code)."""

    NORMAL = 1000  # the client asked to close
    # 4000-4499: reconnect.
    SHUTDOWN = 4000  # the server is going away: reconnect (elsewhere)
    SLOW_CONSUMER = 4001  # the outbox overflowed: reconnect and recover
    NO_PING = 4002  # nothing heard for two heartbeat intervals (or no connect in time)
    SERVER_ERROR = 4003  # an internal error: reconnect
    TOKEN_EXPIRED = 4004  # get a new token, then reconnect
    TOO_MANY_CONNECTIONS = 4005  # the user holds its maximum: reconnect later, with backoff
    # 4500-4999: terminal.
    BAD_PROTOCOL = 4500  # a frame could not be parsed, or a command came out of order
    UNAUTHORIZED = 4501  # no or invalid credentials
    FORBIDDEN = 4502  # revoked, or not allowed to connect
    MESSAGE_TOO_LARGE = 4503  # a frame over the maximum size
    UNSUPPORTED = 4504  # no supported subprotocol was offered


# Standard WebSocket codes after which reconnecting is right: going away (1001),
# abnormal closure (1006), server error (1011), service restart (1012), try again
# later (1013).
_STANDARD_RECONNECT: Final = frozenset({1001, 1006, 1011, 1012, 1013})


def reconnect_allowed(code: int) -> bool:
    """True if a client should reconnect after a connection closed with `code`."""
    return 4000 <= code < 4500 or code in _STANDARD_RECONNECT


# Error codes of single commands after which the same command may succeed later.
RETRIABLE_ERRORS: Final = frozenset(
    {
        ErrorCode.TOO_MANY_COMMANDS,
        ErrorCode.RATE_LIMITED,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.SUBSCRIBER_TOO_SLOW,
        ErrorCode.ENGINE_UNAVAILABLE,
        ErrorCode.ENGINE_LOCKED,
        ErrorCode.ENGINE_READ_ONLY,
        ErrorCode.REGISTRY_UNAVAILABLE,
        ErrorCode.NOT_COORDINATOR,  # at the node the error names (`url`), or again later
    }
)


def retriable(code: int) -> bool:
    """True if a command refused with error `code` may succeed when sent again later."""
    return code in RETRIABLE_ERRORS
