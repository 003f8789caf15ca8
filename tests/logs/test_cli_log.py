"""`hybridbus log` as a real process against a real server, on real pipes and files.

Lines go in through stdin (`printf ... | hybridbus log`) or a tailed file
(renamed, truncated in place, followed again after a restart with
`--state`), and are read back from the server's history: every line once,
in order, with its level parsed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.servers import running_server

import hybridbus.client
from hybridbus.changes.registry import read_all
from hybridbus.serve import GRPC_PORT_KEY

pytestmark = pytest.mark.slow
HYBRIDBUS = str(Path(sys.executable).parent / "hybridbus")
TIMEOUT = 30.0


class Run:
    """`hybridbus log ...` running, its stdout and stderr read as it goes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = b""
        self.stderr = b""

    async def finish(self, stdin: bytes | None = None, timeout: float = TIMEOUT) -> int:
        out, err = await asyncio.wait_for(self.process.communicate(stdin), timeout)
        self.stdout += out
        self.stderr += err
        assert self.process.returncode is not None
        return self.process.returncode

    async def stop(self, number: int = signal.SIGINT) -> int:
        if self.process.returncode is None:
            self.process.send_signal(number)
        try:
            return await self.finish()
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def start(*args: str, stdin: bool = True) -> Run:
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS,
        "log",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Run(process)


async def records(url: str, topic: str) -> list[dict[str, Any]]:
    """The data of every `log` event retained on `topic`, oldest first."""
    async with hybridbus.client.connect(url) as c:
        items = await read_all(c, topic, page=1000)
    assert all(item.event.type == "log" for item in items)
    return [item.event.data for item in items]


async def until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def messages(found: list[dict[str, Any]]) -> list[str]:
    return [r["message"] for r in found]


async def test_stdin_lines_arrive_in_order_with_their_levels() -> None:
    lines = (
        b"starting up\n"
        b"ERROR: database unreachable\n"
        b"[warn] slow query\n"
        b"\n"  # a blank line is not a record
        b'{"level":"debug","msg":"cache miss","logger":"api.cache","key":"k1"}\n'
        b'{"severity":"CRITICAL","message":"out of memory","trace_id":"abc"}\n'
        b"last line without a newline"
    )
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "i1", "--url", server.url,
                          "--level-default", "notice")
        assert await run.finish(lines) == 0, run.stderr
        assert run.stdout == b""  # no --echo: nothing on stdout
        found = await records(server.url, "logs/api/i1")
    assert [(r["message"], r.get("level", "info")) for r in found] == [
        ("starting up", "info"),  # --level-default notice is info
        ("database unreachable", "error"),
        ("slow query", "warn"),
        ("cache miss", "debug"),
        ("out of memory", "fatal"),
        ("last line without a newline", "info"),
    ]
    assert found[3]["logger"] == "api.cache"
    assert found[3]["fields"] == {"key": "k1"}
    assert found[4]["trace_id"] == "abc"
    assert all(r["time"].endswith("Z") for r in found)


async def test_level_default_applies_only_to_lines_that_name_none() -> None:
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "i2", "--url", server.url,
                          "--level-default", "debug")
        lines = b'plain\nINFO: said info\n{"msg":"json"}\n{"msg":"j","level":"info"}\n'
        assert await run.finish(lines) == 0, run.stderr
        found = await records(server.url, "logs/api/i2")
    assert [(r["message"], r.get("level", "info")) for r in found] == [
        ("plain", "debug"),
        ("said info", "info"),
        ("json", "debug"),
        ("j", "info"),
    ]


async def test_echo_passes_lines_through_unchanged() -> None:
    lines = b"one\n\ntwo \xff\r\nthree"
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "i3", "--url", server.url, "--echo")
        assert await run.finish(lines) == 0, run.stderr
        found = await records(server.url, "logs/api/i3")
    assert run.stdout == lines
    assert messages(found) == ["one", "two \ufffd", "three"]


async def test_a_burst_larger_than_the_queue_is_shipped_whole() -> None:
    # 25,000 lines at once: more than the Shipper's queue (10,000). Reading waits for
    # acknowledgements instead of dropping the oldest.
    count = 25_000
    lines = b"".join(b"line %d\n" % i for i in range(count))
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "burst", "--url", server.url)
        assert await run.finish(lines, timeout=120) == 0, run.stderr
        found = await records(server.url, "logs/api/burst")
    assert messages(found) == [f"line {i}" for i in range(count)]


async def test_the_instance_defaults_to_the_host_name() -> None:
    host = socket.gethostname()
    async with running_server() as server:
        run = await start("--source", "api", "--url", server.url)
        assert await run.finish(b"hello\n") == 0, run.stderr
        assert messages(await records(server.url, f"logs/api/{host}")) == ["hello"]


@pytest.mark.parametrize("way", ["http", "grpc"])
async def test_the_http_and_grpc_ways_in(way: str) -> None:
    async with running_server(grpc_port=0) as server:
        if way == "http":
            url = f"{server.http}?tenant=acme"
        else:
            url = f"grpc://127.0.0.1:{server.app[GRPC_PORT_KEY]}"
        run = await start("--source", "api", "--instance", way, "--url", url, "--tenant", "acme")
        assert await run.finish(b"one\nWARN: two\n") == 0, run.stderr
        found = await records(server.url, f"logs/api/{way}")
    assert [(r["message"], r.get("level", "info")) for r in found] == [
        ("one", "info"),
        ("two", "warn"),
    ]


async def test_nothing_listening_exits_3_and_says_so() -> None:
    run = await start("--source", "api", "--url", "ws://127.0.0.1:9/v1/ws", "--timeout", "1")
    assert await run.finish(b"lost\n") == 3
    err = run.stderr.decode()
    assert "of 1 lines, 1 not acknowledged within 1 s" in err
    assert "is it running at --url?" in err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--source", "a/b"], "one topic segment"),
        (["--source", "api", "--level-default", "loud"], "unknown level"),
        (["--source", "api", "--state", "s.json"], "go with --file"),
        (["--source", "api", "--processors", "/no/such/dir"], "not a directory"),
        (["--source", "api", "--url", "http://127.0.0.1:9"], "needs the tenant"),
        (["--source", "api", "--file", "."], "is a directory"),
        (["--source", "api", "--file", "a.log", "--state", "/no/such/dir/s"], "no directory"),
    ],
)
async def test_bad_arguments_exit_2(args: list[str], error: str) -> None:
    run = await start(*args)
    assert await run.finish(b"x\n") == 2
    assert error in run.stderr.decode()


async def test_processors_change_and_drop_records(tmp_path: Path) -> None:
    (tmp_path / "10_redact.py").write_text(
        "def process(record):\n"
        "    record.message = record.message.replace('hunter2', '***')\n"
        "    return record\n"
    )
    (tmp_path / "20_drop_debug.py").write_text(
        "def process(record):\n"
        "    return None if record.level == 'debug' else record\n"
    )
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "p", "--url", server.url,
                          "--processors", str(tmp_path))
        lines = b"password is hunter2\nDEBUG: noise\nkept\n"
        assert await run.finish(lines) == 0, run.stderr
        found = await records(server.url, "logs/api/p")
    assert messages(found) == ["password is ***", "kept"]


async def test_a_broken_processor_is_refused_on_stderr_and_the_lines_still_go(
    tmp_path: Path,
) -> None:
    (tmp_path / "10_ok.py").write_text(
        "def process(record):\n    record.fields['seen'] = True\n    return record\n"
    )
    (tmp_path / "20_broken.py").write_text("def process(record)\n")
    (tmp_path / "30_raises.py").write_text(
        "def process(record):\n    raise KeyError(record.message)\n"
    )
    async with running_server() as server:
        run = await start("--source", "api", "--instance", "pb", "--url", server.url,
                          "--processors", str(tmp_path))
        assert await run.finish(b"a\nb\n") == 0, run.stderr
        found = await records(server.url, "logs/api/pb")
    assert [(r["message"], r["fields"]) for r in found] == [
        ("a", {"seen": True}),
        ("b", {"seen": True}),
    ]
    err = run.stderr.decode()
    assert "log processor refused: 20_broken.py: line 1: SyntaxError" in err
    assert "log processor 30_raises.py failed on 1 record(s), passed on unchanged: KeyError" in err


async def test_a_tailed_file_through_rotation_and_a_restart_with_state(tmp_path: Path) -> None:
    log, state = tmp_path / "app.log", tmp_path / "state.json"
    log.write_text("a0\n")
    expected = ["a0"]

    def write(path: Path, *lines: str) -> None:
        with path.open("a") as f:
            f.write("".join(f"{line}\n" for line in lines))
        expected.extend(lines)

    async with running_server() as server:
        topic = "logs/api/file"

        async def shipped() -> bool:
            return messages(await records(server.url, topic)) == expected

        args = ("--source", "api", "--instance", "file", "--url", server.url,
                "--file", str(log), "--state", str(state), "--echo")
        run = await start(*args, "--from-start", stdin=False)
        await until(shipped, "the file's first line")

        # Rotation by rename, right after more lines were written: the old file's lines
        # first, then the new file's.
        write(log, "a1", "a2", "a3")
        log.rename(tmp_path / "app.log.1")
        write(log, "b1", "b2")
        await until(shipped, "the lines before and after the rename")

        # copytruncate: copied, then emptied in place; written again.
        shutil.copyfile(log, tmp_path / "app.log.2")
        with log.open("r+") as f:
            f.truncate(0)
        write(log, "c1")
        await until(shipped, "the line after the truncation")
        write(log, "c2", "c3")
        await until(shipped, "the lines after that")

        assert await run.stop(signal.SIGTERM) == 0, run.stderr
        assert run.stdout.decode().splitlines() == expected
        saved = json.loads(state.read_text())
        assert saved["inode"] == log.stat().st_ino
        assert saved["offset"] == log.stat().st_size

        # While it is down: more lines, then a rotation. The restart finishes the
        # rotated file from the saved position, then the new one: no repeat, no gap.
        write(log, "d1", "d2")
        log.rename(tmp_path / "app.log.3")
        write(log, "e1")
        run = await start(*args, stdin=False)
        await until(shipped, "the lines written while it was down")
        write(log, "e2")
        await until(shipped, "a line after the restart")
        assert await run.stop(signal.SIGINT) == 0, run.stderr
        assert run.stdout.decode().splitlines() == ["d1", "d2", "e1", "e2"]
        assert messages(await records(server.url, topic)) == expected


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_while_reading_stdin_ships_what_was_read(number: int) -> None:
    async with running_server() as server:
        run = await start("--source", "api", "--instance", f"sig{number}", "--url", server.url)
        assert run.process.stdin is not None
        run.process.stdin.write(b"before the signal\nsecond\n")
        await run.process.stdin.drain()
        topic = f"logs/api/sig{number}"

        async def arrived() -> bool:
            return len(await records(server.url, topic)) == 2

        await until(arrived, "the lines written")
        # stdin stays open: the process is blocked reading it when the signal comes.
        assert await run.stop(number) == 0, run.stderr
        assert messages(await records(server.url, topic)) == ["before the signal", "second"]
