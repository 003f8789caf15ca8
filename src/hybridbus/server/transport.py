"""What a connection needs of a socket: the `Transport` a gateway implements.

Owns: the contract between `server.connection` and a gateway's socket (today
`gateways.websocket.AiohttpTransport`): write a frame now, drain, close,
abort. Must not know a socket library.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """What a connection needs of a socket: write a frame, drain, close, abort. Nothing else.

    `write` writes at once, never waits, and says whether the socket takes
    more; after False the connection writes nothing more until `drain`
    returned. `close` must finish in bounded time, aborting the socket if the
    peer does not take the close. `write`, `drain` and `close` raise
    `ConnectionError` when the peer is gone (or the WebSocket is closing).
    """

    def write(self, frame: bytes, binary: bool) -> bool:
        """Write one WebSocket message (binary, or text holding UTF-8 `frame`) now.

        False once the socket's buffer is over its high-water mark.
        """
        ...

    async def drain(self) -> None:
        """Return once the socket's buffer is under its low-water mark (at once if it is)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (at most 123 bytes of it are sent)."""
        ...

    def abort(self) -> None:
        """Drop the socket at once (nothing more is sent)."""
        ...
