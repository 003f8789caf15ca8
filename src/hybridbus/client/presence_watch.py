"""Watching who is in a topic from the Python client: `c.presence_watch(topic)`.

Owns: `ClientPresence`, one topic's members kept current by the server's
`join` / `leave` / `presence` pushes (docs/protocol.md §5.5, §6.3), and
`PresenceChange`, what its iterator yields. Must not do I/O itself: its
commands go through the client's `_command` path; `client.presence` hands
it the pushes, the reconnects and the client's end.

    async with c.presence_watch("docs/42") as room:    # the members, at once
        print(len(room.members))                        # client id -> ClientInfo
        async for change in room:                       # then what changes
            print(change.kind, change.info.client)      # join, leave, degraded, active

The list. The watch asks `presence` with `watch: true` and a `limit` (a page
at a time: the whole list of a 10,000-member topic is near a frame's limit),
then follows the cursor. The server watches from the first page's command on;
pushes read while the later pages come are applied to the list gathered (a
member joining meanwhile is one member however it comes; one leaving is on no
later page, §5.5). `members` is that list once complete, then kept by the
pushes; the iterator yields what changed after it (a topic's members are not
yielded once each as joins: they are `members`).

Across a drop. After a reconnect, in the turn the connect is answered, the
view lists the members again and compares the new list with the one held:
members gone meanwhile yield `leave`, new ones `join`, a changed state
`degraded` / `active`; a member that stayed — a resumed session keeps its
client id — yields nothing. Nothing is missed and nothing doubled.

Memory. At most one pending change per member: a reader that falls behind
gets, for each member, what changed since it last looked — a `join` then a
`leave` is nothing, as are `degraded` then `active` and a `leave` then a
`join` of the same id in the same state.

The end. The protocol has no unwatch for presence: a watch lasts as long as
its connection. Leaving the `async with` (or `unwatch()`) ends the view's
iterator and drops the pushes still coming; the view is not watched again
after a reconnect. If the client ends, so does the iterator (with the
client's error, none when it was closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

import msgspec

from hybridbus.error_codes import ErrorCode
from hybridbus.errors import BusError, InvalidInput, RemoteError
from hybridbus.proto.client import ClientSession
from hybridbus.proto.frames import (
    MAX_PRESENCE_LIMIT,
    ClientInfo,
    Join,
    Leave,
    PresenceChanged,
    PresenceResult,
)

__all__ = ["PAGE_SIZE", "ClientPresence", "PresenceChange"]

PAGE_SIZE = 1000  # members per page of a watch's list (about 100 KB of JSON)
_RETRIES = 3  # lists started again after a refused cursor (1621), before giving up

Kind = Literal["join", "leave", "degraded", "active"]
Issue = Callable[[ClientSession], int]
Phase = Literal["idle", "asked", "paging", "live"]


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A member `join`ed or `leave`s the topic, or its session went `degraded` / `active`.

    `info` is the member as the server showed it then (`info.state` its state).
    """

    kind: Kind
    info: ClientInfo

    @property
    def client(self) -> str:
        """The member's client id (the same across the connections of its session)."""
        return self.info.client


class Owner(Protocol):
    """What a view needs of its client."""

    def _command(
        self,
        issue: Issue,
        answered: Callable[[Any], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None: ...

    def failure(self) -> BusError | None: ...

    def request_timeout(self) -> float: ...


class ClientPresence:
    """The members of one topic, kept current (module docstring); `c.presence_watch(topic)`."""

    def __init__(
        self,
        topic: str,
        owner: Owner,
        forget: Callable[[ClientPresence], None],
        page_size: int = PAGE_SIZE,
    ) -> None:
        if not 1 <= page_size <= MAX_PRESENCE_LIMIT:
            raise InvalidInput(f"page_size must be 1 to {MAX_PRESENCE_LIMIT}, not {page_size}")
        self.topic = topic
        self.members: dict[str, ClientInfo] = {}  # client id -> its info (`state` included)
        self._owner = owner
        self._forget = forget
        self._page_size = page_size
        self._wanted = False  # watched, and not unwatched nor ended
        self._listed = False  # a list was complete once: `members` holds it
        self._phase: Phase = "idle"
        self._gathering: dict[str, ClientInfo] = {}  # the list coming in, pushes applied
        self._asked = 0  # lists started: only the newest one's answers count
        self._retries = 0
        # Per member: what the reader last knew of it (None: absent), and the change since.
        self._pending: dict[str, tuple[ClientInfo | None, PresenceChange]] = {}
        self._wake = asyncio.Event()
        self._ended: BaseException | None = None  # why the view ended
        self._quiet = False  # it ended without an error (the client was closed, unwatched)

    async def watch(self) -> dict[str, ClientInfo]:
        """Watch the topic (done by entering and by the first iteration too); the members.

        Raises `RemoteError` when the server refuses (1110: no `presence` on the
        topic), what ended the client, or `TimeoutError` past the request timeout.
        """
        if self._ended is not None:
            raise self._ended
        if not self._wanted:
            self._wanted = True
            self._list()
        async with asyncio.timeout(self._owner.request_timeout()):
            while not self._listed:
                failure = self._ended or self._owner.failure()
                if failure is not None:
                    raise failure
                self._wake.clear()
                await self._wake.wait()
        return dict(self.members)

    async def unwatch(self) -> None:
        """No more changes: the iterator ends (the server's pushes stop with the connection)."""
        self._end(InvalidInput(f"the presence view of {self.topic!r} was unwatched"), quietly=True)
        self._pending.clear()

    async def __aenter__(self) -> ClientPresence:
        await self.watch()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.unwatch()

    def __aiter__(self) -> ClientPresence:
        return self

    async def __anext__(self) -> PresenceChange:
        if not self._wanted and self._ended is None:
            await self.watch()
        while not self._pending:
            if self._ended is not None:
                if self._quiet:
                    raise StopAsyncIteration
                raise self._ended
            self._wake.clear()
            await self._wake.wait()
        client = next(iter(self._pending))
        return self._pending.pop(client)[1]

    # -- the list ----------------------------------------------------------------------

    def _list(self) -> None:
        """Ask for the members again, from the first page (which also watches)."""
        self._asked += 1
        self._phase, self._gathering = "asked", {}
        self._ask(self._asked, None)

    def _ask(self, asked: int, cursor: str | None) -> None:
        topic, limit, first = self.topic, self._page_size, cursor is None
        self._owner._command(
            lambda s: s.presence(topic, watch=first, limit=limit, cursor=cursor),
            lambda result: self._paged(asked, result),
            lambda error: self._refused(asked, error),
        )

    def _paged(self, asked: int, result: PresenceResult) -> None:
        """A page, in the turn it came in (before the pushes read after it)."""
        if asked != self._asked:
            return  # a list started again since
        self._phase = "paging"
        for info in result.clients:
            self._gathering[info.client] = info
        if result.cursor is not None:
            self._ask(asked, result.cursor)
            return
        held, now = self.members, self._gathering
        self.members, self._gathering = now, {}
        self._phase, self._retries = "live", 0
        if self._listed:  # again, after a reconnect: what changed meanwhile
            for client in [*held, *(c for c in now if c not in held)]:
                old = held.get(client)
                self._changed(client, old, now.get(client), old)
        self._listed = True
        self._wake.set()

    def _refused(self, asked: int, error: BaseException) -> None:
        if asked != self._asked or not isinstance(error, RemoteError):
            return  # lost with its connection: `reconnected` lists again
        if error.code == ErrorCode.INVALID_CURSOR and self._retries < _RETRIES:
            self._retries += 1  # (not this node's cursor: cannot be on one connection, but)
            self._list()
            return
        self._end(error, quietly=False)

    # -- changes -----------------------------------------------------------------------

    def _changed(
        self, client: str, old: ClientInfo | None, new: ClientInfo | None, gone: ClientInfo | None
    ) -> None:
        """`client` went from `old` to `new` (None: absent; `gone`: its info as it left)."""
        held = self._pending.pop(client, None)
        known = held[0] if held is not None else old  # what the reader last knew of it
        change: PresenceChange | None = None
        if new is None:
            if known is not None:
                change = PresenceChange("leave", gone or known)
        elif known is None:
            change = PresenceChange("join", new)
        elif known.state != new.state:
            change = PresenceChange(new.state, new)
        if change is not None:
            self._pending[client] = (known, change)  # the newest, at the end
            self._wake.set()

    def _end(self, error: BaseException, *, quietly: bool) -> None:
        if self._ended is None:
            self._ended, self._quiet = error, quietly
        self._stop()

    def _stop(self) -> None:
        self._wanted = False
        self._asked += 1  # answers still coming are dropped
        self._phase, self._gathering = "idle", {}
        self._forget(self)
        self._wake.set()

    # -- from the client ---------------------------------------------------------------

    def pushed(self, push: Join | Leave | PresenceChanged) -> None:
        """A `join`, `leave` or `presence` push of the topic."""
        phase = self._phase
        if phase in ("idle", "asked"):
            return  # not watched, or the list asked for is newer than the push
        info = push.info
        if isinstance(push, PresenceChanged) and info.state != push.state:
            info = msgspec.structs.replace(info, state=push.state)
        members = self._gathering if phase == "paging" else self.members
        old = members.get(info.client)
        new: ClientInfo | None = None
        if isinstance(push, Leave):
            members.pop(info.client, None)
        else:
            new = members[info.client] = info
        if phase == "live":
            self._changed(info.client, old, new, info)

    def reconnected(self) -> None:
        """A new connection: list and watch again, in the turn its connect is answered."""
        if self._wanted:
            self._list()

    def ended(self, error: BusError, *, quietly: bool) -> None:
        """The client ended: the iterator ends too, with `error` unless `quietly`."""
        self._end(error, quietly=quietly)
