"""State topics on the log: each document a fold of its topic's patch events, with snapshots.

Owns: the loaded state documents of a bus (`core.state_doc.StateDoc`, one per
ABSOLUTE topic), loading one (its latest snapshot, then the patch events after
it, then following the topic live), applying a patch (append it as an event,
then wait for the fold to reach it: the fold says accepted or refused), the
changes told to listeners in version order, the recent changes kept for a
resume, the snapshots written every `snapshot_every` versions, and unloading
a document nobody listened to for `idle` seconds. Must not check permissions
(callers publish through the `Guard`), encode frames or know connections.

The log is the truth (docs/collaboration.md, "State topics"). A patch is an
event of type `hybridbus.state.patch` on the state topic itself, data
`{"patch", "if_version"?, "lamport"?, "origin"}`; the document is the fold of
those events in log order by `StateDoc`'s rules, so every node that follows
the topic holds the same document, and a compare-and-set is decided by the
order the log gave the patches — concurrent ones with the same `if_version`:
exactly one accepted, on any number of nodes. A refused patch stays in the
log and is skipped by every fold alike. Other events on the topic are
ignored. A snapshot is an event of type `hybridbus.state.snapshot` on
`$state/<topic>` (a `$` topic: no pattern of a client reaches it), data
`{"snapshot": StateDoc.snapshot(), "position": <the topic's resume token
after the last patch folded into it>}`; loading reads the latest one, then
the topic after its position. Written by the node whose patch reached the
version; a lost one costs only a longer load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hybridbus import tasks
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery, Position
from hybridbus.core.state_doc import Applied, StateDoc
from hybridbus.errors import BusError, InvalidInput, SubscriptionEnded

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = [
    "PATCH_TYPE",
    "SNAPSHOT_TYPE",
    "Listener",
    "Opened",
    "StateConfig",
    "StateTopic",
    "StateTopics",
]

log = logging.getLogger("hybridbus.states")

PATCH_TYPE: Final = "hybridbus.state.patch"
SNAPSHOT_TYPE: Final = "hybridbus.state.snapshot"
_SOURCE: Final = "/hybridbus/state"
_PAGE: Final = 1000

# (absolute topic, version, the change or the whole document, whether it is the whole document)
Listener = Callable[[str, int, Any, bool], None]
Publish = Callable[[Event], Awaitable[Ack]]


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Settings of state topics (docs/configuration.md, `state_*`)."""

    window: int = 64  # accepted patches a late Lamport-ordered one may still go before
    max_bytes: int = 256 << 10  # bytes of one document, as JSON
    snapshot_every: int = 100  # versions between two snapshots
    keep: int = 1000  # recent changes kept for subscribers resuming from a version
    idle: float = 60.0  # seconds a document nobody listens to stays loaded
    timeout: float = 10.0  # seconds a patch waits for the fold to reach it


@dataclass(frozen=True, slots=True)
class Opened:
    """Where a state subscription starts: the whole document, or the changes after `since`."""

    version: int
    snapshot: bool
    document: Any
    patches: list[tuple[int, Any]]


class StateTopic:
    """One loaded state document and its followers (see the module docstring)."""

    def __init__(self, topic: str, doc: StateDoc, keep: int) -> None:
        self.topic = topic
        self.doc = doc
        self.recent: deque[tuple[int, Any]] = deque(maxlen=keep)
        self.listeners: set[Listener] = set()
        self.waiters: dict[str, asyncio.Future[Applied]] = {}
        self.follower: asyncio.Task[None] | None = None
        self.unload: asyncio.TimerHandle | None = None
        # The topic's resume token after the last delivery folded.
        self.position: Position | None = None

    def open(self, since: int | None) -> Opened:
        """A subscription's start: the changes after `since` if all are kept, else a snapshot."""
        doc = self.doc
        if since is not None and since <= doc.version:
            wanted = doc.version - since
            recent = self.recent
            if wanted == 0:
                return Opened(doc.version, False, None, [])
            if wanted <= len(recent) and recent[-wanted][0] == since + 1:
                changes = list(recent)[-wanted:]
                if all(change is not None for _, change in changes):
                    return Opened(doc.version, False, None, changes)
        return Opened(doc.version, True, doc.value, [])

    def fold(self, delivery: Delivery, position: Position) -> Applied | BusError | None:
        """Apply one delivery of the topic (None: not a patch); tell listeners and the waiter."""
        self.position = position
        event = delivery.event
        if event.type != PATCH_TYPE:
            return None
        data = event.data
        waiter = self.waiters.pop(event.id, None)
        outcome: Applied | BusError
        try:
            if not isinstance(data, dict):
                raise InvalidInput("a state patch event's data is an object")
            lamport = data.get("lamport")
            if_version = data.get("if_version")
            if not isinstance(lamport, int | None) or not isinstance(if_version, int | None):
                raise InvalidInput("a state patch's lamport and if_version are integers")
            outcome = self.doc.apply(
                data.get("patch"),
                if_version=if_version,
                lamport=lamport,
                origin=str(data.get("origin", "")),
            )
        except BusError as exc:
            outcome = exc
        if waiter is not None and not waiter.done():
            if isinstance(outcome, BusError):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        if isinstance(outcome, Applied):
            self.recent.append((outcome.version, outcome.change))
            whole = outcome.change is None
            sent = self.doc.value if whole else outcome.change
            for listener in tuple(self.listeners):
                listener(self.topic, outcome.version, sent, whole)
        return outcome


class StateTopics:
    """The state documents of one bus (see the module docstring)."""

    def __init__(self, bus: Bus, config: StateConfig | None = None) -> None:
        self.bus = bus
        self.config = config or StateConfig()
        self._topics: dict[str, StateTopic] = {}
        self._loading: dict[str, asyncio.Task[StateTopic]] = {}
        self._snapshots: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._topics)

    async def get(self, topic: str) -> StateTopic:
        """The loaded document of the absolute `topic` (loading it first if need be)."""
        found = self._topics.get(topic)
        if found is not None:
            return found
        loading = self._loading.get(topic)
        if loading is None:
            loading = self._loading[topic] = asyncio.ensure_future(self._load(topic))
            loading.add_done_callback(lambda _: self._loading.pop(topic, None))
        found = await asyncio.shield(loading)
        self._idle_check(found)
        return found

    def listen(self, state: StateTopic, listener: Listener) -> None:
        """Tell `listener` every later change of `state` (in version order)."""
        state.listeners.add(listener)
        if state.unload is not None:
            state.unload.cancel()
            state.unload = None

    def unlisten(self, state: StateTopic, listener: Listener) -> None:
        """Stop telling `listener`; a document nobody listens to unloads after `idle` s."""
        state.listeners.discard(listener)
        self._idle_check(state)

    async def patch(
        self,
        topic: str,
        patch: Any,
        publish: Publish,
        *,
        if_version: int | None = None,
        lamport: int | None = None,
        origin: str = "",
    ) -> Applied:
        """Append `patch` to the absolute `topic` with `publish` and wait for the fold's verdict.

        Raises StateConflict (1640) at once when `if_version` is already
        behind the document; else whatever the fold decides (StateConflict,
        PatchTooOld, StateTooLarge) or what `publish` raises.
        """
        state = await self.get(topic)
        doc = state.doc
        if if_version is not None and if_version < doc.version:
            doc.apply(patch, if_version=if_version)  # raises StateConflict, nothing applied
        data: dict[str, Any] = {"patch": patch, "origin": origin}
        if if_version is not None:
            data["if_version"] = if_version
        if lamport is not None:
            data["lamport"] = lamport
        id = secrets.token_hex(12)
        event = Event(
            id=id,
            source=_SOURCE,
            type=PATCH_TYPE,
            datacontenttype="application/json",
            data=data,
            lamport=lamport,
        )
        waiter: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        state.waiters[id] = waiter
        try:
            await publish(event)
            async with asyncio.timeout(self.config.timeout):
                applied = await waiter
        finally:
            state.waiters.pop(id, None)
        if applied.version % self.config.snapshot_every == 0:
            self._spawn_snapshot(state)
        return applied

    async def close(self) -> None:
        """Unload every document; wait for the snapshots being written."""
        self._closed = True
        for loading in list(self._loading.values()):
            loading.cancel()
        for state in list(self._topics.values()):
            await self._unload(state)
        if self._snapshots:
            await asyncio.wait(self._snapshots, timeout=self.config.timeout)

    # -- loading and following ------------------------------------------------------

    async def _load(self, topic: str) -> StateTopic:
        config = self.config
        bus = self.bus
        doc: StateDoc | None = None
        since: Position | str | None = None
        snapshot: Delivery | None = None
        after: Position | None = None
        while True:  # the latest snapshot (few: one per `snapshot_every` versions)
            page = await bus.history(_snapshot_topic(topic), since=after, limit=_PAGE)
            if page.deliveries:
                snapshot = page.deliveries[-1]
            after = page.position
            if not page.more:
                break
        if snapshot is not None:
            try:
                data = snapshot.event.data
                doc = StateDoc.restore(
                    data["snapshot"], window=config.window, max_bytes=config.max_bytes
                )
                since = str(data["position"])
            except (BusError, KeyError, TypeError) as exc:
                log.warning("the snapshot of %s cannot be read (%s); folding it all", topic, exc)
                doc, since = None, None
        state = StateTopic(
            topic,
            doc or StateDoc(window=config.window, max_bytes=config.max_bytes),
            config.keep,
        )
        while True:  # the patches after it, up to now
            history = await bus.history(topic, since=since, limit=_PAGE)
            for delivery in history.deliveries:
                state.fold(delivery, history.position)
            since = history.position
            if not history.more:
                break
        assert isinstance(since, Position)
        if self._closed:
            raise asyncio.CancelledError
        self._topics[topic] = state
        state.follower = asyncio.get_running_loop().create_task(
            self._follow(state, since), name=f"hybridbus-state {topic}"
        )
        return state

    async def _follow(self, state: StateTopic, since: Position) -> None:
        """Fold every later delivery of the topic; resubscribe from the position after an end."""
        while True:
            try:
                async with self.bus.subscribe(state.topic, since=since) as sub:
                    async for delivery in sub:
                        since = sub.position
                        state.fold(delivery, since)
                return
            except SubscriptionEnded as exc:
                if not exc.retriable:
                    raise
                log.warning("following state topic %s ended (%s); again", state.topic, exc)
            except BusError:
                log.exception("following state topic %s failed", state.topic)
                await asyncio.sleep(1.0)

    def _idle_check(self, state: StateTopic) -> None:
        if state.listeners or state.unload is not None or self._closed:
            return
        loop = asyncio.get_running_loop()

        def unload() -> None:
            state.unload = None
            if not state.listeners and not state.waiters:
                self._spawn(self._unload(state))
            else:
                self._idle_check(state)

        state.unload = loop.call_later(self.config.idle, unload)

    async def _unload(self, state: StateTopic) -> None:
        if self._topics.get(state.topic) is state:
            del self._topics[state.topic]
        if state.unload is not None:
            state.unload.cancel()
            state.unload = None
        await tasks.stop(state.follower)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._snapshots.add(task)
        task.add_done_callback(self._snapshots.discard)

    def _spawn_snapshot(self, state: StateTopic) -> None:
        task = asyncio.get_running_loop().create_task(self._snapshot(state))
        self._snapshots.add(task)
        task.add_done_callback(self._snapshots.discard)

    async def _snapshot(self, state: StateTopic) -> None:
        """Write the document's snapshot (with the position of the last patch folded in)."""
        position = state.position
        if position is None:
            return
        event = Event(
            id=secrets.token_hex(12),
            source=_SOURCE,
            type=SNAPSHOT_TYPE,
            datacontenttype="application/json",
            data={"snapshot": state.doc.snapshot(), "position": str(position)},
        )
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await self.bus.publish(_snapshot_topic(state.topic), event)
            except BusError as exc:
                log.warning("the snapshot of %s was not written: %s", state.topic, exc)


def _snapshot_topic(topic: str) -> str:
    return f"$state/{topic}"
