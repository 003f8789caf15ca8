"""Presence in the Python client: who is in a topic, whole, a page at a time, or watched.

Owns: the `Presence` mixin that gives `Client` its `presence`,
`presence_page` and `presence_watch` methods (docs/protocol.md §5.5), and
hands the watch views (`client.presence_watch`) the `join` / `leave` /
`presence` pushes, the reconnects and the client's end. Must not do I/O
itself: commands go through the client's request path. The client's session,
which keeps its own presence across a drop (§4.1), is `client.connection`'s.

    everyone = await c.presence("docs/42")
    page = await c.presence_page("docs/42", limit=1000)      # big topics: a page at a time
    while page.cursor is not None:
        page = await c.presence_page("docs/42", limit=1000, cursor=page.cursor)
    async with c.presence_watch("docs/42") as room:           # kept current, across drops
        async for change in room:
            print(change.kind, change.client, len(room.members))
"""

from __future__ import annotations

from hybridbus.client.presence_watch import PAGE_SIZE, ClientPresence
from hybridbus.client.requests import CommandPath
from hybridbus.errors import BusError
from hybridbus.proto.frames import ClientInfo, Join, Leave, PresenceChanged, PresenceResult

__all__ = ["Presence"]


class Presence(CommandPath):
    """`presence`, `presence_page` and `presence_watch` for a client with a request path."""

    _presence_views: dict[str, list[ClientPresence]]

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

    def presence_watch(self, topic: str, *, page_size: int = PAGE_SIZE) -> ClientPresence:
        """`topic`'s members kept current: `async with c.presence_watch(topic) as room`.

        `room.members` (client id -> `ClientInfo`) is the list once watched,
        iterating yields a `PresenceChange` per join, leave and degraded/active
        change after it; after a reconnect the list is compared with the one
        held (`client.presence_watch`). The list comes `page_size` members at
        a time. Each call is a view of its own; leaving the `async with` ends it.
        """
        views = self._presence_watches()

        def forget(view: ClientPresence) -> None:
            held = views.get(topic)
            if held is not None and view in held:
                held.remove(view)
                if not held:
                    del views[topic]

        view = ClientPresence(topic, self, forget, page_size)
        views.setdefault(topic, []).append(view)
        return view

    # -- for the client ------------------------------------------------------------

    def failure(self) -> BusError | None:
        raise NotImplementedError  # the Client's: what ended it for good

    def request_timeout(self) -> float:
        raise NotImplementedError  # the Client's

    def _presence_watches(self) -> dict[str, list[ClientPresence]]:
        try:
            return self._presence_views
        except AttributeError:
            self._presence_views = {}
            return self._presence_views

    def _presence_pushed(self, push: Join | Leave | PresenceChanged) -> None:
        """Hand a `join`, `leave` or `presence` push to the views of its topic."""
        for view in list(self._presence_watches().get(push.topic, ())):
            view.pushed(push)

    def _presence_reconnected(self) -> None:
        """A new connection: every view lists and watches again — in this turn, the
        connect reply's, so nothing pushed on the new connection comes before its list."""
        for views in list(self._presence_watches().values()):
            for view in list(views):
                view.reconnected()

    def _presence_ended(self, error: BusError, *, quietly: bool) -> None:
        """The client ended: so does every view."""
        for views in list(self._presence_watches().values()):
            for view in list(views):
                view.ended(error, quietly=quietly)
