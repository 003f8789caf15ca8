"""Close codes of the client protocol (WebSocket close codes 4000-4999).

Owns: the numbers a server closes a connection with, and what each tells the
client to do. Error codes of single commands are `hybridbus.errors.ErrorCode`
(one numbering for the library and the wire). Must not do I/O.

    4000-4499  reconnect: the client reconnects with backoff and resubscribes
               from its positions (nothing is lost)
    4500-4999  terminal: reconnecting as-is will fail the same way
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode", "reconnect_allowed"]


class CloseCode(IntEnum):
    """Why the server closed a connection (sent as the WebSocket close code)."""

    NORMAL = 1000  # the client asked to close
    # 4000-4499: reconnect.
    SHUTDOWN = 4000  # the server is going away: reconnect (elsewhere)
    SLOW_CONSUMER = 4001  # the outbox overflowed: reconnect and recover
    NO_PING = 4002  # nothing heard for two heartbeat intervals
    SERVER_ERROR = 4003  # an internal error: reconnect
    TOKEN_EXPIRED = 4004  # get a new token, then reconnect
    # 4500-4999: terminal.
    BAD_PROTOCOL = 4500  # a frame could not be parsed, or a command came out of order
    UNAUTHORIZED = 4501  # no or invalid credentials
    FORBIDDEN = 4502  # revoked, or not allowed to connect
    MESSAGE_TOO_LARGE = 4503  # a frame over the maximum size
    UNSUPPORTED = 4504  # no supported subprotocol


def reconnect_allowed(code: int) -> bool:
    """True if a client should reconnect after the server closed with `code`."""
    return 4000 <= code < 4500 or code in (1001, 1006, 1011, 1012, 1013)
