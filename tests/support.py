"""Test helpers shared across the suite (imported as `tests.support`)."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.event import Event
from hybridbus.core.log import Ack, Delivery
from hybridbus.engine.base import Engine


class FakeClock:
    """A clock tests move by hand (Unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Opened:
    """A started engine and what its listener has seen."""

    def __init__(self, engine: Engine, seen: list[Delivery]) -> None:
        self.engine = engine
        self.seen = seen


MakeEngine = Callable[..., Awaitable[Opened]]


_ids = itertools.count(1)


def make_event(source: str = "/test", id: str | None = None, **fields: object) -> Event:
    """A valid event with a fresh id unless one is given."""
    return Event(id=id or f"e{next(_ids)}", source=source, type="test.event", **fields)  # type: ignore[arg-type]


async def append(engine: Engine, topic: str, event: Event | None = None) -> Ack:
    """Append `event` (or a fresh one) the way the bus does."""
    event = event or make_event()
    return await engine.append(topic, event, encode_msgpack(event))


async def read_all(
    engine: Engine, pattern: str, after: tuple[int, ...] | None = None, limit: int = 7
) -> list[Delivery]:
    """Every delivery past `after`, paging with a small limit to exercise continuation."""
    found: list[Delivery] = []
    while True:
        page = await engine.read(pattern, after, limit)
        assert len(page.deliveries) <= limit
        found.extend(page.deliveries)
        if not page.more:
            return found
        assert page.positions == (page.deliveries[-1].position,)
        after = page.positions


async def lines_acked_before_kill_9(script: str, path: object, count: int) -> list[str]:
    """Run `script` (argv[1] = `path`) until it printed `count` lines, then SIGKILL it.

    Every whole line it printed is returned: the lines already in the pipe were
    acknowledged before the kill too; a torn last line was not fully printed.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < count:
            raw = await asyncio.wait_for(child.stdout.readline(), 10)
            assert raw, f"the child exited early with {await child.wait()}"
            lines.append(raw.decode())
    finally:
        child.kill()  # SIGKILL: no cleanup, no close, maybe mid-commit
        await child.wait()
    rest = (await child.stdout.read()).decode().splitlines(keepends=True)
    return lines + [line for line in rest if line.endswith("\n")]
