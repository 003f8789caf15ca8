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

Many nodes (docs/groups.md). A `group_join` refused with NOT_COORDINATOR
(1405) names the node coordinating the group and its `url`: the membership
follows it — onto the client's connection to that URL, opened with the same
credentials (or reused) — and its settling commands go there from then on.
A membership ended with 1405 (the coordinator moved) joins again through
the client's own connection, which lands on the new coordinator or is sent
on to it. The application's `ClientGroup` stays the same object throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final

import msgspec

from hybridbus.client.inbox import Inbox
from hybridbus.client.subscribing import Link
from hybridbus.core.event import Event
from hybridbus.errors import BusError, ErrorCode, InvalidInput, RemoteError
from hybridbus.proto.client import ClientSession, GroupEnded, GroupReceived
from hybridbus.proto.frames import MAX_SETTLE_IDS, GroupJoinResult

__all__ = ["ClientDelivery", "ClientGroup", "Memberships"]

Issue = Callable[[ClientSession], int]
Requester = Callable[[Issue], Awaitable[Any]]
# The memberships of the client's connection to a node's WebSocket URL (opened if need be).
Follow = Callable[[str], Awaitable["Memberships"]]
_MAX_WAIT: Final = 2.0  # seconds between two joins of a membership whose coordinator moves


class ClientDelivery(msgspec.Struct, eq=False):
    """One delivery of a group's event; settle it with `ack`, `nack`, `extend` or `term`.

    `topic` is relative to the tenant; `attempt` counts from 1; `dedupe_key`
    is the same for every delivery of one event (what an idempotent handler
    remembers); `id` settles it from any connection. A struct (one is made
    per delivery), compared by identity.
    """

    group: ClientGroup
    id: str
    attempt: int
    dedupe_key: str
    topic: str
    offset: int
    event: Event

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
        self.opening: asyncio.Future[None] | None = None  # `open` waits for the first join
        self.hops = 0  # redirects since the last join that was answered
        self._acks: list[str] = []  # ids asked to be acked in this loop turn
        self._acked: asyncio.Future[None] | None = None  # settles with their answers
        self._sending: set[asyncio.Future[list[Any]]] = set()  # held until answered

    # -- fed by the registry -----------------------------------------------------------

    def deliver(self, received: GroupReceived) -> None:
        if not self._ended:
            r = received
            self._put(
                ClientDelivery(self, r.delivery, r.attempt, r.dedupe, r.topic, r.offset, r.event)
            )

    def joined(self, result: GroupJoinResult) -> None:
        self.member = result.member
        self.pattern = result.pattern
        self.hops = 0
        opening = self.opening
        if opening is not None and not opening.done():
            opening.set_result(None)

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
        """Ack deliveries (of this group); returns once the server made the acks durable.

        Every ack of this group asked for in one loop turn (`d.ack()` of many
        handler tasks, `g.ack(*batch)`) goes out together, in as few `ack`
        commands as the limit allows (`MAX_SETTLE_IDS` ids each).
        """
        if not deliveries:
            return
        self._acks.extend(d.id for d in deliveries)
        done = self._acked
        if done is None:
            loop = asyncio.get_running_loop()
            done = self._acked = loop.create_future()
            loop.call_soon(self._send_acks)
        # Shielded: one caller's cancellation must not withdraw the others' acks.
        await asyncio.shield(done)

    def _send_acks(self) -> None:
        """Send the acks of this loop turn; their future settles with the answers."""
        ids, done = self._acks, self._acked
        self._acks, self._acked = [], None
        assert done is not None
        name = self.name
        sending = asyncio.ensure_future(
            asyncio.gather(
                *(
                    self.request(_acking(name, ids[start : start + MAX_SETTLE_IDS]))
                    for start in range(0, len(ids), MAX_SETTLE_IDS)
                )
            )
        )
        self._sending.add(sending)

        def answered(task: asyncio.Future[list[Any]]) -> None:
            self._sending.discard(task)
            if done.done():
                return
            if task.cancelled():
                done.cancel()
            elif (error := task.exception()) is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

        sending.add_done_callback(answered)
        # A future nobody awaits any more (every caller was cancelled) must not log its error.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())

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
    """The client's consumer groups across its connections (see the module docstring).

    `follow` opens (or reuses) the client's connection to another node and
    gives its memberships; `home` is the client's own (None: this is it).
    """

    def __init__(
        self,
        link: Link,
        request: Requester,
        follow: Follow | None = None,
        home: Memberships | None = None,
    ) -> None:
        self._link = link
        self.request = request
        self._follow = follow
        self._home = home or self
        self._groups: dict[str, ClientGroup] = {}
        self._joining: dict[int, ClientGroup] = {}  # by the id of their group_join
        self._sent: set[ClientGroup] = set()  # a group_join went out on this session
        self._moving: dict[asyncio.Task[None], ClientGroup] = {}  # memberships on their way

    async def open(self, group: ClientGroup) -> None:
        """Join; return once the server confirmed it (or raise its refusal)."""
        if group.name in self._groups:
            raise InvalidInput(f"already a member of group {group.name!r} on this client")
        failure = self._link.failure()
        if failure is not None:
            raise failure
        opened = group.opening = asyncio.get_running_loop().create_future()
        self.adopt(group)
        try:
            async with asyncio.timeout(self._link.request_timeout()):
                await opened
        except BaseException:
            group._registry.close(group)
            raise
        finally:
            group.opening = None

    def adopt(self, group: ClientGroup) -> None:
        """Make `group` a membership of this connection: join at once if connected."""
        group._registry = self
        self._groups[group.name] = group
        session = self._link.live()
        if session is not None:
            self._send(session, group)

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
        """The connection ended: joins in flight are sent again on the next one.

        On a connection to another node (a coordinator), the memberships go
        back to the client's own connection: that node may be gone for good,
        and its groups taken over elsewhere once their leases run out.
        """
        self._joining.clear()
        self._sent.clear()
        if self._home is not self:
            why = "the connection to the group's coordinator ended"
            lost = RemoteError(ErrorCode.NOT_COORDINATOR, why, True)
            for group in list(self._groups.values()):
                self._move(group, "", lost)

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

    def refused(self, id: int, error: BusError) -> None:
        """Command `id` was refused: if it was a group_join, that membership ends (or moves)."""
        group = self._joining.pop(id, None)
        if group is None:
            return
        url = getattr(error, "url", "")
        if error.code == ErrorCode.NOT_COORDINATOR and url and self._follow is not None:
            self._move(group, url, error)
        else:
            self._end(group, error)

    def ended(self, event: GroupEnded) -> None:
        """The server ended the membership of `event.group`: it ends with that error (or moves)."""
        group = self._groups.get(event.group)
        if group is None:
            return
        error = RemoteError(event.code, event.reason, False)
        if event.code == ErrorCode.NOT_COORDINATOR:
            self._sent.discard(group)  # the server ended it: nothing to leave
            self._move(group, "", error)  # joins again through the client's own connection
        else:
            self._end(group, error)

    def _move(self, group: ClientGroup, url: str, error: BusError) -> None:
        """Take `group` to the connection to `url` ("": the client's own) and join there."""
        if self._groups.get(group.name) is group:
            del self._groups[group.name]
        self._sent.discard(group)
        group.hops += 1
        task = asyncio.get_running_loop().create_task(self._moved(group, url, error))
        self._moving[task] = group
        task.add_done_callback(lambda done: self._moving.pop(done, None))

    async def _moved(self, group: ClientGroup, url: str, error: BusError) -> None:
        if group.hops > 1:  # the coordinator is moving: give its lease time to run out
            await asyncio.sleep(min(0.05 * 2**group.hops, _MAX_WAIT))
        home = self._home
        try:
            target = await self._follow(url) if url and self._follow else home
        except BusError as exc:
            group.end(exc)
            self._fail_opening(group, exc)
            return
        if group.ended:
            return  # left meanwhile
        if target._groups.get(group.name) not in (None, group):
            group.end(error)  # (the application joined it again meanwhile)
            return
        if target is not home and target._link.live() is None:
            home._move(group, "", error)  # that node is not reachable now: ask again later
            return
        target.adopt(group)

    def fail_all(self, error: BusError, *, quietly: bool = False) -> None:
        """The client ended: every membership ends (with `error`, unless `quietly`)."""
        moving, self._moving = self._moving, {}
        for task in moving:
            task.cancel()
        for group in [*self._groups.values(), *moving.values()]:
            if quietly:
                group.end()
            else:
                self._end(group, error)
        self._groups.clear()

    def _end(self, group: ClientGroup, error: BusError) -> None:
        if self._groups.get(group.name) is group:
            del self._groups[group.name]
        self._fail_opening(group, error)
        group.end(error)

    @staticmethod
    def _fail_opening(group: ClientGroup, error: BusError) -> None:
        opening = group.opening
        if opening is not None and not opening.done():
            opening.set_exception(error)
