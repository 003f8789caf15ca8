"""Shared fixtures: an injectable clock and a factory for every engine kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from tests.support import FakeClock, MakeEngine, Opened

from hybridbus.app import open_engine
from hybridbus.core.log import Delivery
from hybridbus.engine.base import Engine, EngineConfig

# Real servers (redis_server, kafka, ...) for every test dir: tests/services/.
pytest_plugins = ["tests.services"]

ENGINE_KINDS = ["memory", "sqlite"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=ENGINE_KINDS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def durable(engine_kind: str) -> bool:
    """Whether the engine keeps history across a restart."""
    return engine_kind != "memory"


@pytest.fixture
async def make_engine(
    engine_kind: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[MakeEngine]:
    """`await make_engine(config=..., name=...)` opens an engine; all are closed afterwards.

    The same `name` reopens the same data (for durable engines).
    """
    opened: list[Engine] = []

    async def make(config: EngineConfig | None = None, name: str = "data") -> Opened:
        engine = open_engine(engine_kind, str(tmp_path / name), config or EngineConfig(), clock)
        seen: list[Delivery] = []

        def listener(deliveries: Sequence[Delivery]) -> None:
            seen.extend(deliveries)

        await engine.start(listener)
        opened.append(engine)
        return Opened(engine, seen)

    yield make
    for engine in opened:
        with contextlib.suppress(Exception):
            await engine.close()
