"""The Yjs rooms of one node: loaded lazily at the first join, unloaded when idle.

Owns: `Rooms` (the loaded rooms by topic, their loading, unloading after
`idle_unload` seconds without clients, and the node's end) — the target of the
awareness relay for the other nodes' states. Must not hold a document or read
sockets: each room is a `server.rooms.Room`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hybridbus.core.yjs_protocol import AwarenessEntry
from hybridbus.errors import BusClosed
from hybridbus.hub.bus import Bus
from hybridbus.server.rooms import Room
from hybridbus.server.rooms_peers import Peer, RoomsConfig
from hybridbus.server.rooms_relay import AwarenessRelay

__all__ = ["Rooms"]


class Rooms:
    """The loaded rooms of one node, by topic; the `RelayTarget` of its awareness relay."""

    def __init__(
        self, bus: Bus, config: RoomsConfig | None = None, relay: AwarenessRelay | None = None
    ) -> None:
        self.bus = bus
        self.config = config or RoomsConfig()
        self.relay = relay  # awareness across nodes (docs/collaboration.md, "Many nodes")
        self._rooms: dict[str, Room] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, topic: str) -> Room | None:
        """The loaded room of `topic`, if any (tests, metrics)."""
        return self._rooms.get(topic)

    # -- the relay's target (server.rooms_relay.RelayTarget) ----------------------

    def topics(self) -> list[str]:
        """The rooms loaded here."""
        return [topic for topic, room in self._rooms.items() if room.loaded.done()]

    def local_states(self, topic: str) -> list[AwarenessEntry] | None:
        """The awareness states this node's sockets hold in `topic` (None: not loaded)."""
        room = self._rooms.get(topic)
        return None if room is None else room.awareness.local()

    def heard(self, node: str, topic: str, entries: list[AwarenessEntry], full: bool) -> None:
        """Another node's clients' states in `topic`: to the room, if it is loaded here."""
        room = self._rooms.get(topic)
        if room is not None:
            room.heard(node, entries, full)

    def drop(self, node: str) -> None:
        """Another node is gone: its clients' states go from every room."""
        for room in self._rooms.values():
            room.drop(node)

    async def join(self, topic: str, peer: Peer) -> Room:
        """The room of `topic`, loaded if it was not, with `peer` joined.

        Raises `BusClosed` once the rooms are closed, or what loading raised
        (`EngineUnavailable`): the room is then forgotten and the next join
        loads it again.
        """
        while True:
            if self._closed:
                raise BusClosed("the server is shutting down")
            if self.relay is not None and not self.relay.started:
                self.relay.start(self)
            closing = self._closing.get(topic)
            if closing is not None:
                await asyncio.shield(closing)
                continue
            room = self._rooms.get(topic)
            if room is None:
                room = self._rooms[topic] = Room(self.bus, topic, self.config, self.relay)
                try:
                    await room.load()
                except BaseException:
                    if self._rooms.get(topic) is room:
                        del self._rooms[topic]
                    raise
            else:
                await asyncio.shield(room.loaded)
            if room.closed or self._rooms.get(topic) is not room:
                continue
            room.join(peer)
            return room

    def leave(self, room: Room, peer: Peer) -> None:
        """`peer` left `room`; a room left without peers unloads after `idle_unload`."""
        room.leave(peer)
        if not room.peers and not room.closed and room.idle is None:
            room.idle = asyncio.get_running_loop().call_later(
                self.config.idle_unload, self._unload, room
            )

    def _unload(self, room: Room) -> None:
        room.idle = None
        if room.peers or room.closed or self._rooms.get(room.topic) is not room:
            return
        del self._rooms[room.topic]
        task = asyncio.create_task(room.close(), name=f"yjs unload {room.topic}")
        self._closing[room.topic] = task
        task.add_done_callback(lambda _: self._closing.pop(room.topic, None))

    async def close(self, on_peer: Callable[[Peer], None] | None = None) -> None:
        """Unload every room (a last snapshot each); `on_peer` is called for each peer left."""
        self._closed = True
        rooms = list(self._rooms.values())
        self._rooms.clear()
        for room in rooms:
            if on_peer is not None:
                for peer in list(room.peers):
                    on_peer(peer)
        await asyncio.gather(
            *(room.close() for room in rooms), *self._closing.values(), return_exceptions=True
        )
        if self.relay is not None:
            await self.relay.close()
