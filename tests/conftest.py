"""Shared fixtures: an injectable clock and a factory for every engine kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.support import FakeClock, MakeEngine, Opened

from hybridbus.app import open_engine
from hybridbus.core.log import Delivery
from hybridbus.engine.base import Engine, EngineConfig

# Real servers (redis_server, kafka, ...) for every test dir: tests/services/.
pytest_plugins = ["tests.services"]

if TYPE_CHECKING:  # imported lazily: pytest_plugins must load tests.services first
    from tests.services import RedisCluster, RedisServer

ENGINE_KINDS = ["memory", "sqlite", "redis", "redis+cluster"]
# The Redis kinds run the engine conformance suite (tests/engine/test_conformance*.py);
# other tests taking `engine_kind` build memory or sqlite URLs themselves.
_EMBEDDED = ["memory", "sqlite"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_kind" in metafunc.fixturenames:
        conformance = metafunc.module.__name__.rpartition(".")[2].startswith("test_conformance")
        kinds = ENGINE_KINDS if conformance else _EMBEDDED
        metafunc.parametrize("engine_kind", kinds, indirect=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the session; each test's engines use their own key prefix."""
    from tests.services import RedisServer

    yield from _shared_service(RedisServer)


@pytest.fixture(scope="session")
def shared_redis_cluster() -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster for the session, shared the same way."""
    from tests.services import RedisCluster

    yield from _shared_service(RedisCluster)


def _shared_service(cls: Any) -> Iterator[Any]:
    from tests.services import require

    require(*cls.binaries)
    service = cls()
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture
def engine_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine kind (an engine URL scheme) a test runs on.

    For the Redis kinds, `open_engine(kind, path)` opens `redis:///<path>`: the
    server named by $HYBRIDBUS_REDIS_URL, set here, with `path` as the key prefix,
    so the same path reopens the same data and every test has its own.
    """
    kind = str(request.param)
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        monkeypatch.setenv("HYBRIDBUS_REDIS_URL", server.url)
    elif kind == "redis+cluster":
        cluster: RedisCluster = request.getfixturevalue("shared_redis_cluster")
        monkeypatch.setenv(
            "HYBRIDBUS_REDIS_URL", cluster.url.replace("redis://", "redis+cluster://")
        )
    return kind


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
