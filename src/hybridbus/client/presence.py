"""Presence in the Python client: who is in a topic, whole or a page at a time.

Owns: the `Presence` mixin that gives `Client` its `presence` and
`presence_page` methods (docs/protocol.md §5.5). Must not do I/O itself:
commands go through the client's request path. The client's session, which
keeps its own presence across a drop (§4.1), is `client.connection`'s.

    everyone = await c.presence("docs/42")
    page = await c.presence_page("docs/42", limit=1000)      # big topics: a page at a time
    while page.cursor is not None:
        page = await c.presence_page("docs/42", limit=1000, cursor=page.cursor)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hybridbus.proto.client import ClientSession
from hybridbus.proto.frames import ClientInfo, PresenceResult

__all__ = ["Presence"]


class Presence:
    """`presence` and `presence_page` for a client with a `_request` path."""

    _request: Callable[[Callable[[ClientSession], int]], Awaitable[Any]]

    async def presence(self, topic: str) -> list[ClientInfo]:
        """Who is subscribed to `topic` now (every member: `presence_page` for big topics)."""
        return (await self.presence_page(topic)).clients

    async def presence_page(
        self, topic: str, limit: int | None = None, cursor: str | None = None
    ) -> PresenceResult:
        """Up to `limit` of `topic`'s members after `cursor`, oldest first.

        The result's `count` is how many members the topic has, its `cursor`
        where the next page starts (None: this was the last). A cursor is good
        on the connection's node only: after a reconnect, start over if it is
        refused (`RemoteError` 1621). Without `limit`, every member.
        """
        result: PresenceResult = await self._request(
            lambda s: s.presence(topic, limit=limit, cursor=cursor)
        )
        return result
