"""The subscriptions of one Python client, across its connections.

Owns: the client's open subscriptions by pattern, sending `subscribe` for
each (at once if connected, else on the next connection, and again from its
position after every reconnect), matching the replies and refusals to them,
handing pushes to them, resubscribing one the server ended with a retriable
code, and ending them when the client fails. Must not do I/O: it sends
through the `Link` to the client's current session (`client.connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from hybridbus.client.subscription import ClientSubscription
from hybridbus.core.log import Position
from hybridbus.errors import BusError, InvalidInput, RemoteError
from hybridbus.proto.client import ClientSession, Ended, Received
from hybridbus.proto.codes import retriable
from hybridbus.proto.frames import SubscribeResult

__all__ = ["Link", "Subscriptions"]


class Link(Protocol):
    """What a registry of the client (subscriptions, groups) needs from its connection."""

    def live(self) -> ClientSession | None:
        """The session to send on now (its connect answered); None between connections."""

    def kick(self) -> None:
        """Send what the session queued (coalesced, this loop turn)."""

    def failure(self) -> BusError | None:
        """What ended the client for good, if anything did."""

    def request_timeout(self) -> float:
        """Seconds to wait for an answer."""


class Subscriptions:
    """The client's subscriptions (see the module docstring)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._subs: dict[str, ClientSubscription] = {}
        self._subscribing: dict[int, ClientSubscription] = {}  # by the id of their subscribe
        self._opened: dict[ClientSubscription, asyncio.Future[None]] = {}

    async def open(self, sub: ClientSubscription) -> None:
        """Subscribe; return once the server confirmed it (or raise its refusal)."""
        if sub.pattern in self._subs:
            raise InvalidInput(f"already subscribed to {sub.pattern!r} on this client")
        failure = self._link.failure()
        if failure is not None:
            raise failure
        opened = asyncio.get_running_loop().create_future()
        self._subs[sub.pattern] = sub
        self._opened[sub] = opened
        session = self._link.live()
        if session is not None:
            self._send(session, sub)
        try:
            async with asyncio.timeout(self._link.request_timeout()):
                await opened
        except BaseException:
            self._subs.pop(sub.pattern, None)
            raise
        finally:
            self._opened.pop(sub, None)

    async def close(self, sub: ClientSubscription) -> None:
        """Unsubscribe (without waiting for the answer) and end `sub`."""
        if self._subs.get(sub.pattern) is sub:
            del self._subs[sub.pattern]
            session = self._link.live()
            if session is not None and not session.closed:
                with contextlib.suppress(RuntimeError):
                    session.unsubscribe(sub.pattern)
                    self._link.kick()
        sub.end()

    def _send(self, session: ClientSession, sub: ClientSubscription) -> None:
        command = session.subscribe(sub.pattern, since=sub.position, filter=sub.filter)
        self._subscribing[command] = sub
        self._link.kick()

    # -- fed by the connection ----------------------------------------------------------

    def connected(self, session: ClientSession) -> None:
        """A new connection: subscribe again, each subscription from its position."""
        for sub in self._subs.values():
            self._send(session, sub)

    def disconnected(self) -> None:
        """The connection ended: subscribes in flight are sent again on the next one."""
        self._subscribing.clear()

    def received(self, event: Received) -> None:
        sub = self._subs.get(event.pattern)
        if sub is not None:
            sub.deliver(event)

    def subscribed(self, id: int, result: object) -> None:
        """The reply to subscribe `id`."""
        sub = self._subscribing.pop(id, None)
        if sub is None or not isinstance(result, SubscribeResult):
            return
        resumed = sub.position is not None
        sub.started(Position.parse(result.position))
        if resumed and not result.recovered:
            sub.gap("the server could not recover every event since the last one received")
        opened = self._opened.get(sub)
        if opened is not None and not opened.done():
            opened.set_result(None)

    def refused(self, id: int, error: BusError) -> None:
        """Command `id` was refused: if it was a subscribe, its subscription ends."""
        sub = self._subscribing.pop(id, None)
        if sub is not None:
            self._end(sub, error)

    def ended(self, session: ClientSession, event: Ended) -> None:
        """The server ended a subscription: again from where it got to, if the code allows."""
        sub = self._subs.get(event.pattern)
        if sub is not None:
            if retriable(event.code) or event.code == 1200:
                self._send(session, sub)
            else:
                self._end(sub, RemoteError(event.code, event.reason, False))

    def fail_all(self, error: BusError, *, quietly: bool = False) -> None:
        """The client ended: every subscription ends (with `error`, unless `quietly`)."""
        for sub in list(self._subs.values()):
            if quietly:
                sub.end()
            else:
                self._end(sub, error)
        self._subs.clear()

    def _end(self, sub: ClientSubscription, error: BusError) -> None:
        self._subs.pop(sub.pattern, None)
        opened = self._opened.get(sub)
        if opened is not None and not opened.done():
            opened.set_exception(error)
        sub.end(error)
