"""Changes to a bus's stored registries, told to every node that shares its engine.

Owns: announcing that a registry the hub keeps in the engine's group store
under a `$` name (`$schemas/<tenant>`, `$webhooks/<tenant>`,
`$outbound/<tenant>`: engine/base.py) was changed, and telling that
registry's owner on every OTHER node, which reloads it from the engine. Must
not know what a registry holds: its owner registers a reload with `on`.

An announcement is an event (type `io.hybridbus.changed`, data
`{"name": <the store name>}`) on `$system/changes`, appended after the
change is durable; every bus follows that topic from the log's head of its
start (a change announced before is in what it loaded). Only an engine many
nodes share (one with coordination leases: Redis) announces anything: on
memory and sqlite there is no other node to tell, and nothing is appended.
An announcement that cannot be appended (the engine failed right after the
write) is logged; other nodes then see the change at their next start or
with the registry's next change.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from hybridbus.core.event import Event
from hybridbus.engine.base import Leases
from hybridbus.errors import BusError
from hybridbus.hub.follow import Follower, head_of

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = ["CHANGED_TYPE", "CHANGES_TOPIC", "Changes", "named"]

log = logging.getLogger("hybridbus.changes")

CHANGES_TOPIC: Final = "$system/changes"
CHANGED_TYPE: Final = "io.hybridbus.changed"

# `reload(name)`: load again the store `name`, or every store under `name` when it ends in "/"
# (after a lost announcement, every store of the owner's prefix may have changed).
Reload = Callable[[str], Awaitable[None]]


def named(store: str, name: str) -> bool:
    """Whether the store `store` is what `reload(name)` names (`Reload`)."""
    return store == name or (name.endswith("/") and store.startswith(name))


class Changes:
    """The announcements of one bus (see the module docstring)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._owners: list[tuple[str, Reload]] = []
        self._own: set[str] = set()  # ids of this bus's announcements (its follower skips them)
        self._follower = Follower(bus, CHANGES_TOPIC, self._heard, self._reload_all)

    @property
    def shared(self) -> bool:
        """Whether other nodes may share the engine (only then is anything announced)."""
        return isinstance(self.bus.engine, Leases)

    def on(self, prefix: str, reload: Reload) -> None:
        """`await reload(name)` when another node announces a change of a store `prefix...`."""
        self._owners.append((prefix, reload))

    async def announce(self, name: str) -> None:
        """Tell the other nodes that the store `name` changed (after the change is durable)."""
        if not self.shared:
            return
        event = Event(
            id=secrets.token_hex(12),
            source="/hybridbus/changes",
            type=CHANGED_TYPE,
            data={"name": name},
        )
        self._own.add(event.id)
        try:
            await self.bus.publish(CHANGES_TOPIC, event)
        except BusError as exc:
            self._own.discard(event.id)
            log.warning("the change of %s could not be announced to other nodes: %s", name, exc)

    async def start(self) -> None:
        """Follow the other nodes' announcements from the log's head (the bus is started)."""
        if self.shared:
            self._follower.start(await head_of(self.bus))

    async def close(self) -> None:
        await self._follower.close()

    async def _heard(self, event: Event) -> None:
        if event.id in self._own:
            self._own.discard(event.id)
            return
        name = event.data.get("name") if isinstance(event.data, dict) else None
        if isinstance(name, str):
            for prefix, reload in self._owners:
                if name.startswith(prefix):
                    await self._reload(reload, name)

    async def _reload_all(self) -> None:
        """After a lost subscription: any store may have changed."""
        for prefix, reload in self._owners:
            await self._reload(reload, prefix)

    @staticmethod
    async def _reload(reload: Reload, name: str) -> None:
        try:
            await reload(name)
        except Exception:  # one owner's failure must not stop the others' reloads
            log.exception("reloading %s after another node changed it failed", name)
