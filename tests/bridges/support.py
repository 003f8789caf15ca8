"""Helpers of the bridge tests: clients nobody here wrote (mosquitto_pub/sub, psql), and
`hybridbus bridge CONFIG` as a process of its own (to kill it with -9).

Nothing here knows a bridge's internals: messages go in and come out through the
brokers' own command-line clients, and the bus is read through `hybridbus.open`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.services.base import PG_BIN

import hybridbus

VENV_BIN = Path(sys.executable).parent
PSQL = PG_BIN / "psql"


def mosquitto_pub(
    port: int,
    topic: str,
    lines: Sequence[str] = (),
    *,
    message: str | None = None,
    version: str = "5",
    properties: Sequence[tuple[str, ...]] = (),
) -> None:
    """Publish with QoS 1: each of `lines` a message (-l), or one `message` (-m)."""
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1"]
    argv += ["-V", "5" if version == "5" else "311"]
    for prop in properties:
        argv += ["-D", "publish", *prop]
    if message is not None:
        argv += ["-m", message]
        subprocess.run(argv, check=True, timeout=30)
    else:
        argv += ["-l"]
        subprocess.run(argv, input="\n".join(lines) + "\n", text=True, check=True, timeout=60)


class MosquittoSub:
    """`mosquitto_sub -F %j` with a persistent session (QoS 1): every message as a dict."""

    def __init__(self, port: int, pattern: str, client_id: str, version: str = "5") -> None:
        self.argv = [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", pattern, "-q", "1",
            "-c", "-i", client_id, "-F", "%j",
        ]  # fmt: skip
        self.argv += ["-V", "5", "-x", "3600"] if version == "5" else ["-V", "311"]
        self.messages: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        loop = asyncio.get_running_loop()
        proc = self.proc

        async def read() -> None:
            assert proc.stdout is not None
            while True:
                line = await loop.run_in_executor(None, proc.stdout.readline)
                if not line:
                    return
                self.messages.append(json.loads(line))

        self._reader = loop.create_task(read())
        await asyncio.sleep(0.3)  # subscribed (a persistent session keeps what comes after)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                await asyncio.sleep(0.05)
        return self.messages

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def psql(url: str, sql: str) -> list[list[str]]:
    """Rows of `sql` as psql prints them unaligned (`|` between columns)."""
    out = subprocess.run(
        [str(PSQL), url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [line.split("|") for line in out.stdout.splitlines() if line]


class BridgeProcess:
    """`hybridbus bridge CONFIG` in a process of its own: start, kill -9, stop (SIGTERM)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(".log")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDBUS_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "hybridbus"), "bridge", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `check()` (sync or async) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


async def bus_events(engine: str, pattern: str) -> list[tuple[str, Any]]:
    """Every (topic, event) of `pattern` in the log of `engine`, oldest first."""
    found: list[tuple[str, Any]] = []
    async with hybridbus.open(engine) as bus:
        since = None
        while True:
            page = await bus.history(pattern, since=since, limit=1000)
            found += [(d.topic, d.event) for d in page.deliveries]
            since = page.position
            if not page.more:
                return found
