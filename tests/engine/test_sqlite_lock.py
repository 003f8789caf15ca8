"""One process per data directory: the sqlite engine's lock, across real processes.

A second opener of a directory in use fails at once with `EngineLocked`
naming the holder's pid and the directory; the lock goes with the holder
(close, or kill -9); `hybridbus serve` twice on one directory exits 1 with
that message; the demo keeps out of the server's directory.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tests.servers import ServerProcess
from tests.support import append

import hybridbus
import hybridbus.demo
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineCorrupt, EngineLocked, EngineUnavailable, ErrorCode

_ROOT = Path(__file__).resolve().parents[2]

# Opens the directory argv[1], says so with its pid, and holds it until stdin closes.
_HOLDER = r"""
import asyncio, os, sys
import hybridbus

async def main(path):
    async with hybridbus.open(f"sqlite://{path}") as bus:
        await bus.publish("acme/held", {"id": "1", "source": "/holder", "type": "t"})
        print("open", os.getpid(), flush=True)
        await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main(sys.argv[1]))
"""


@asynccontextmanager
async def holder(path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process with `path` open; stopped (SIGKILL if still running) at the end."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=_ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line.split() == [b"open", str(child.pid).encode()], line
        yield child
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


@pytest.mark.slow
async def test_a_second_process_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with holder(data) as child:
        started = time.monotonic()
        with pytest.raises(EngineLocked) as info:
            async with hybridbus.open(f"sqlite://{data}"):
                pass
        # At once: not after the 5 s busy timeout of a locked database.
        assert time.monotonic() - started < 2.0
        error = info.value
        assert isinstance(error, EngineUnavailable)
        assert error.code == ErrorCode.ENGINE_LOCKED == 1303
        assert (error.pid, error.path) == (child.pid, data)
        assert f"process {child.pid}" in str(error)
        assert str(data) in str(error)
        again = pickle.loads(pickle.dumps(error))
        assert (again.pid, again.path, str(again)) == (error.pid, error.path, str(error))
        # The holder is unharmed: it still publishes.
        assert child.returncode is None


@pytest.mark.slow
async def test_a_second_process_is_refused_by_its_own_hybridbus_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with holder(data) as child:
        second = subprocess.run(
            [sys.executable, "-c", _HOLDER, str(data)],
            capture_output=True, text=True, timeout=30, cwd=_ROOT,
        )  # fmt: skip
        assert second.returncode != 0
        assert "EngineLocked" in second.stderr
        assert f"process {child.pid}" in second.stderr
        assert str(data) in second.stderr


@pytest.mark.slow
async def test_kill_9_of_the_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with holder(data) as child:
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
    # The dead holder's pid may still be in the lock file; the OS released the lock.
    assert (data / "hybridbus.lock").read_text().split() == [str(child.pid)]
    async with hybridbus.open(f"sqlite://{data}") as bus:
        history = await bus.history("acme/held")
        assert [d.event.id for d in history.deliveries] == ["1"]


async def test_one_process_cannot_open_a_directory_twice_and_close_releases_it(
    tmp_path: Path,
) -> None:
    first = SqliteEngine(tmp_path)
    await first.start(lambda deliveries: None)
    try:
        assert (tmp_path / "hybridbus.lock").read_text().split() == [str(os.getpid())]
        second = SqliteEngine(tmp_path)
        with pytest.raises(EngineLocked, match=f"process {os.getpid()}"):
            await second.start(lambda deliveries: None)
        assert (await append(first, "a")).offset == 1  # the first is unharmed
    finally:
        await first.close()
    third = SqliteEngine(tmp_path)
    await third.start(lambda deliveries: None)
    try:
        assert (await append(third, "a")).offset == 2
    finally:
        await third.close()


async def test_a_failed_start_releases_the_lock(tmp_path: Path) -> None:
    (tmp_path / "hybridbus.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(EngineCorrupt):
        await SqliteEngine(tmp_path).start(lambda deliveries: None)
    (tmp_path / "hybridbus.db").unlink()
    engine = SqliteEngine(tmp_path)
    await engine.start(lambda deliveries: None)
    await engine.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_serve_twice_on_one_directory_exits_1_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess("--engine", f"sqlite://{data}", logs=tmp_path / "first.log")
    second: ServerProcess | None = None
    try:
        await first.wait_listening()
        second = ServerProcess("--engine", f"sqlite://{data}", logs=tmp_path / "second.log")
        assert await second.wait() == 1
        [failure] = [r for r in second.logs() if r["message"].startswith("cannot serve")]
        assert f"process {first.process.pid}" in failure["message"]
        assert str(data) in failure["message"]
        assert failure["error"] == "EngineLocked"
        assert not any(r["message"] == "listening" for r in second.logs())
    finally:
        if second is not None:
            await second.kill()
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0


@pytest.mark.slow
async def test_the_demo_runs_beside_a_server_on_the_default_directory(tmp_path: Path) -> None:
    # `make serve` holds ./hybridbus-data; the demo, run from the same place, does not touch it.
    async with holder(tmp_path / "hybridbus-data"):
        for _ in range(2):
            demo = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hybridbus.demo"],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "hybridbus-demo-data" / "demo.token").exists()
    assert not (tmp_path / "hybridbus-data" / "demo.token").exists()
    assert "delivered acme/docs/43 #2" in demo.stdout  # the second run resumed


def test_the_demo_says_make_serve_is_the_server() -> None:
    doc = hybridbus.demo.__doc__ or ""
    assert "later release" not in doc
    assert "make serve" in doc
    assert "hybridbus-demo-data" in doc
