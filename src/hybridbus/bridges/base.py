"""The bridge framework: the `Bridge` interface, its state and counters, and the two directions.

Owns: `Bridge` (one running bridge: `start`, `stop`, `info`; a task that
runs the kind's session and starts it over with backoff when it fails),
`BridgeInfo` (what `/v1/bridges` and `/metrics` show), `OutBridge` (the bus
side of "out": a member of the consumer group `bridge.<name>` that hands each
delivery to the kind's `send` and acks it once `send` returned — the other
system confirmed it — or nacks it with the error, so the group's backoff and
dead letters apply) and `InBridge` (the bus side of "in": `append` takes the
events of a batch of messages and appends them in one durable write, the
rejected ones wrapped to the `rejected` topic, before the kind acknowledges
the batch to the other system). Must not know a broker's client library:
the kind modules (`bridges.mqtt`, `bridges.postgres`, ...) do.

Theory of operation. A kind implements `session()`: connect, work until the
connection fails (raise) or the bridge stops (cancelled). `Bridge` runs it in
a loop: state `starting` -> `running` (the kind calls `running()` once
connected) -> on an exception `reconnecting` (the error is kept as
`last_error`, the session starts again after a backoff delay of 0.1 s
doubling up to 10 s, reset by a session that ran 10 s) -> `stopped`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

import msgspec

from hybridbus.bridges.settings import BridgeSettings, group_name
from hybridbus.core.backoff import Backoff
from hybridbus.core.bindings import from_binary, from_structured, is_structured, looks_structured
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Position
from hybridbus.core.topics import tenant_of
from hybridbus.errors import (
    BusClosed,
    BusError,
    DeliveryGone,
    EngineError,
    InvalidEvent,
    InvalidInput,
    NotCoordinator,
)
from hybridbus.hub.group import Group
from hybridbus.hub.member import GroupDelivery, Member

if TYPE_CHECKING:
    from hybridbus.hub.bus import Bus

__all__ = [
    "MEMBER",
    "REJECTED_TYPE",
    "Bridge",
    "BridgeInfo",
    "InBridge",
    "Incoming",
    "OutBridge",
    "Permanent",
    "State",
    "bus_values",
    "incoming",
]

log = logging.getLogger("hybridbus.bridges")

State = Literal["starting", "running", "reconnecting", "stopped"]
MEMBER: Final = "bridge"  # the member's name in an "out" bridge's group
REJECTED_TYPE: Final = "hybridbus.bridge.rejected"
_BACKOFF: Final = Backoff(base=0.1, factor=2.0, cap=10.0)
_STABLE: Final = 10.0  # seconds a session must run for the backoff to start over

S = TypeVar("S", bound=BridgeSettings)


class Permanent(Exception):
    """A failure that trying again cannot fix: the event goes to the dead letters at once."""


class BridgeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of a running bridge (docs/bridges.md, "Watching").

    `received`: messages or events taken from the source side; `delivered`:
    written to the target side and confirmed (an "in" bridge: appended to the
    bus, duplicates included; "out": acknowledged by the other system);
    `duplicates`: appends the bus dropped by its dedupe window; `rejected`:
    messages an "in" bridge could not turn into events; `errors`: failed
    attempts and lost connections. `lag`: events of the pattern not yet
    confirmed ("out": the group's pending plus what it has not taken yet,
    counted in log positions as the group's lag is; "in": messages received
    and not yet appended). `position`: where an "out" bridge is in the log.
    """

    name: str
    kind: str
    direction: str
    state: State
    lag: int
    received: int
    delivered: int
    duplicates: int
    rejected: int
    errors: int
    last_error: str
    last_error_time: float | None
    connected_since: float | None
    group: str | None
    position: str | None
    settings: dict[str, Any]


class Bridge(abc.ABC, Generic[S]):
    """One bridge: a kind's `session` run again and again until `stop` (module docstring)."""

    def __init__(self, settings: S, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.state: State = "stopped"
        self.received = 0
        self.delivered = 0
        self.duplicates = 0
        self.rejected = 0
        self.errors = 0
        self.last_error = ""
        self.last_error_time: float | None = None
        self.connected_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.head: tuple[int, ...] = ()  # the log's head, refreshed by the registry (lag)

    @property
    def name(self) -> str:
        return self.settings.name

    # -- what a kind implements --------------------------------------------------------

    @abc.abstractmethod
    async def session(self) -> None:
        """Connect, call `running()`, work until the connection fails (raise) or cancelled."""

    def lag(self) -> int:
        """What is not yet confirmed on the target side (see `BridgeInfo`)."""
        return 0

    def partition_lags(self) -> dict[str, int]:
        """The lag per partition of the source (`<topic>-<partition>`: messages), if it has any."""
        return {}

    @property
    def reads_log(self) -> bool:
        """True if it reads the bus's log (its lag needs `head`)."""
        return False

    def position(self) -> str | None:
        """Where the bridge is in the bus's log, if it reads the log."""
        return None

    def group_id(self) -> str | None:
        """The id of the consumer group it runs as, if any."""
        return None

    async def prepare(self) -> None:
        """Before the first session (e.g. make the consumer group); errors stop `start`."""

    async def cleanup(self) -> None:
        """After the last session."""

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare, then run the sessions in a task of its own; returns at once after."""
        self.state = "starting"
        await self.prepare()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bridge {self.name}")

    async def stop(self) -> None:
        """Cancel the session and wait for it; what was not confirmed comes again later."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.cleanup()
        finally:
            self.state = "stopped"
            self.connected_since = None

    def running(self) -> None:
        """The kind is connected and working."""
        self.state = "running"
        self.connected_since = time.time()
        log.info("bridge %s running", self.name)

    def failed(self, error: BaseException | str) -> None:
        """Count a failure and keep it as `last_error`."""
        self.errors += 1
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error = text[:1000]
        self.last_error_time = time.time()

    async def _run(self) -> None:
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                await self.session()
            except asyncio.CancelledError:
                raise
            except BusClosed:
                log.info("bridge %s: the bus is closed", self.name)
                return
            except Exception as exc:  # noqa: BLE001 - a task boundary: the session starts over
                self.failed(exc)
                if time.monotonic() - began > _STABLE:
                    attempt = 0
                delay = _BACKOFF.delay(attempt, self._rng)
                attempt += 1
                log.warning(
                    "bridge %s: %s; reconnecting in %.1f s", self.name, self.last_error, delay
                )
            else:
                self.failed("the session ended")
                delay = _BACKOFF.delay(attempt, self._rng)
                attempt += 1
            self.state = "reconnecting"
            self.connected_since = None
            await asyncio.sleep(delay)

    def info(self) -> BridgeInfo:
        """What `/v1/bridges` shows of it."""
        settings = self.settings
        return BridgeInfo(
            name=settings.name,
            kind=settings.kind,
            direction=settings.direction,
            state=self.state,
            lag=self.lag(),
            received=self.received,
            delivered=self.delivered,
            duplicates=self.duplicates,
            rejected=self.rejected,
            errors=self.errors,
            last_error=self.last_error,
            last_error_time=self.last_error_time,
            connected_since=self.connected_since,
            group=self.group_id(),
            position=self.position(),
            settings=settings.shown(),
        )


# -- out: a consumer group member --------------------------------------------------------


class OutBridge(Bridge[S]):
    """The bus side of an "out" bridge: the group `bridge.<name>`; `send` per delivery.

    A kind implements `connect()` (an async context manager giving a
    connection), `send(connection, delivery)` (returns once the other system
    confirmed it; raises `Permanent` for an event it can never take, any
    other exception for a failure worth retrying) and `lost(connection)`
    (True once the connection broke: the session ends).
    """

    def __init__(self, settings: S, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.group: Group | None = None
        self._inflight: dict[asyncio.Task[None], GroupDelivery] = {}
        # The name and attributes of its spans, `kafka out` say (docs/tracing.md).
        self._span = f"{settings.kind} out"
        self._traced = {"hybridbus.bridge": self.name, "hybridbus.bridge.kind": settings.kind}

    @property
    def reads_log(self) -> bool:
        return True

    async def prepare(self) -> None:
        with contextlib.suppress(NotCoordinator):  # another node runs it: `session` claims again
            await self._claim()

    async def _claim(self) -> Group:
        """The group, claimed on this node (docs/groups.md "Many nodes"; else `NotCoordinator`)."""
        if self.group is None or self.group.lost is not None:
            self.group = await self.bus.groups.ensure(
                group_name(self.name), self.settings.group_settings()
            )
        return self.group

    def group_id(self) -> str | None:
        assert self.settings.pattern is not None
        return f"{tenant_of(self.settings.pattern)}/{group_name(self.name)}"

    def position(self) -> str | None:
        group = self.group
        if group is None:
            return None
        return str(Position(group.epoch, tuple(group.core.cursor)))

    def lag(self) -> int:
        group = self.group
        if group is None:
            return 0
        core = group.core
        behind = 0
        if self.head and group.epoch == self.bus.engine.epoch:
            behind = sum(max(0, h - c) for h, c in zip(self.head, core.cursor, strict=False))
        return behind + len(core.entries)

    @abc.abstractmethod
    def connect(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """An async context manager: the connection to the other system."""

    @abc.abstractmethod
    async def send(self, connection: Any, delivery: GroupDelivery) -> None:
        """Write one event; return once the other system confirmed it."""

    @abc.abstractmethod
    def lost(self, connection: Any) -> bool:
        """True once `connection` is broken."""

    async def session(self) -> None:
        group = await self._claim()
        async with self.connect() as connection:
            self.running()
            member = group.join(MEMBER)
            try:
                await self._pump(connection, member)
            finally:
                member.close()  # fetched and never sent: back at once, not counted
                inflight = dict(self._inflight)
                self._inflight.clear()
                for task in inflight:
                    task.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)
                for task, delivery in inflight.items():
                    if task.cancelled():  # sent, never confirmed: again after the backoff
                        with contextlib.suppress(BusError):
                            await delivery.nack(error="the connection was lost")

    async def _pump(self, connection: Any, member: Member) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.concurrency
        while True:
            if self.lost(connection):
                raise ConnectionError("the connection was lost")
            room = limit - len(self._inflight)
            if room <= 0:
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = await member.fetch(room, wait=0.5)
            for delivery in batch:
                self.received += 1
                task = loop.create_task(self._one(connection, delivery))
                self._inflight[task] = delivery
                task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._inflight.pop(task, None)

    async def _one(self, connection: Any, delivery: GroupDelivery) -> None:
        try:
            try:
                tracer = self.bus.tracer
                traced = None
                if tracer is not None:  # a `kafka out` span, say (docs/tracing.md)
                    traced = tracer.sending(delivery.event, self._span, self._traced)
                if traced is None:
                    await self.send(connection, delivery)
                else:
                    with traced:
                        await self.send(connection, delivery)
            except Permanent as exc:
                self.failed(exc)
                await delivery.term(f"{self.settings.kind} bridge {self.name}: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - a task boundary: the group retries it
                self.failed(exc)
                await delivery.nack(error=f"{type(exc).__name__}: {exc}"[:500])
                return
            await delivery.ack()
            self.delivered += 1
        except (DeliveryGone, BusClosed):
            pass  # handed on since (a lease that ran out) or shutting down
        except EngineError as exc:
            self.failed(exc)
            log.warning("bridge %s: could not settle a delivery (%s)", self.name, exc)


# -- in: batched durable appends ---------------------------------------------------------


class Incoming(msgspec.Struct, frozen=True):
    """One message of the other system, mapped: the bus topic and event, or why not."""

    topic: str
    event: Event | None
    error: str = ""
    source_topic: str = ""
    payload: bytes = b""


def incoming(
    topic: str,
    source_topic: str,
    payload: bytes,
    content_type: str | None,
    attributes: Mapping[str, str] | None,
    wrap: Callable[[], Event] | None,
) -> Incoming:
    """One message mapped to `topic`: a structured event, a binary one (its CloudEvents
    `attributes`, prefixes taken off), else `wrap()` (the bridge's wrap rule), or why not."""
    try:
        event: Event
        if is_structured(content_type):
            event = from_structured(payload)
        elif attributes and "specversion" in attributes:
            event = from_binary(attributes, content_type, payload)
        elif looks_structured(payload):
            event = from_structured(payload)
        elif wrap is not None:
            event = wrap()
        else:
            return Incoming(topic, None, "not a CloudEvent and no wrap rule", source_topic, payload)
    except InvalidEvent as exc:
        return Incoming(topic, None, f"InvalidEvent: {exc}", source_topic, payload)
    return Incoming(topic, event, "", source_topic, payload)


def bus_values(delivery: GroupDelivery) -> dict[str, str]:
    """What an out bridge's broker topic (or routing key) template is filled in with."""
    event = delivery.event
    tenant, _, relative = delivery.topic.partition("/")
    return {
        "topic": delivery.topic,
        "relative": relative,
        "dotted": relative.replace("/", "."),
        "tenant": tenant,
        "type": event.type,
        "subject": event.subject or "",
        "source": event.source,
    }


class InBridge(Bridge[S]):
    """The bus side of an "in" bridge: `append` a batch durably, then the kind acknowledges it."""

    def __init__(self, settings: S, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.pending = 0  # messages received and not yet appended

    def lag(self) -> int:
        return self.pending

    def _rejected_event(self, item: Incoming) -> Event:
        import hashlib

        digest = hashlib.sha256(item.source_topic.encode() + b"\x00" + item.payload).hexdigest()
        return Event(
            id=f"rejected-{digest[:32]}",
            source=f"/bridges/{self.name}",
            type=REJECTED_TYPE,
            subject=item.source_topic or None,
            datacontenttype="application/json",
            data={
                "bridge": self.name,
                "topic": item.source_topic,
                "error": item.error,
                "payload": item.payload.decode(errors="replace")[:65536],
            },
        )

    async def append(self, items: Sequence[Incoming]) -> list[Ack | None]:
        """Append the events of `items` in one durable write; one ack per item (None: rejected).

        An item without an event, or whose event the bus refuses (topic,
        schema, size), is rejected: wrapped to `rejected` if set, else logged
        and counted. Raises what the engine raises (`EngineUnavailable`):
        then nothing was appended and nothing may be acknowledged.
        """
        self.received += len(items)
        prepared = []
        where: list[int] = []
        rejected_topic = self.settings.rejected
        for index, item in enumerate(items):
            error = item.error
            if item.event is not None:
                try:
                    prepared.append(self.bus.prepare(item.topic, item.event))
                    where.append(index)
                    continue
                except InvalidInput as exc:
                    error = f"{type(exc).__name__}: {exc}"
            self.rejected += 1
            self.failed(f"rejected a message on {item.source_topic!r:.200}: {error}")
            if rejected_topic is not None:
                rejected = self._rejected_event(
                    Incoming(item.topic, None, error, item.source_topic, item.payload)
                )
                try:
                    prepared.append(self.bus.prepare(rejected_topic, rejected))
                    where.append(-1)
                except BusError as exc:
                    log.warning("bridge %s: cannot publish a rejection: %s", self.name, exc)
        acks = await self.bus.append(prepared)
        out: list[Ack | None] = [None] * len(items)
        for index, ack in zip(where, acks, strict=True):
            if index >= 0:
                out[index] = ack
                if ack.duplicate:
                    self.duplicates += 1
        self.delivered += sum(1 for ack in out if ack is not None)
        return out
