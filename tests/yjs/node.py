"""The stock Node `y-websocket` provider, driven from a test (tests/js/yclient.mjs).

`NodeClient` starts `node tests/js/yclient.mjs URL ROOM [TOKEN]` and talks to
it over stdin/stdout, one JSON object a line: `await c.call("insert", value=…)`
answers, `await c.expect(lambda e: …)` waits for an event. `require_node()`
skips a test when node or tests/js/node_modules is missing (`npm ci --prefix
tests/js`, run by scripts/install-services.sh), and fails it instead under
HYBRIDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).resolve().parent.parent / "js"
SCRIPT = JS / "yclient.mjs"
TIMEOUT = 15.0


def require_node() -> str:
    """The node binary; skips (or fails under HYBRIDBUS_REQUIRE_SERVICES=1) without it."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (JS / "node_modules" / "y-websocket").is_dir():
        missing = "tests/js/node_modules is missing: npm ci --prefix tests/js"
    if missing is None:
        assert node is not None
        return node
    reason = f"{missing} (scripts/install-services.sh installs it)"
    if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HYBRIDBUS_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


class NodeClient:
    """One Node process holding one `WebsocketProvider` on one room."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            id = message.pop("id", None)
            if id is not None:
                future = self._answers.pop(id, None)
                if future is not None and not future.done():
                    future.set_result(message)
            else:
                self.events.append(message)
                self._changed.set()
        for future in self._answers.values():
            if not future.done():
                future.set_exception(EOFError("the node client exited"))

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Run command `op` in the client; its answer."""
        id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._answers[id] = future
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": id, "op": op, **fields}).encode() + b"\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(TIMEOUT):
            answer = await future
        assert "error" not in answer, answer
        return answer

    async def expect(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first event (seen so far or to come) that `match` accepts."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if match(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def synced(self) -> None:
        await self.expect(lambda e: e.get("event") == "synced")

    async def text(self) -> str:
        return str((await self.call("text"))["text"])

    async def kill(self) -> None:
        """SIGKILL: its sockets close without a close frame, as a crash or a lost tab does."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._reader


@contextlib.asynccontextmanager
async def node_client(url: str, room: str, token: str | None = None) -> AsyncIterator[NodeClient]:
    """A `NodeClient` on `url` (e.g. ws://127.0.0.1:PORT/v1/yjs), killed at the end."""
    node = require_node()
    args = [str(SCRIPT), url, room, *([token] if token else [])]
    process = await asyncio.create_subprocess_exec(
        node,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=JS,
    )
    client = NodeClient(process)
    try:
        yield client
    finally:
        await client.kill()


async def converged(*clients: NodeClient, timeout: float = TIMEOUT) -> str:
    """The text every client holds, once they all hold the same."""
    async with asyncio.timeout(timeout):
        while True:
            texts = [await c.text() for c in clients]
            if all(t == texts[0] for t in texts):
                return texts[0]
            await asyncio.sleep(0.05)
