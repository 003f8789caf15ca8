"""What the JavaScript client's tests run against: a real server, a cuttable link, tokens.

`js_harness()` starts, on free loopback ports:

- the real server (`running_server`) on sqlite with a JWT secret, restartable in
  place (same port, same data: the log's epoch survives, as a deployed server's does);
- `Proxy`, a TCP proxy in front of it, the network a test can cut: `drop()` resets
  every connection through it (the client sees 1006, as on a lost network), `hold()`
  also refuses new ones until `resume()`, and `mute()` swallows what the server sends
  from then on (an answer lost in flight) until the next drop;
- a control endpoint (aiohttp) for the JavaScript side: `GET /token?sub=&ttl=&roles=`
  mints a JWT (`bad` is a token signed with another secret), `POST /drop`, `/hold`,
  `/resume`, `/mute` act on the proxy, and `POST /restart` restarts the server with the
  proxy held (the clients get the server's own shutdown close, 4000, and cannot
  reconnect until `/resume`), so a test publishes to the restarted server meanwhile.

`run_node_tests(...)` runs `node --test` on clients/js/test with the addresses in the
environment and returns the TAP report, one `Tap` per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from tests.servers import Server, running_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js"
SECRET = "js-client-test-secret-js-client-test-secret!"
OTHER_SECRET = "not-the-server-secret-not-the-server-secret!"
TENANT = "acme"
PING = 1.0  # seconds between the server's heartbeats: a silent link is dead after 2 s
# "user" may do everything in its tenant (tests.servers); "reader" may only read.
ROLES: dict[str, list[dict[str, Any]]] = {
    "user": [{"allow": "*", "topics": "#"}],
    "reader": [{"allow": ["subscribe", "history", "presence"], "topics": "#"}],
}


def mint(sub: str = "ann", ttl: float = 600, roles: tuple[str, ...] = ("user",)) -> str:
    """A token of tenant `acme` for `sub`, living `ttl` seconds."""
    now = int(time.time())
    claims = {"sub": sub, "tenantid": TENANT, "roles": list(roles), "iat": now}
    claims["exp"] = now + max(1, round(ttl))
    return jwt.encode(claims, SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    muted: bool = False


class Proxy:
    """A TCP proxy to 127.0.0.1:`target` that a test can cut (module docstring)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.held = False
        self.links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.held = True
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # the aborted transports close on the loop's next turns

    def drop(self) -> None:
        """Reset every connection through the proxy."""
        for link in list(self.links):
            link.client.transport.abort()
            link.server.transport.abort()
        self.links.clear()

    def hold(self) -> None:
        """Reset every connection, and refuse new ones until `resume`."""
        self.held = True
        self.drop()

    def resume(self) -> None:
        self.held = False

    def mute(self) -> None:
        """Swallow what the server sends on every current connection."""
        for link in self.links:
            link.muted = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.held:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        if self.held:  # held while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self.links.add(link)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, link, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, link, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream or not link.muted:
                    writer.write(data)
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.links.discard(link)
            link.client.transport.abort()
            link.server.transport.abort()


@dataclass
class Harness:
    """The server, the proxy in front of it and the control endpoint (module docstring)."""

    data: Path
    port: int = field(default_factory=free_port)
    server: Server | None = None
    proxy: Proxy | None = None
    control_port: int = 0
    restarts: int = 0
    _stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return f"ws://127.0.0.1:{self.proxy.port}/v1/ws"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def env(self) -> dict[str, str]:
        """What the JavaScript tests read: where the server, the proxy and the control are."""
        return {
            "JSTEST_URL": self.url,
            "JSTEST_PROXY_URL": self.proxy_url,
            "JSTEST_CONTROL": self.control,
            "JSTEST_TOKEN": mint(),
            "JSTEST_TENANT": TENANT,
        }

    async def start_server(self) -> None:
        stack = contextlib.AsyncExitStack()
        self.server = await stack.enter_async_context(
            running_server(
                engine=f"sqlite://{self.data}",
                port=self.port,
                jwt_secret=SECRET,
                anonymous_tenant=None,
                roles=ROLES,
                ping_interval=PING,
                cors_origins=["http://localhost:*", "http://127.0.0.1:*"],
            )
        )
        self._stack = stack

    async def stop_server(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def restart(self) -> None:
        """Restart the server in place, the proxy held (the caller resumes it)."""
        assert self.proxy is not None
        self.proxy.held = True  # reconnects are refused; the current links see the shutdown
        await self.stop_server()
        self.proxy.drop()
        await self.start_server()
        self.restarts += 1

    def control_app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            query = request.query
            if query.get("sub") == "bad":
                now = int(time.time())
                claims = {"sub": "bad", "tenantid": TENANT, "iat": now, "exp": now + 600}
                return web.Response(text=jwt.encode(claims, OTHER_SECRET, algorithm="HS256"))
            roles = tuple(query.get("roles", "user").split(","))
            ttl = float(query.get("ttl", "600"))
            return web.Response(text=mint(query.get("sub", "ann"), ttl, roles))

        async def act(request: web.Request) -> web.Response:
            proxy = self.proxy
            assert proxy is not None
            what = request.match_info["what"]
            if what == "drop":
                proxy.drop()
            elif what == "hold":
                proxy.hold()
            elif what == "resume":
                proxy.resume()
            elif what == "mute":
                proxy.mute()
            elif what == "restart":
                await self.restart()
            else:
                raise web.HTTPNotFound()
            return web.json_response({"ok": what, "links": len(proxy.links)})

        app = web.Application()
        app.router.add_get("/token", token)
        app.router.add_post("/{what}", act)
        return app


@contextlib.asynccontextmanager
async def js_harness(data: Path) -> AsyncIterator[Harness]:
    """The server (sqlite in `data`), its proxy and the control endpoint, all started."""
    harness = Harness(data)
    await harness.start_server()
    harness.proxy = Proxy(harness.port)
    await harness.proxy.start()
    runner = web.AppRunner(harness.control_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        harness.control_port = runner.addresses[0][1]
        yield harness
    finally:
        await runner.cleanup()
        await harness.proxy.stop()
        await harness.stop_server()


def require_node() -> str:
    """The node binary; skips without it (fails under HYBRIDBUS_REQUIRE_SERVICES=1)."""
    node = shutil.which("node")
    if node is not None:
        return node
    reason = "node is not installed (apt-get install nodejs)"
    if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HYBRIDBUS_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Tap:
    """One test of a TAP report: its name, whether it passed, and its diagnostic lines."""

    name: str
    ok: bool
    skipped: bool
    details: str


_RESULT = re.compile(r"^(?P<indent>\s*)(?P<ok>ok|not ok) \d+ - (?P<name>.*?)(?P<skip> # SKIP.*)?$")


def parse_tap(text: str) -> list[Tap]:
    """The tests of a TAP report (Node's `--test-reporter=tap`), subtests included."""
    tests: list[Tap] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _RESULT.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        details: list[str] = []
        for following in lines[index + 1 :]:
            if following.strip() == "..." or _RESULT.match(following):
                break
            if len(following) - len(following.lstrip()) > indent:
                details.append(following.strip())
        tests.append(
            Tap(match["name"], match["ok"] == "ok", match["skip"] is not None, "\n".join(details))
        )
    return tests


async def run_node(*args: str, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run node with `args` in clients/js (without blocking the loop the server runs on)."""
    node = require_node()
    process = await asyncio.create_subprocess_exec(
        node,
        *args,
        cwd=CLIENT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        return -1, out.decode(), err.decode() + f"\n(killed after {timeout:g} s)"
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
