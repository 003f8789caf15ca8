"""Awareness and state topics in the Python client: `c.awareness(t)`, `c.state(t)`, `c.patch`.

Owns: the client's awareness views (its own state per topic, `own`, sent
again after a reconnect since the server removes it when it saw the
connection close; the others' states, `states`, watched and re-watched —
this client's own, named by its presence id `c.info.client`, is never among
them) and state views (the document and its version, kept by applying the
server's `state` pushes in order, resumed after a reconnect from the version
held: the patches after it or a new snapshot; a gap subscribes again from
the version held), and the `Collaboration` mixin that gives `Client` those
methods. Must not do I/O itself: commands go through the client's request
path.

Order. After a reconnect the views send their state, watches and
subscriptions in the turn the connect is answered, before the commands the
drop left unanswered are sent again: a replayed `awareness_set` lands after
the state held (the newest set wins), a replayed `state_patch` after the
resubscribe. A subscribe's or watch's reply is applied in the turn it is
read, before the pushes read after it; pushes that come while a subscribe is
awaited wait for its reply (those newer than its version are taken then).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hybridbus.client.requests import CommandPath, Issue
from hybridbus.core import merge_patch
from hybridbus.errors import BusError, InvalidInput
from hybridbus.proto.client import ClientSession
from hybridbus.proto.frames import (
    AwarenessPush,
    AwarenessResult,
    AwarenessSet,
    AwarenessSetResult,
    AwarenessUnwatch,
    AwarenessWatch,
    ConnectResult,
    StatePatch,
    StatePatchResult,
    StatePush,
    StateResult,
    StateSubscribe,
    StateUnsubscribe,
)

__all__ = ["AwarenessChange", "ClientAwareness", "ClientState", "Collaboration", "StateChange"]



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

    def __init__(self, topic: str, owner: Collaboration) -> None:
        self.topic = topic
        self._owner = owner
        self.own: dict[str, Any] = {}  # this client's state, sent again after a reconnect
        self.states: dict[str, AwarenessChange] = {}  # the others' (never this client's)
        self._pending: dict[str, AwarenessChange] = {}
        self._wake = asyncio.Event()
        self._watching = False
        self._ended: _End | None = None  # the client ended: the iterator ends after `_pending`

    async def set(self, key: str, value: Any) -> int:
        """Set one key of this client's state (None removes it); the server's Lamport stamp."""
        return await self.update({key: value})

    async def update(self, changes: Mapping[str, Any]) -> int:
        """Merge `changes` into this client's state (a None value removes its key)."""
        state = dict(changes)
        topic = self.topic

        def answered(_: Any) -> None:  # `own` follows the server's order of the sets
            for key, value in state.items():
                if value is None:
                    self.own.pop(key, None)
                else:
                    self.own[key] = value

        result: AwarenessSetResult = await self._owner._request(
            lambda s: s.command(lambda id: AwarenessSet(id=id, topic=topic, state=state)),
            answered,
        )
        return result.lamport

    async def watch(self) -> dict[str, AwarenessChange]:
        """Watch the others' states (done by the first iteration too); the states now."""
        await self._owner._request(self._watch_command, self._watched)
        return dict(self.states)

    async def unwatch(self) -> None:
        """No more changes of the others' states."""
        topic = self.topic
        self._watching = False
        await self._owner._request(
            lambda s: s.command(lambda id: AwarenessUnwatch(id=id, topic=topic))
        )

    def __aiter__(self) -> ClientAwareness:
        return self

    async def __anext__(self) -> AwarenessChange:
        if not self._watching and self._ended is None:
            await self.watch()
        while not self._pending:
            if self._ended is not None:
                self._ended.stop()
            self._wake.clear()
            await self._wake.wait()
        client = next(iter(self._pending))
        return self._pending.pop(client)

    def ended(self, error: BusError, *, quietly: bool) -> None:
        """The client ended: the iterator ends too, with `error` unless `quietly`."""
        self._ended = _End(error, quietly)
        self._wake.set()

    # -- inside ----------------------------------------------------------------------

    def _watch_command(self, session: ClientSession) -> int:
        topic = self.topic
        return session.command(lambda id: AwarenessWatch(id=id, topic=topic))

    def _watched(self, result: AwarenessResult) -> None:
        """The watch reply, in the turn it came in: every state now but this client's."""
        self._watching = True
        me = self._owner._collab_self()
        now = {
            c.client: AwarenessChange(c.client, c.state, c.lamport, c.user)
            for c in result.clients
            if c.client != me
        }
        for client, old in self.states.items():
            if client not in now:
                self._queue(AwarenessChange(client, {}, old.lamport, old.user, removed=True))
        for change in now.values():
            if self.states.get(change.client) != change:
                self._queue(change)
        self.states = now

    def _queue(self, change: AwarenessChange) -> None:
        self._pending.pop(change.client, None)  # the newest only, at the end
        self._pending[change.client] = change
        self._wake.set()

    # -- from the client -----------------------------------------------------------

    def pushed(self, push: AwarenessPush) -> None:
        if push.client == self._owner._collab_self():
            return  # this client's own (the server pushes none; its state is `own`)
        change = AwarenessChange(push.client, push.state, push.lamport, push.user, push.removed)
        if push.removed:
            self.states.pop(push.client, None)
        else:
            self.states[push.client] = change
        self._queue(change)

    def reconnected(self) -> None:
        """A new connection: this client's state and the watch again, before any replay."""
        if self.own:
            own, topic = dict(self.own), self.topic
            self._owner._command(
                lambda s: s.command(lambda id: AwarenessSet(id=id, topic=topic, state=own))
            )
        if self._watching:
            self._owner._command(self._watch_command, self._watched)


class ClientState:
    """A state topic's document, kept current (see the module docstring); `c.state(topic)`."""

    def __init__(
        self, topic: str, owner: Collaboration, forget: Callable[[ClientState], None]
    ) -> None:
        self.topic = topic
        self._owner = owner
        self._forget = forget
        self.value: Any = None
        self.version = 0
        self._changes: deque[StateChange] = deque()
        self._wake = asyncio.Event()
        self._ended: _End | None = None  # the client ended: the iterator ends after `_changes`
        self._open = False  # a subscribe was answered: pushes follow the version held
        self._closed = False
        # A subscribe's reply is awaited: the pushes meanwhile wait for it (those newer
        # than its version are taken after it).
        self._waiting = False
        self._early: list[StatePush] = []
        self._asked = 0  # resubscribes sent: a refusal is only the newest one's to act on

    async def __aenter__(self) -> ClientState:
        self._waiting, self._early = True, []
        try:
            await self._owner._request(self._subscribe_command(None), self._subscribed)
        except BaseException:
            self._closed, self._waiting, self._early = True, False, []
            self._forget(self)  # refused (or cancelled): the topic may be viewed again
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = self._waiting = False
        self._closed = True
        self._early = []
        self._forget(self)
        topic = self.topic
        try:
            await self._owner._request(
                lambda s: s.command(lambda id: StateUnsubscribe(id=id, topic=topic))
            )
        except BusError:  # the client was closed, or the server refused: nothing to end then
            return

    def __aiter__(self) -> ClientState:
        return self

    async def __anext__(self) -> StateChange:
        while not self._changes:
            if self._ended is not None:
                self._ended.stop()
            self._wake.clear()
            await self._wake.wait()
        return self._changes.popleft()

    def ended(self, error: BusError, *, quietly: bool) -> None:
        """The client ended: the iterator ends too, with `error` unless `quietly`."""
        self._ended = _End(error, quietly)
        self._wake.set()

    # -- inside ----------------------------------------------------------------------

    def _subscribe_command(self, since: int | None) -> Issue:
        topic = self.topic
        return lambda s: s.command(lambda id: StateSubscribe(id=id, topic=topic, since=since))

    def _resubscribe(self) -> None:
        """Subscribe again from the version held (sent now if connected, else on reconnect)."""
        self._waiting, self._early = True, []
        self._asked += 1
        asked = self._asked

        def refused(_: BaseException) -> None:  # refused, or lost with its connection
            if asked == self._asked:  # (not a later one's)
                self._waiting, self._early = False, []

        self._owner._command(self._subscribe_command(self.version), self._subscribed, refused)

    def _subscribed(self, result: StateResult) -> None:
        """A subscribe's reply, in the turn it came in (before the pushes after it)."""
        if self._closed:
            return
        first = not self._open
        self._open, self._waiting = True, False
        early, self._early = self._early, []
        if result.snapshot:
            changed = not first and (result.version, result.document) != (
                self.version,
                self.value,
            )
            self.value, self.version = result.document, result.version
            if changed:
                self._emit(StateChange(result.version, None, result.document))
        else:
            for version, patch in result.patches:
                self._apply(version, patch)
            if self.version < result.version and not self._waiting:
                self._resubscribe()  # not what §5.12 promises: start over from what is held
        for push in early:
            if push.version > self.version:
                self.pushed(push)

    def _apply(self, version: int, patch: Any) -> None:
        if version <= self.version:
            return  # seen already
        if version != self.version + 1:
            self._resubscribe()  # one is missing: the server sends what follows ours
            return
        self.value = merge_patch.apply(self.value, patch)
        self.version = version
        self._emit(StateChange(version, patch, self.value))

    def _emit(self, change: StateChange) -> None:
        self._changes.append(change)
        self._wake.set()

    # -- from the client -------------------------------------------------------------

    def pushed(self, push: StatePush) -> None:
        if self._closed:
            return
        if self._waiting:
            self._early.append(push)
        elif not self._open:
            return
        elif push.snapshot:
            self.value, self.version = push.document, push.version
            self._emit(StateChange(push.version, None, push.document))
        else:
            self._apply(push.version, push.patch)

    def reconnected(self) -> None:
        """A new connection: subscribe again from the version held, before any replay."""
        if self._open and not self._closed:
            self._resubscribe()


@dataclass(frozen=True, slots=True)
class _End:
    """How a view's iterator ends once the client did: quietly, or raising `error`."""

    error: BusError
    quietly: bool

    def stop(self) -> None:
        if self.quietly:
            raise StopAsyncIteration
        raise self.error


class Collaboration(CommandPath):
    """What `Client` gets of this module: `awareness`, `state`, `patch` (module docstring)."""

    _collab_awareness: dict[str, ClientAwareness]
    _collab_states: dict[str, ClientState]
    info: ConnectResult | None  # the client's last connect reply

    def awareness(self, topic: str) -> ClientAwareness:
        """Awareness on `topic` (relative to the token's tenant); one view per topic."""
        views = self._collab_views()[0]
        view = views.get(topic)
        if view is None:
            view = views[topic] = ClientAwareness(topic, self)
        return view

    def state(self, topic: str) -> ClientState:
        """The state document of `topic`: `async with c.state(topic) as doc`.

        One view per topic at a time (the server keeps one subscription per
        topic and connection): InvalidInput while another is open.
        """
        states = self._collab_views()[1]
        if topic in states:
            raise InvalidInput(f"a state view of {topic!r} is open: use it, or close it first")

        def forget(view: ClientState) -> None:
            if states.get(topic) is view:
                del states[topic]

        view = ClientState(topic, self, forget)
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

    def _collab_self(self) -> str | None:
        """This client's presence id, which names its awareness states (None: not connected)."""
        info = self.info
        return info.client if info is not None else None

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

    def _collab_ended(self, error: BusError, *, quietly: bool) -> None:
        """The client ended: so does every view's iterator."""
        awareness, states = self._collab_views()
        views: list[ClientAwareness | ClientState] = [*awareness.values(), *states.values()]
        for view in views:
            view.ended(error, quietly=quietly)

    def _collab_reconnected(self) -> None:
        """A new connection: own states, watches and state subscriptions again — now, in
        this turn, so they go before the commands a drop left unanswered (a replayed
        `awareness_set` lands after the state held, a replayed `state_patch` after the
        resubscribe)."""
        awareness, states = self._collab_views()
        views: list[ClientAwareness | ClientState] = [*awareness.values(), *states.values()]
        for view in views:
            view.reconnected()
