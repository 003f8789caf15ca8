"""Headless browsers for the tests: Chromium over CDP, Firefox over WebDriver BiDi, one interface.

A test takes the `browser` fixture (module scope, parametrized over `KINDS`: one browser
process per kind per module) and opens tabs with `open_page`:

    async with open_page(browser, init_script=WATCH) as page:
        await page.goto(url)
        assert await page.eval("document.title") == "hybridbus"

`Page.eval` evaluates a script in the page, awaits a promise, and returns its value as
JSON-like Python (CDP `returnByValue`; BiDi remote values deserialized the same way);
a page exception, or a protocol error (e.g. while a page loads), raises RuntimeError.
`init_script` runs in every document of the tab before the page's own scripts.

- Chromium (`/usr/bin/chromium`, Debian's `chromium`): the Chrome DevTools Protocol (`Cdp`,
  flat sessions; `Cdp.tab()` opens a tab), on the DevTools port the browser writes to its
  profile. Tests that drive CDP themselves take the `chromium` fixture (its DevTools URL).
- Firefox (`/usr/bin/firefox-esr`, Debian's `firefox-esr`): WebDriver BiDi, Firefox's remote
  protocol (no geckodriver): `--remote-debugging-port=0` and a fresh profile whose user.js
  stops first-run pages, updates, telemetry and any network but loopback; the port is read
  from the profile's WebDriverBiDiServer.json. A page is a BiDi session on its own
  WebSocket (Firefox allows one session at a time, so pages of one Firefox open one after
  another): `session.new`, `browsingContext.create`/`setViewport`/`navigate` (wait
  "complete")/`captureScreenshot`/`close`, `script.addPreloadScript`, `script.evaluate`.

Also the pieces every browser test needs: `page_server(html, static)` (a page, and
directories, served on a free port of 127.0.0.1), `serving(app)` (any aiohttp app so) and
`until(page, expression)` (a page script's value once truthy).

A missing browser skips the test, unless HYBRIDBUS_REQUIRE_BROWSER=1 (CI, .ci/run), which
makes it a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from tests.servers import TIMEOUT
from websockets.asyncio.client import ClientConnection, connect

__all__ = [
    "KINDS",
    "START_TIMEOUT",
    "Browser",
    "Cdp",
    "Page",
    "browser",
    "chromium",
    "launch",
    "open_page",
    "page_server",
    "serving",
    "until",
]

START_TIMEOUT = 60.0  # a cold browser on a loaded 2-core machine
KINDS = ("chromium", "firefox")
BINARIES = {"chromium": ("chromium",), "firefox": ("firefox-esr", "firefox")}
PACKAGES = {"chromium": "chromium", "firefox": "firefox-esr"}
WIDTH, HEIGHT = 1280, 800

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)

# Firefox's profile: no first-run or welcome pages, no updates, no telemetry or studies, and
# no connection but loopback (a dead proxy for everything else; loopback never goes through
# a proxy, network.proxy.allow_hijacking_localhost being false).
FIREFOX_PREFS: dict[str, bool | int | str] = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.tabs.warnOnClose": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.firstRunURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "toolkit.startup.max_resumed_crashes": -1,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "browser.search.update": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "services.settings.server": "data:,#remote-settings-off/v1",
    "media.gmp-manager.updateEnabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.share_proxy_settings": True,
    "network.proxy.allow_hijacking_localhost": False,
    "network.trr.mode": 5,  # no DNS over HTTPS
}


@dataclass(frozen=True)
class Browser:
    """A running headless browser: its kind and the WebSocket URL of its remote protocol."""

    kind: str
    url: str


def binary(kind: str) -> str:
    """The browser's executable, or a skip (a failure when HYBRIDBUS_REQUIRE_BROWSER=1)."""
    for name in BINARIES[kind]:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
        )
        if found is not None:
            return found
    if os.environ.get("HYBRIDBUS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"HYBRIDBUS_REQUIRE_BROWSER=1 but {kind} is not installed")
    pytest.skip(
        f"{kind} is not installed (apt-get install {PACKAGES[kind]}); "
        "HYBRIDBUS_REQUIRE_BROWSER=1 makes this a failure"
    )


def _command(kind: str, profile: Path, flags: Sequence[str] = ()) -> list[str]:
    if kind == "chromium":
        return [
            binary(kind),
            *CHROMIUM_FLAGS,
            *flags,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
    prefs = "".join(
        f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in FIREFOX_PREFS.items()
    )
    (profile / "user.js").write_text(prefs)
    return [
        binary(kind),
        "--headless",
        "--no-remote",
        "--remote-debugging-port=0",  # a free port, written to WebDriverBiDiServer.json
        "--profile",
        str(profile),
        *flags,
        "about:blank",
    ]


def _endpoint(kind: str, profile: Path) -> str | None:
    """The remote protocol's URL once the browser listens, else None."""
    if kind == "chromium":
        active = profile / "DevToolsActivePort"
        lines = active.read_text().splitlines() if active.exists() else []
        return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 else None
    server = profile / "WebDriverBiDiServer.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        found = json.loads(server.read_text())
        return f"ws://{found['ws_host']}:{found['ws_port']}/session"
    return None


@contextlib.contextmanager
def launch(kind: str, profile: Path, flags: Sequence[str] = ()) -> Iterator[Browser]:
    """A headless `kind` with a fresh profile in `profile` (an empty directory), then killed.

    `flags`: more command-line flags (e.g. Chromium's `--ignore-certificate-errors-spki-list`).
    """
    command = _command(kind, profile, flags)
    env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "HOME": str(profile)}
    log = (profile.parent / f"{profile.name}.log").open("wb")
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,  # its own process group: its helpers go with it
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (url := _endpoint(kind, profile)) is None:
            if process.poll() is not None:
                pytest.fail(f"{kind} exited with {process.returncode} before listening")
            if time.monotonic() > deadline:
                pytest.fail(f"{kind} did not listen within {START_TIMEOUT:g} s")
            time.sleep(0.05)
        yield Browser(kind, url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its group: the pid is its group's id
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module", params=KINDS)
def browser(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    """A headless browser of each kind for the module (tests run grouped by kind)."""
    kind: str = request.param
    with launch(kind, tmp_path_factory.mktemp(f"{kind}-profile")) as running:
        yield running


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A headless Chromium for the module: the URL of its DevTools WebSocket (for `Cdp`)."""
    with launch("chromium", tmp_path_factory.mktemp("chromium-profile")) as running:
        yield running.url


class Cdp:
    """A Chrome DevTools Protocol client over one browser WebSocket (flat sessions)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        id = next(self._ids)
        message: dict[str, Any] = {"id": id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send(json.dumps(message))
        while True:
            reply = json.loads(await self._ws.recv())
            if reply.get("id") == id:  # events and other sessions' messages are dropped
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    @asynccontextmanager
    async def tab(self, url: str = "about:blank") -> AsyncIterator[str]:
        """A new tab at `url` (not waited for), attached: its session id; closed after."""
        target = (await self.call("Target.createTarget", url=url))["targetId"]
        try:
            attached = await self.call("Target.attachToTarget", targetId=target, flatten=True)
            yield attached["sessionId"]
        finally:
            await self.call("Target.closeTarget", targetId=target)


class Page(Protocol):
    """One tab, the same for every browser."""

    kind: str

    async def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""

    async def eval(self, expression: str) -> Any:
        """The JSON-like value of a script in the page; a promise is awaited."""

    async def screenshot(self) -> bytes:
        """A PNG of the viewport."""


class CdpPage:
    """A Chromium tab over CDP (a flat session of one browser connection)."""

    kind = "chromium"

    def __init__(self, cdp: Cdp, session: str) -> None:
        self.cdp = cdp
        self.session = session
        self._navigations = itertools.count(1)

    async def goto(self, url: str) -> None:
        # A mark in the current document: gone once the next one is there.
        mark = f"__hybridbusNavigation{next(self._navigations)}"
        await self.eval(f"window.{mark} = true")
        await self.cdp.call("Page.navigate", self.session, url=url)
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                with contextlib.suppress(RuntimeError):  # between documents
                    if await self.eval(f"!window.{mark} && document.readyState === 'complete'"):
                        return
                await asyncio.sleep(0.05)

    async def eval(self, expression: str) -> Any:
        return await self.cdp.evaluate(self.session, expression)

    async def screenshot(self) -> bytes:
        shot = await self.cdp.call("Page.captureScreenshot", self.session, format="png")
        return base64.b64decode(shot["data"])


@asynccontextmanager
async def _chromium_page(url: str, init_script: str | None) -> AsyncIterator[CdpPage]:
    async with connect(url, max_size=None, open_timeout=TIMEOUT) as ws:
        cdp = Cdp(ws)
        async with cdp.tab() as session:
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            await cdp.call("Page.enable", session)
            if init_script is not None:
                await cdp.call("Page.addScriptToEvaluateOnNewDocument", session, source=init_script)
            yield CdpPage(cdp, session)


class Bidi:
    """A WebDriver BiDi client over one WebSocket: commands answered in turn, events dropped."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()  # one command at a time: replies are read in line

    async def call(self, method: str, **params: Any) -> Any:
        async with self._lock:
            id = next(self._ids)
            await self._ws.send(json.dumps({"id": id, "method": method, "params": params}))
            while True:
                reply = json.loads(await self._ws.recv())
                if reply.get("id") == id:  # events (type "event") are not asked for
                    if reply.get("type") == "error":
                        raise RuntimeError(f"{method}: {reply['error']}: {reply.get('message')}")
                    return reply["result"]


_NUMBERS = {"NaN": math.nan, "-0": -0.0, "Infinity": math.inf, "-Infinity": -math.inf}


def from_remote(value: dict[str, Any]) -> Any:
    """A BiDi remote value as JSON-like Python, as CDP's `returnByValue` gives it.

    (Where CDP has no JSON value, this keeps one: NaN and the infinities as floats, a Map's
    entries as a dict.)
    """
    kind = value["type"]
    inner: Any = value.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind == "number":
        return _NUMBERS.get(inner, inner) if isinstance(inner, str) else inner
    if kind == "bigint":
        return int(inner)
    if kind in ("string", "boolean", "date"):
        return inner
    if kind in ("array", "set", "arguments", "nodelist", "htmlcollection"):
        return [from_remote(item) for item in inner or []]
    if kind in ("object", "map"):
        return {
            (key if isinstance(key, str) else str(from_remote(key))): from_remote(item)
            for key, item in inner or []
        }
    return {}  # a node, window, function, error, promise...: no JSON value


class BidiPage:
    """A Firefox tab: a browsing context of a BiDi session."""

    kind = "firefox"

    def __init__(self, bidi: Bidi, context: str) -> None:
        self.bidi = bidi
        self.context = context

    async def goto(self, url: str) -> None:
        async with asyncio.timeout(START_TIMEOUT):
            await self.bidi.call(
                "browsingContext.navigate", context=self.context, url=url, wait="complete"
            )

    async def eval(self, expression: str) -> Any:
        result = await self.bidi.call(
            "script.evaluate",
            expression=expression,
            target={"context": self.context},
            awaitPromise=True,
            resultOwnership="none",
        )
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            raise RuntimeError(f"the page threw: {details.get('text')} {details}")
        return from_remote(result["result"])

    async def screenshot(self) -> bytes:
        shot = await self.bidi.call("browsingContext.captureScreenshot", context=self.context)
        return base64.b64decode(shot["data"])


@asynccontextmanager
async def _firefox_page(url: str, init_script: str | None) -> AsyncIterator[BidiPage]:
    async with connect(url, max_size=None, open_timeout=TIMEOUT) as ws:
        bidi = Bidi(ws)
        await bidi.call("session.new", capabilities={})
        try:
            context = (await bidi.call("browsingContext.create", type="tab"))["context"]
            try:
                await bidi.call(
                    "browsingContext.setViewport",
                    context=context,
                    viewport={"width": WIDTH, "height": HEIGHT},
                    devicePixelRatio=1,
                )
                if init_script is not None:
                    await bidi.call(
                        "script.addPreloadScript",
                        functionDeclaration=f"() => {{\n{init_script}\n}}",
                        contexts=[context],
                    )
                yield BidiPage(bidi, context)
            finally:
                await bidi.call("browsingContext.close", context=context)
        finally:
            await bidi.call("session.end")


@asynccontextmanager
async def open_page(browser: Browser, *, init_script: str | None = None) -> AsyncIterator[Page]:
    """A new tab (1280x800, at about:blank), closed after the block."""
    opened = _chromium_page if browser.kind == "chromium" else _firefox_page
    async with opened(browser.url, init_script) as page:
        yield page


async def until(page: Page, expression: str, timeout: float = START_TIMEOUT) -> Any:
    """The value of `expression` in `page` once truthy, polled (errors while a page loads are
    waited out); TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(RuntimeError):  # between documents
                if value := await page.eval(expression):
                    return value
            await asyncio.sleep(0.05)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """`app` on a free port of 127.0.0.1 while the block runs: the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def page_server(html: str, static: Mapping[str, Path] = {}) -> AsyncIterator[int]:
    """`html` at /, and each directory of `static` at its prefix (e.g. "/client/"): the port
    on 127.0.0.1 (reached as localhost or 127.0.0.1)."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    for prefix, directory in static.items():
        app.router.add_static(prefix, directory)
    async with serving(app) as port:
        yield port
