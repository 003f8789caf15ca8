"""Consumer groups in the Python client: the same API as in-process, over the WebSocket protocol.

    async with client.group("billing", "invoices/#", ack_wait=10) as g:
        async for d in g:          # a ClientDelivery
            handle(d.event)
            await d.ack()          # or d.nack(delay=, error=), d.extend(), d.term(reason)

Owns: `ClientGroup` (one membership: what the application iterates or
fetches, and `ack` of many deliveries in one command), `ClientDelivery` (one
delivery and its settling), and `Memberships`, the client's groups across
its connections: `group_join` at once if connected, else on the next
connection, and again after every reconnect with the same member name (the
one the server gave, if the application gave none), pattern and settings.
Must not do I/O: it sends through the client's connection (`Link`, and the
connection's request path for the settling commands, which are sent again
after a drop).

What a reconnect does to deliveries. A delivery's id settles it from any
connection, so acks of deliveries received before a drop work after it (an
`ack` is sent again on the next connection if its answer was lost; acking
twice is harmless). The server ends the old connection's membership: what it
held and nobody acked comes back to the group after `ack_wait`, to this
member or another, as a new attempt with the same `dedupe_key`. A `nack`,
`extend` or `term` of a delivery whose lease ended meanwhile is refused with
`RemoteError` 1403 (`DELIVERY_GONE`).

Flow control is the group's: the server pushes a member at most
`member_in_flight` unsettled deliveries, so the queue here stays that small.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from hybridbus.client.inbox import Inbox
from hybridbus.client.subscribing import Link
from hybridbus.core.event import Event
from hybridbus.errors import BusError, InvalidInput, RemoteError
from hybridbus.proto.client import ClientSession, GroupEnded, GroupReceived
from hybridbus.proto.frames import MAX_SETTLE_IDS, GroupJoinResult

__all__ = ["ClientDelivery", "ClientGroup", "Memberships"]

Issue = Callable[[ClientSession], int]
Requester = Callable[[Issue], Awaitable[Any]]


class ClientDelivery:
    """One delivery of a group's event; settle it with `ack`, `nack`, `extend` or `term`.

    `topic` is relative to the tenant; `attempt` counts from 1; `dedupe_key`
    is the same for every delivery of one event (what an idempotent handler
    remembers); `id` settles it from any connection.
    """

    __slots__ = ("attempt", "dedupe_key", "event", "group", "id", "offset", "topic")

    def __init__(self, group: ClientGroup, received: GroupReceived) -> None:
        self.group = group
        self.id = received.delivery
        self.attempt = received.attempt
        self.dedupe_key = received.dedupe
        self.topic = received.topic
        self.offset = received.offset
        self.event: Event = received.event

    async def ack(self) -> None:
        """The event was handled: the group never delivers it again. Durable on return."""
        await self.group.ack(self)

    async def nack(self, delay: float | None = None, error: str = "") -> None:
        """Handling failed: deliver it again after `delay` seconds (None: the group's backoff)."""
        name, delivery_id = self.group.name, self.id
        await self.group.request(
            lambda s: s.nack(name, delivery_id, delay=delay, error=error or None)
        )

    async def extend(self) -> None:
        """The handler needs more time: the lease starts over (`ack_wait` from now)."""
        name, ids = self.group.name, [self.id]
        await self.group.request(lambda s: s.extend(name, ids))

    async def term(self, reason: str = "") -> None:
        """Give up on the event now: it goes to the group's dead letters."""
        name, delivery_id = self.group.name, self.id
        await self.group.request(lambda s: s.term(name, delivery_id, reason=reason or None))

    def __repr__(self) -> str:
        return f"<ClientDelivery {self.topic}#{self.offset} attempt={self.attempt}>"


class ClientGroup(Inbox[ClientDelivery]):
    """A membership of a consumer group: `async for d in g`, or `await g.fetch(n, wait)`.

    `member` is the member's name and `pattern` the group's (relative), once
    joined. Iteration ends when the group is left, and raises why the client
    or the membership ended otherwise.
    """

    def __init__(
        self,
        registry: Memberships,
        name: str,
        pattern: str | None,
        member: str | None,
        settings: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.name = name
        self.pattern = pattern
        self.member = member
        self.settings = settings
        self._registry = registry

    # -- fed by the registry -----------------------------------------------------------

    def deliver(self, received: GroupReceived) -> None:
        if not self._ended:
            self._put(ClientDelivery(self, received))

    def joined(self, result: GroupJoinResult) -> None:
        self.member = result.member
        self.pattern = result.pattern

    # -- the application's side ----------------------------------------------------------

    async def fetch(self, limit: int = 100, wait: float | None = None) -> list[ClientDelivery]:
        """Up to `limit` deliveries: waits up to `wait` seconds (None: forever) for the first."""
        if not self._queue and not self._ended:
            await self._wait(wait)
        if not self._queue and self._error is not None:
            raise self._error
        out: list[ClientDelivery] = []
        queue = self._queue
        while queue and len(out) < limit:
            out.append(queue.popleft())
        return out

    def __aiter__(self) -> ClientGroup:
        return self

    async def __anext__(self) -> ClientDelivery:
        while True:
            got = await self.fetch(1)
            if got:
                return got[0]
            if self._ended:
                raise StopAsyncIteration

    async def ack(self, *deliveries: ClientDelivery) -> None:
        """Ack many deliveries (of this group) in as few commands as the limit allows."""
        ids = [d.id for d in deliveries]
        for start in range(0, len(ids), MAX_SETTLE_IDS):
            await self.request(_acking(self.name, ids[start : start + MAX_SETTLE_IDS]))

    async def request(self, issue: Issue) -> Any:
        """Send a settling command through the client (again after a drop); its result."""
        return await self._registry.request(issue)

    async def __aenter__(self) -> ClientGroup:
        await self._registry.open(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._registry.close(self)

    def __repr__(self) -> str:
        return f"<ClientGroup {self.name} member={self.member}>"


def _acking(name: str, ids: list[str]) -> Issue:
    return lambda session: session.ack(name, ids)


class Memberships:
    """The client's consumer groups across its connections (see the module docstring)."""

    def __init__(self, link: Link, request: Requester) -> None:
        self._link = link
        self.request = request
        self._groups: dict[str, ClientGroup] = {}
        self._joining: dict[int, ClientGroup] = {}  # by the id of their group_join
        self._sent: set[ClientGroup] = set()  # a group_join went out on this session
        self._opened: dict[ClientGroup, asyncio.Future[None]] = {}

    async def open(self, group: ClientGroup) -> None:
        """Join; return once the server confirmed it (or raise its refusal)."""
        if group.name in self._groups:
            raise InvalidInput(f"already a member of group {group.name!r} on this client")
        failure = self._link.failure()
        if failure is not None:
            raise failure
        opened = asyncio.get_running_loop().create_future()
        self._groups[group.name] = group
        self._opened[group] = opened
        session = self._link.live()
        if session is not None:
            self._send(session, group)
        try:
            async with asyncio.timeout(self._link.request_timeout()):
                await opened
        except BaseException:
            if self._groups.get(group.name) is group:
                self._leave(group)
            raise
        finally:
            self._opened.pop(group, None)

    def close(self, group: ClientGroup) -> None:
        """Leave the group (without waiting for the answer); its iteration stops."""
        if self._groups.get(group.name) is group:
            self._leave(group)
        group.end()

    def _leave(self, group: ClientGroup) -> None:
        del self._groups[group.name]
        session = self._link.live()
        if session is not None and group in self._sent:
            self._sent.discard(group)
            with contextlib.suppress(RuntimeError):
                session.group_leave(group.name)
                self._link.kick()

    def _send(self, session: ClientSession, group: ClientGroup) -> None:
        command_id = session.group_join(
            group.name, group.pattern, settings=group.settings, member=group.member
        )
        self._joining[command_id] = group
        self._sent.add(group)
        self._link.kick()

    # -- fed by the connection ----------------------------------------------------------

    def connected(self, session: ClientSession) -> None:
        """A new connection: join every group again, as the same member."""
        for group in self._groups.values():
            self._send(session, group)

    def disconnected(self) -> None:
        """The connection ended: joins in flight are sent again on the next one."""
        self._joining.clear()
        self._sent.clear()

    def received(self, event: GroupReceived) -> None:
        group = self._groups.get(event.group)
        if group is not None:
            group.deliver(event)

    def joined(self, id: int, result: object) -> None:
        """The reply to group_join `id`."""
        group = self._joining.pop(id, None)
        if group is None or not isinstance(result, GroupJoinResult):
            return
        group.joined(result)
        opened = self._opened.get(group)
        if opened is not None and not opened.done():
            opened.set_result(None)

    def refused(self, id: int, error: BusError) -> None:
        """Command `id` was refused: if it was a group_join, that membership ends."""
        group = self._joining.pop(id, None)
        if group is not None:
            self._end(group, error)

    def ended(self, event: GroupEnded) -> None:
        """The server ended the membership of `event.group`: it ends with that error."""
        group = self._groups.get(event.group)
        if group is not None:
            self._end(group, RemoteError(event.code, event.reason, False))

    def fail_all(self, error: BusError, *, quietly: bool = False) -> None:
        """The client ended: every membership ends (with `error`, unless `quietly`)."""
        for group in list(self._groups.values()):
            if quietly:
                group.end()
            else:
                self._end(group, error)
        self._groups.clear()

    def _end(self, group: ClientGroup, error: BusError) -> None:
        if self._groups.get(group.name) is group:
            del self._groups[group.name]
        opened = self._opened.get(group)
        if opened is not None and not opened.done():
            opened.set_exception(error)
        group.end(error)
