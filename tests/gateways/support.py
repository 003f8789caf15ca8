"""Helpers for the HTTP and SSE gateway tests (imported as `tests.gateways.support`).

`serving(bus)` mounts `HttpGateway(...).routes()` on a real aiohttp server on
a free loopback port (AppRunner + TCPSite, port 0). `SseReader` parses an
event stream line by line, as a browser's EventSource does, from any source
of lines (httpx, a curl subprocess, a raw socket). `GatedEngine` is the
memory engine with two controls for fault tests: reads that wait for a gate,
and appends that fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Page
from hybridbus.engine.memory import MemoryEngine
from hybridbus.errors import BusError
from hybridbus.gateways.http import HttpConfig, HttpGateway
from hybridbus.hub.bus import Bus
from hybridbus.proto.frames import ClientInfo
from hybridbus.server.metrics import Metrics

TIMEOUT = 10.0


@dataclass
class Api:
    """A running HTTP API over `bus`."""

    base: str
    bus: Bus
    metrics: Metrics
    gateway: HttpGateway

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def serving(
    bus: Bus,
    *,
    config: HttpConfig | None = None,
    presence: Callable[[str], Sequence[ClientInfo]] | None = None,
    handler_cancellation: bool = False,
) -> AsyncIterator[Api]:
    """The gateway's routes on 127.0.0.1:<free port>, as `hybridbus serve` mounts them."""
    metrics = Metrics()
    gateway = HttpGateway(bus, metrics, presence, config=config)
    app = web.Application()
    app.add_routes(gateway.routes())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=2.0,
        handler_cancellation=handler_cancellation,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Api(f"http://127.0.0.1:{port}", bus, metrics, gateway)
    finally:
        gateway.close()
        await runner.cleanup()


def event(id: str | None = None, source: str = "/test", **fields: Any) -> dict[str, Any]:
    """A CloudEvent in the JSON structured format."""
    return {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": "test.event",
        **fields,
    }


@dataclass
class SseEvent:
    """One dispatched SSE event (comments and `retry:` are kept on the reader)."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """An EventSource-style parser over `next_line()` (None at the end of the stream)."""

    next_line: Callable[[], Awaitable[str | None]]
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_id: str | None = None

    async def next(self) -> SseEvent | None:
        """The next event, or None when the stream ends."""
        name, data, id_ = "message", list[str](), None
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self.next_line()
                if line is None:
                    return None
                if line == "":
                    if data:
                        return SseEvent(name, "\n".join(data), id_)
                    name, data, id_ = "message", [], None
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
                elif key == "id":
                    id_ = self.last_id = value
                elif key == "retry":
                    self.retry = int(value)

    async def comment(self) -> str:
        """Read on to the next comment line (there must be no event before it)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self.next_line()
                assert line is not None and not line.startswith(("event", "data", "id")), line
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return self.comments[-1]

    async def events(self, count: int, name: str = "event") -> list[SseEvent]:
        """The next `count` events named `name` (fails on any other, or the end)."""
        found: list[SseEvent] = []
        for _ in range(count):
            got = await self.next()
            assert got is not None, f"the stream ended after {len(found)} of {count} events"
            assert got.event == name, got
            found.append(got)
        return found

    async def rest(self) -> list[SseEvent]:
        """Every event until the server ends the stream."""
        found: list[SseEvent] = []
        while (got := await self.next()) is not None:
            found.append(got)
        return found


class GatedEngine(MemoryEngine):
    """The memory engine, with reads that can be held and appends that can fail."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads = 0
        self.hold_after: int | None = None  # reads after this many wait for `gate`
        self.gate = asyncio.Event()
        self.failure: BusError | None = None

    async def read(self, pattern: str, after: Sequence[int] | None, limit: int) -> Page:
        self.reads += 1
        if self.hold_after is not None and self.reads > self.hold_after:
            await asyncio.wait_for(self.gate.wait(), TIMEOUT)
        return await super().read(pattern, after, limit)

    async def append(self, topic: str, event: Event, payload: bytes) -> Ack:
        if self.failure is not None:
            raise self.failure
        return await super().append(topic, event, payload)

    async def append_many(
        self, items: Sequence[tuple[str, Event, bytes]], *, dedupe: bool = True
    ) -> list[Ack]:
        if self.failure is not None:
            raise self.failure
        return await super().append_many(items, dedupe=dedupe)
