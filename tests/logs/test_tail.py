"""`hybridbus tail`: filtered by the server, every matching line once, in order, across restarts.

The end-to-end test runs real processes: `hybridbus serve` on a sqlite engine
in a temporary directory, restarted on the same port mid-way, and
`hybridbus tail` as a subprocess, reading what it prints.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from tests.logs.support import free_port
from tests.servers import ServerProcess, running_server

import hybridbus.client
from hybridbus.cli_tail import COLOURS, Printer, _since
from hybridbus.core.event import Event
from hybridbus.core.filters import Filter
from hybridbus.core.log import Position
from hybridbus.core.logs import LogRecord, log_event
from hybridbus.errors import InvalidInput
from hybridbus.logs.formatters import JsonFormatter, PlainFormatter
from hybridbus.proto.client import Received

HYBRIDBUS = str(Path(sys.executable).parent / "hybridbus")


def line(n: int) -> Event:
    """Log line n of service api, instance 1: it matches --level warn --grep timeout iff
    n % 4 in (1, 2) and n % 3 (warn or error, and "timeout" in the message)."""
    level = ("info", "warn", "error", "debug")[n % 4]
    message = f"call {n} timeout" if n % 3 else f"call {n} done"
    record = LogRecord(message=message, level=level, fields={"n": n})
    return log_event(record, service="api", instance="1", source="/t", id=f"l{n}")


def matching(numbers: range) -> list[str]:
    return [f"call {n} timeout" for n in numbers if n % 4 in (1, 2) and n % 3]


async def publish(url: str, numbers: range) -> None:
    async with hybridbus.client.connect(url) as c:
        for n in numbers:
            await c.publish("logs/api/1", line(n))


async def head(url: str) -> str:
    async with hybridbus.client.connect(url) as c:
        return str((await c.history("logs/#", limit=0)).position)


async def read_lines(stream: asyncio.StreamReader, count: int, timeout: float) -> list[str]:
    found: list[str] = []
    async with asyncio.timeout(timeout):
        while len(found) < count:
            raw = await stream.readline()
            if not raw:
                break
            found.append(raw.decode())
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_tail_sees_every_matching_line_once_in_order_across_a_server_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ("--engine", f"sqlite://{tmp_path / 'data'}", "--anonymous-tenant", "acme")
    server = ServerProcess(*args, logs=tmp_path / "first.log", port=port)
    tail: asyncio.subprocess.Process | None = None
    try:
        await server.wait_listening()
        start = await head(server.url)
        expected = matching(range(80))
        tail = await asyncio.create_subprocess_exec(
            HYBRIDBUS, "tail", "logs/api/#", "--url", server.url, "--since", start,
            "--level", "warn", "--grep", "timeout", "--format", "json",
            "--count", str(len(expected)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert tail.stdout is not None and tail.stderr is not None
        await publish(server.url, range(40))
        first = await read_lines(tail.stdout, len(matching(range(40))), 30)
        # The server goes down and comes back on the same port, with the same log.
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        server = ServerProcess(*args, logs=tmp_path / "second.log", port=port)
        await server.wait_listening()
        await publish(server.url, range(40, 80))
        rest = await read_lines(tail.stdout, len(expected) - len(first), 60)
        assert await asyncio.wait_for(tail.wait(), 10) == 0  # --count reached
        said = (await tail.stderr.read()).decode()
        got = [json.loads(text)["message"] for text in first + rest]
        assert got == expected, said
        assert "reconnect" in said  # it did lose the server, and followed on
        records = [json.loads(text) for text in first + rest]
        assert {r["level"] for r in records} == {"warn", "error"}
    finally:
        if tail is not None and tail.returncode is None:
            tail.kill()
            await tail.wait()
        await server.kill()


async def test_since_a_time_starts_at_the_first_event_appended_then() -> None:
    async with running_server() as server, hybridbus.client.connect(server.url) as c:
        for n in range(3):
            await c.publish("logs/api/1", line(n))
        middle = time.time()
        await asyncio.sleep(0.05)
        for n in range(3, 6):
            await c.publish("logs/api/1", line(n))
        page = await c.history("logs/#", since=middle, limit=0)
        assert page.events == []
        async with c.subscribe("logs/#", since=page.position) as sub:
            got = [(await anext(sub)).event.id for _ in range(3)]
        assert got == ["l3", "l4", "l5"]
        everything = await c.history("logs/#", since=middle - 3600, limit=10)
        assert [e.event.id for e in everything.events] == [f"l{n}" for n in range(6)]
        filtered = await server.node.bus.history(
            "acme/logs/#", at=middle, filter=Filter(level="warn")
        )
        assert [d.event.id for d in filtered.deliveries] == ["l5"]  # warn+ after the time


def test_since_is_an_age_or_a_token() -> None:
    before = time.time()
    when = _since("10m")
    assert isinstance(when, float) and before - 600 - 1 < when <= time.time() - 600
    assert _since("2h") == pytest.approx(time.time() - 7200, abs=2)
    assert _since("e1-42") == Position("e1", (42,))
    assert _since(None) is None
    with pytest.raises(InvalidInput):
        _since("yesterday")


def received(event: Event, topic: str = "logs/api/1") -> Received:
    return Received("logs/#", topic, 7, 0, 7, event, Position("e", (7,)))


def test_log_lines_are_coloured_by_level_only_when_asked() -> None:
    warn = received(line(1))
    plain = Printer(io.BytesIO(), PlainFormatter(), colour=True).line(warn)
    assert plain.startswith(COLOURS["warn"]) and plain.endswith(b"\x1b[0m\n")
    assert b"WARN  api: call 1 timeout n=1" in plain
    bare = Printer(io.BytesIO(), PlainFormatter(), colour=False).line(warn)
    assert b"\x1b" not in bare
    info = Printer(io.BytesIO(), PlainFormatter(), colour=True).line(received(line(0)))
    assert b"\x1b" not in info  # info is not coloured
    as_json = Printer(io.BytesIO(), JsonFormatter(), colour=False).line(warn)
    assert json.loads(as_json)["message"] == "call 1 timeout"


def test_other_events_print_as_json_lines() -> None:
    event = Event(id="x", source="/s", type="com.acme.note", data={"a": 1})
    text = Printer(io.BytesIO(), PlainFormatter(), colour=True).line(received(event, "docs/1"))
    decoded = json.loads(text)
    assert decoded["topic"] == "docs/1" and decoded["position"] == "e-7"
    assert decoded["event"]["data"] == {"a": 1}
