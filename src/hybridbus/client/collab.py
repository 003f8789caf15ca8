"""Awareness and state topics in the Python client: `c.awareness(t)`, `c.state(t)`, `c.patch`.

Owns: the client's awareness views (its own state per topic, sent again
after a reconnect since the server removes it when a connection closes; the
others' states, watched and re-watched) and state views (the document and
its version, kept by applying the server's `state` pushes in order, resumed
after a reconnect from the version held: the patches after it or a new
snapshot), and the `Collaboration` mixin that gives `Client` those methods.
Must not do I/O itself: commands go through the client's request path.

    aw = c.awareness("docs/42")
    await aw.set("cursor", {"line": 3, "ch": 14})
    async for change in aw:              # others' states: at once, then changes
        print(change.client, change.state, change.removed)

    async with c.state("boards/1") as doc:   # the document at once, then its changes
        print(doc.version, doc.value)
        version = await c.patch("boards/1", {"title": "Q3"}, if_version=doc.version)
        async for change in doc:
            print(change.version, change.patch, doc.value)

A change iterator holds at most one pending change per client (awareness:
the newest state) or every patch in order (state; a subscriber that stops
reading holds them in memory). A `patch` in flight during a drop is sent
again on the next connection (as every command is): merge patches are
idempotent, but with `if_version` the second answer may be 1640 although the
first went in — read `doc.version` to know.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hybridbus.core import merge_patch
from hybridbus.errors import BusError
from hybridbus.proto.client import ClientSession
from hybridbus.proto.frames import (
    AwarenessPush,
    AwarenessResult,
    AwarenessSet,
    AwarenessSetResult,
    AwarenessUnwatch,
    AwarenessWatch,
    StatePatch,
    StatePatchResult,
    StatePush,
    StateResult,
    StateSubscribe,
    StateUnsubscribe,
)

__all__ = ["AwarenessChange", "ClientAwareness", "ClientState", "Collaboration", "StateChange"]

Issue = Callable[[ClientSession], int]
RequestFn = Callable[[Issue], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class AwarenessChange:
    """Another client's awareness state on the topic now (`removed`: it is gone)."""

    client: str
    state: dict[str, Any]
    lamport: int
    user: str | None = None
    removed: bool = False


@dataclass(frozen=True, slots=True)
class StateChange:
    """The document went to `version`; `patch` made it (None: a whole new `document`)."""

    version: int
    patch: Any
    document: Any


class ClientAwareness:
    """Awareness on one topic (see the module docstring); `c.awareness(topic)` gives it."""

    def __init__(self, topic: str, request: RequestFn) -> None:
        self.topic = topic
        self._request = request
        self.own: dict[str, Any] = {}  # this client's state, sent again after a reconnect
        self.states: dict[str, AwarenessChange] = {}  # the others', by client id
        self._pending: dict[str, AwarenessChange] = {}
        self._wake = asyncio.Event()
        self._watching = False

    async def set(self, key: str, value: Any) -> int:
        """Set one key of this client's state (None removes it); the server's Lamport stamp."""
        return await self.update({key: value})

    async def update(self, changes: Mapping[str, Any]) -> int:
        """Merge `changes` into this client's state (a None value removes its key)."""
        state = dict(changes)
        topic = self.topic
        result: AwarenessSetResult = await self._request(
            lambda s: s.command(lambda id: AwarenessSet(id=id, topic=topic, state=state))
        )
        for key, value in state.items():
            if value is None:
                self.own.pop(key, None)
            else:
                self.own[key] = value
        return result.lamport

    async def watch(self) -> dict[str, AwarenessChange]:
        """Watch the others' states (done by the first iteration too); the states now."""
        topic = self.topic
        result: AwarenessResult = await self._request(
            lambda s: s.command(lambda id: AwarenessWatch(id=id, topic=topic))
        )
        self._watching = True
        now = {
            c.client: AwarenessChange(c.client, c.state, c.lamport, c.user) for c in result.clients
        }
        for client, old in self.states.items():
            if client not in now:
                self._queue(AwarenessChange(client, {}, old.lamport, old.user, removed=True))
        for change in now.values():
            if self.states.get(change.client) != change:
                self._queue(change)
        self.states = now
        return dict(now)

    async def unwatch(self) -> None:
        """No more changes of the others' states."""
        topic = self.topic
        self._watching = False
        await self._request(lambda s: s.command(lambda id: AwarenessUnwatch(id=id, topic=topic)))

    def __aiter__(self) -> ClientAwareness:
        return self

    async def __anext__(self) -> AwarenessChange:
        if not self._watching:
            await self.watch()
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        client = next(iter(self._pending))
        return self._pending.pop(client)

    # -- from the client -----------------------------------------------------------

    def pushed(self, push: AwarenessPush) -> None:
        change = AwarenessChange(push.client, push.state, push.lamport, push.user, push.removed)
        if push.removed:
            self.states.pop(push.client, None)
        else:
            self.states[push.client] = change
        self._queue(change)

    def _queue(self, change: AwarenessChange) -> None:
        self._pending.pop(change.client, None)  # the newest only, at the end
        self._pending[change.client] = change
        self._wake.set()

    async def reconnected(self) -> None:
        if self.own:
            await self.update(dict(self.own))
        if self._watching:
            await self.watch()


class ClientState:
    """A state topic's document, kept current (see the module docstring); `c.state(topic)`."""

    def __init__(self, topic: str, request: RequestFn, forget: Callable[[ClientState], None]):
        self.topic = topic
        self._request = request
        self._forget = forget
        self.value: Any = None
        self.version = 0
        self._changes: deque[StateChange] = deque()
        self._wake = asyncio.Event()
        self._open = False

    async def __aenter__(self) -> ClientState:
        await self._subscribe(None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._forget(self)
        topic = self.topic
        try:
            await self._request(
                lambda s: s.command(lambda id: StateUnsubscribe(id=id, topic=topic))
            )
        except BusError:  # the client was closed, or the server refused: nothing to end then
            return

    def __aiter__(self) -> ClientState:
        return self

    async def __anext__(self) -> StateChange:
        while not self._changes:
            self._wake.clear()
            await self._wake.wait()
        return self._changes.popleft()

    async def _subscribe(self, since: int | None) -> None:
        topic = self.topic
        result: StateResult = await self._request(
            lambda s: s.command(lambda id: StateSubscribe(id=id, topic=topic, since=since))
        )
        self._open = True
        if result.snapshot:
            changed = since is not None and (result.version, result.document) != (
                self.version,
                self.value,
            )
            self.value, self.version = result.document, result.version
            if changed:
                self._emit(StateChange(result.version, None, result.document))
            return
        for version, patch in result.patches:
            self._apply(version, patch)

    def _apply(self, version: int, patch: Any) -> None:
        if version <= self.version:
            return  # seen already
        self.value = merge_patch.apply(self.value, patch)
        self.version = version
        self._emit(StateChange(version, patch, self.value))

    def _emit(self, change: StateChange) -> None:
        self._changes.append(change)
        self._wake.set()

    # -- from the client -------------------------------------------------------------

    def pushed(self, push: StatePush) -> None:
        if not self._open:
            return
        if push.snapshot:
            self.value, self.version = push.document, push.version
            self._emit(StateChange(push.version, None, push.document))
        else:
            self._apply(push.version, push.patch)

    async def reconnected(self) -> None:
        if self._open:
            await self._subscribe(self.version)


class Collaboration:
    """What `Client` gets of this module: `awareness`, `state`, `patch` (module docstring)."""

    _collab_awareness: dict[str, ClientAwareness]
    _collab_states: dict[str, ClientState]

    async def _request(self, issue: Issue) -> Any:
        raise NotImplementedError  # the Client's

    def awareness(self, topic: str) -> ClientAwareness:
        """Awareness on `topic` (relative to the token's tenant); one view per topic."""
        views = self._collab_views()[0]
        view = views.get(topic)
        if view is None:
            view = views[topic] = ClientAwareness(topic, self._request)
        return view

    def state(self, topic: str) -> ClientState:
        """The state document of `topic`: `async with c.state(topic) as doc`."""
        states = self._collab_views()[1]

        def forget(view: ClientState) -> None:
            if states.get(topic) is view:
                del states[topic]

        view = ClientState(topic, self._request, forget)
        states[topic] = view
        return view

    async def patch(
        self, topic: str, patch: Any, *, if_version: int | None = None, lamport: int | None = None
    ) -> int:
        """Merge `patch` (RFC 7396) into `topic`'s document; its new version.

        Raises `RemoteError` 1640 when `if_version` is not the version (1641:
        a `lamport` too old, 1642: the document would be too large).
        """

        def make(id: int) -> StatePatch:
            return StatePatch(
                id=id, topic=topic, patch=patch, if_version=if_version, lamport=lamport
            )

        result: StatePatchResult = await self._request(lambda s: s.command(make))
        return result.version

    # -- for the client ------------------------------------------------------------

    def _collab_views(self) -> tuple[dict[str, ClientAwareness], dict[str, ClientState]]:
        try:
            return self._collab_awareness, self._collab_states
        except AttributeError:
            self._collab_awareness, self._collab_states = {}, {}
            return self._collab_awareness, self._collab_states

    def _collab_pushed(self, push: AwarenessPush | StatePush) -> None:
        """Route a push to its view."""
        awareness, states = self._collab_views()
        if isinstance(push, AwarenessPush):
            view = awareness.get(push.topic)
            if view is not None:
                view.pushed(push)
        else:
            state = states.get(push.topic)
            if state is not None:
                state.pushed(push)

    def _collab_reconnected(self) -> None:
        """A new connection: send own states, watches and state subscriptions again."""
        awareness, states = self._collab_views()
        views: list[ClientAwareness | ClientState] = [*awareness.values(), *states.values()]
        for view in views:
            task = asyncio.ensure_future(view.reconnected())
            _AGAIN.add(task)
            task.add_done_callback(_done)


# Tasks sending views again after a reconnect (kept referenced until done).
_AGAIN: set[asyncio.Future[None]] = set()


def _done(task: asyncio.Future[None]) -> None:
    _AGAIN.discard(task)
    if not task.cancelled():
        task.exception()  # a failure (the client closed) is the view's next request's to raise
