"""The sqlite engine when storage fails: a full disk, a read-only directory, a failed write.

Every condition here is real: SQLite's `max_page_count` makes the next page
allocation fail with SQLITE_FULL exactly as a full file system does; as root,
a 1 MiB tmpfs is a full file system, and a read-only bind mount a read-only
directory (root writes through permission bits); otherwise `chmod 0o555`.
A failed write transaction is logged once with its cause, and acks already
given are never lost.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.support import append, make_event, read_all

from hybridbus.core.codecs import encode_msgpack
from hybridbus.core.log import Ack
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineReadOnly, EngineUnavailable, ErrorCode

_SQLITE_FULL = 13
_ROOT = Path(__file__).resolve().parents[2]
_LOGGER = "hybridbus.engine.sqlite"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[SqliteEngine]:
    started = SqliteEngine(tmp_path)
    await started.start(lambda deliveries: None)
    try:
        yield started
    finally:
        await started.close()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == _LOGGER and r.levelname == "ERROR"]


async def cap_pages(engine: SqliteEngine, full: bool = True) -> None:
    """Cap the database at its current size (the disk is full), or lift the cap."""

    def cap(db: object) -> None:
        conn: sqlite3.Connection = db._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] if full else 1 << 30
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await engine._command(cap)


async def test_an_integrity_error_is_logged_once_with_its_cause(
    engine: SqliteEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a second writer on the directory did before the lock: it took the
    # next position behind this engine's back.
    await append(engine, "a")
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("INSERT INTO log VALUES (2, 'a', 9, 0, NULL, x'80', '/rogue', 'r')")
        conn.commit()
    caplog.set_level(logging.INFO, _LOGGER)
    with pytest.raises(EngineUnavailable, match=r"UNIQUE constraint failed: log\.position"):
        await append(engine, "a")
    [line] = errors_logged(caplog)
    assert "could not append 1 event:" in line
    assert "UNIQUE constraint failed: log.position" in line
    # The same cause again within ten seconds: counted, not logged again.
    with pytest.raises(EngineUnavailable):
        await append(engine, "a")
    assert len(errors_logged(caplog)) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
        conn.execute("DELETE FROM log WHERE source = '/rogue'")
        conn.commit()
    assert (await append(engine, "a")).position == 2
    assert any("writes again after 2 failed" in r.getMessage() for r in caplog.records)


async def test_a_full_disk_refuses_appends_and_recovers_without_losing_acks(
    engine: SqliteEngine, caplog: pytest.LogCaptureFixture
) -> None:
    acked = [await append(engine, "a") for _ in range(3)]
    await cap_pages(engine)
    caplog.set_level(logging.INFO, _LOGGER)
    with pytest.raises(EngineUnavailable) as refused:
        await fill(engine, acked, 4000)
    error = refused.value
    assert error.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "database or disk is full" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert error.__cause__.sqlite_errorcode == _SQLITE_FULL
    [line] = errors_logged(caplog)
    assert "database or disk is full" in line
    await cap_pages(engine, full=False)
    acked.append(await append(engine, "a"))
    assert [d.position for d in await read_all(engine, "a")] == [a.position for a in acked]
    assert any("writes again" in r.getMessage() for r in caplog.records)


async def fill(engine: SqliteEngine, acked: list[Ack], size: int) -> None:
    """Append events of `size` bytes (their acks to `acked`) until an append fails."""
    for n in range(10_000):
        event = make_event(id=f"big-{n}", data="x" * size)
        acked.append(await engine.append("a", event, encode_msgpack(event)))


@contextlib.contextmanager
def mounted(what: list[str], target: Path) -> Iterator[None]:
    """`mount <what> <target>` for the block (root only; skips if the mount is refused)."""
    if os.geteuid() != 0:
        pytest.skip("only root can mount a real file system for the test")
    done = subprocess.run(["mount", *what, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount refused: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.slow
async def test_a_real_full_file_system(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], disk):
        (disk / "ballast").write_bytes(b"\0" * 256 * 1024)  # room to free later
        engine = SqliteEngine(disk / "data")
        await engine.start(lambda deliveries: None)
        acked: list[Ack] = []
        try:
            with pytest.raises(EngineUnavailable, match="database or disk is full"):
                await fill(engine, acked, 8000)
            assert len(acked) > 10
        finally:
            await engine.close()
        (disk / "ballast").unlink()
        # Reopened with room again: every ack is there, and appends go on.
        engine = SqliteEngine(disk / "data")
        await engine.start(lambda deliveries: None)
        try:
            acked.append(await append(engine, "a"))
            stored = await read_all(engine, "a")
            assert [d.position for d in stored] == [a.position for a in acked]
        finally:
            await engine.close()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` read-only for this process for the block."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    # Root writes through permission bits, not through a read-only mount.
    with mounted(["--bind", str(directory)], directory):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield


async def test_a_read_only_data_directory_is_named_as_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = SqliteEngine(data)
    await first.start(lambda deliveries: None)
    await append(first, "a")
    await first.close()
    with read_only(data):
        for opened in (data, data / "new"):
            with pytest.raises(EngineReadOnly) as refused:
                await SqliteEngine(opened).start(lambda deliveries: None)
            error = refused.value
            assert error.code == ErrorCode.ENGINE_READ_ONLY == 1304
            assert isinstance(error, EngineUnavailable)
            assert error.path == data
            assert str(error).startswith(f"{data} is read-only (not writable by this process)")
            # The engine copies an error for each future it fails, and a pickle crosses processes.
            for again in (copy.copy(error), pickle.loads(pickle.dumps(error))):
                assert (type(again), again.path, str(again)) == (EngineReadOnly, data, str(error))
    engine = SqliteEngine(data)  # writable again: nothing was lost
    await engine.start(lambda deliveries: None)
    assert len(await read_all(engine, "a")) == 1
    await engine.close()


_OPEN = r"""
import asyncio, sys
from hybridbus.engine.sqlite import SqliteEngine
from hybridbus.errors import EngineReadOnly

try:
    asyncio.run(SqliteEngine(sys.argv[1]).start(lambda deliveries: None))
except EngineReadOnly as exc:
    print(exc.path, exc)
"""


@pytest.mark.slow
def test_a_directory_without_write_permission_is_named_as_read_only(tmp_path: Path) -> None:
    # What `chmod 0o555` on the server's directory does to a process that is
    # not root, or is root without capabilities (checked in-process when not
    # root). The lock file opens; SQLite cannot create the database in the
    # directory: "unable to open database file".
    if os.geteuid() != 0:
        pytest.skip("covered in-process by the read-only test when not root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    data = tmp_path / "data"
    data.mkdir()
    (data / "hybridbus.lock").touch()
    data.chmod(0o555)
    done = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", _OPEN,
         str(data)],
        capture_output=True, text=True, timeout=60, cwd=_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{data} {data} is read-only"), done.stdout
    assert "unable to open database file" in done.stdout  # SQLite's words, after ours
