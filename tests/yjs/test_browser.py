"""The browser example (examples/collab/) in headless Chromium, editing beside a Node provider.

The page is served as docs/collaboration.md serves it (`python3 -m http.server`
at the repository's root; its import map loads yjs and y-websocket from
tests/js/node_modules), against a server with `make serve`'s settings
(examples/dev.toml: anonymous clients in tenant `public`). Chromium is driven
over the DevTools protocol (`Cdp` and the `chromium` fixture of
tests/browser.py): it types into the page's textarea with
`Input.insertText` and Backspace — emoji and CJK among it — while a stock Node
`y-websocket` provider (tests/yjs/node.py) makes random edits of the same
`Y.Text`; the textarea, the page's `Y.Text`, the Node client's and the server's
pycrdt document end identical (and no surrogate pair is split: replacing 😀 by
😁 changes only its low half; the page's caret stays on its character when
Node inserts before it). The page shows the Node client's cursor and name from
awareness at once when it joins (< 200 ms after its socket opened) and when it
moves, and drops them within 1 s of the Node process being killed.

Without chromium the test skips, unless HYBRIDBUS_REQUIRE_BROWSER=1; without
node or tests/js/node_modules, unless HYBRIDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests import browser as browsers
from tests.browser import START_TIMEOUT, Cdp
from tests.servers import TIMEOUT, Server, running_server
from tests.yjs.node import NodeClient, node_client, require_node
from tests.yjs.test_documents import server_text
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
chromium = browsers.chromium  # the fixture: a headless Chromium, its DevTools URL

ROOT = Path(__file__).resolve().parents[2]
DEV_CONFIG = ROOT / "examples" / "dev.toml"
TENANT = "public"  # examples/dev.toml's anonymous tenant
# What the page types: astral-plane emoji (a ZWJ sequence, a flag), CJK, Hangul, accents.
PIECES = ["😀", "👩\u200d💻", "🇯🇵", "中文", "字", "한국어", "é", "ß", " ", "\n", "x", "yz"]
# Records when the page's first socket opened (ms since the epoch), before any page script runs.
OPENED = """
window.opened = null
window.WebSocket = class extends WebSocket {
  constructor (...args) {
    super(...args)
    this.addEventListener('open', () => { window.opened ??= Date.now() })
  }
}
"""


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[int]:
    """`python3 -m http.server` at the repository's root, as the docs run it: its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = await process.stdout.readline()  # Serving HTTP on 127.0.0.1 port N (…) ...
        found = re.search(rb" port (\d+) ", line)
        assert found is not None, line
        yield int(found[1])
    finally:
        process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def example_page(cdp: Cdp, url: str) -> AsyncIterator[str]:
    """A tab on the example at `url`, its provider synced: the tab's session id."""
    async with cdp.tab() as session:
        await cdp.call("Page.enable", session)
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", session, source=OPENED)
        await cdp.call("Page.navigate", session, url=url)
        synced = "window.collab?.provider.synced === true"
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not await evaluate_when_loaded(cdp, session, synced):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            status = "document.getElementById('status')?.textContent"
            shown = await evaluate_when_loaded(cdp, session, status)
            raise AssertionError(f"the page did not sync (status: {shown})") from None
        yield session


async def evaluate_when_loaded(cdp: Cdp, session: str, expression: str) -> Any:
    """The expression's value, or None while the page is still navigating."""
    with contextlib.suppress(RuntimeError):
        return await cdp.evaluate(session, expression)
    return None


# Selects from fraction `f` to fraction `g` (or puts the caret at `f`) of the textarea's text,
# never inside a surrogate pair: the page picks the indices, as its text moves under the test.
SELECT = """(f, g) => {
  const ta = document.getElementById('text'), s = ta.value
  const at = (fraction) => {
    const i = Math.floor(fraction * (s.length + 1)), c = s.charCodeAt(i)
    return c >= 0xdc00 && c <= 0xdfff ? i - 1 : i
  }
  const a = at(f), b = g === null ? a : at(g)
  ta.focus()
  ta.setSelectionRange(Math.min(a, b), Math.max(a, b))
}"""


async def type_into_the_page(cdp: Cdp, session: str, steps: int, seed: int) -> None:
    """Moves the caret (or selects) at random, then types a piece or presses Backspace."""
    rng = random.Random(seed)
    for _ in range(steps):
        start, end = rng.random(), (rng.random() if rng.random() < 0.2 else None)
        await cdp.evaluate(session, f"({SELECT})({json.dumps(start)}, {json.dumps(end)})")
        if rng.random() < 0.25:
            await press_backspace(cdp, session)
        else:
            await cdp.call("Input.insertText", session, text=rng.choice(PIECES))
        await asyncio.sleep(rng.random() * 0.01)


async def press_backspace(cdp: Cdp, session: str) -> None:
    key = {"key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8}
    await cdp.call("Input.dispatchKeyEvent", session, type="rawKeyDown", **key)
    await cdp.call("Input.dispatchKeyEvent", session, type="keyUp", **key)


async def page_texts(cdp: Cdp, session: str) -> tuple[str, str]:
    """The page's textarea and its `Y.Text`."""
    both = await cdp.evaluate(
        session, "[document.getElementById('text').value, collab.text.toString()]"
    )
    return both[0], both[1]


async def caret_of(cdp: Cdp, session: str, client: int) -> dict[str, Any] | None:
    """The caret the page draws for `client`: its label, index, list entry, tinted selection."""
    return await cdp.evaluate(  # type: ignore[no-any-return]
        session,
        f"""(() => {{
          const caret = document.querySelector('.caret[data-client="{client}"]')
          if (!caret) return null
          let index = 0
          for (const node of document.getElementById('overlay').childNodes) {{
            if (node === caret) break
            if (!node.classList?.contains('caret')) index += node.textContent.length
          }}
          const listed = document.querySelector('#users li[data-client="{client}"]')
          const tinted = [...document.getElementById('overlay').children]
            .filter((node) => node.style.background).map((node) => node.textContent)
          return {{label: caret.textContent, index, listed: listed?.textContent ?? null,
                   selected: tinted.join('')}}
        }})()""",
    )


async def converged(cdp: Cdp, session: str, node: NodeClient, server: Server, room: str) -> str:
    """The text the page, the Node client and the server all hold, once they hold the same."""
    texts: dict[str, str] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            while True:
                texts["textarea"], texts["page"] = await page_texts(cdp, session)
                texts["node"] = await node.text()
                texts["server"] = server_text(server, room, TENANT)
                if len(set(texts.values())) == 1:
                    return texts["page"]
                await asyncio.sleep(0.05)
    raise AssertionError(f"no convergence in {TIMEOUT:g} s: {texts}")


def utf16(text: str) -> int:
    """Yjs's and JavaScript's length of `text`: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


@contextlib.asynccontextmanager
async def setup(chromium: str) -> AsyncIterator[tuple[Server, int, Cdp]]:
    """A server with `make serve`'s settings, the page server, the browser."""
    require_node()
    settings = tomllib.loads(DEV_CONFIG.read_text())
    async with (
        running_server(**settings) as server,
        page_server() as page_port,
        connect(chromium, max_size=None, open_timeout=TIMEOUT) as ws,
        asyncio.timeout(90),  # the DevTools calls have no timeout of their own
    ):
        yield server, page_port, Cdp(ws)


async def test_the_example_page_edits_beside_a_node_provider_and_shows_its_cursor(
    chromium: str,
) -> None:
    room = "browser-demo"
    async with setup(chromium) as (server, page_port, cdp):
        yjs = f"ws://127.0.0.1:{server.port}/v1/yjs"
        async with node_client(yjs, room) as node:
            await node.synced()
            await node.call("insert", index=0, value="héllo 😀 世界")
            user = {"name": "nodé 🐢", "color": "#3cb44b"}
            nid = (await node.call("cursor", anchor=3, head=3, user=user))["client"]
            await asyncio.sleep(0.2)  # the server has the cursor before the page comes

            query = f"room={room}&name=chromium&server={yjs}"
            url = f"http://127.0.0.1:{page_port}/examples/collab/?{query}"
            async with example_page(cdp, url) as page:
                # The late joiner: the document, and the cursor at once.
                joined = await cdp.evaluate(
                    page,
                    f"""new Promise((ok) => {{
                      const seen = () => collab.awareness.meta.get({nid})?.lastUpdated
                      const check = () => seen() && ok({{opened: window.opened, seen: seen()}})
                      check()
                      collab.awareness.on('change', check)
                    }})""",
                )
                assert joined["seen"] - joined["opened"] < 200, joined
                assert await page_texts(cdp, page) == ("héllo 😀 世界",) * 2
                assert await caret_of(cdp, page, nid) == {
                    "label": "nodé 🐢",
                    "index": 3,
                    "listed": "nodé 🐢",
                    "selected": "",
                }

                # Replacing 😀 by 😁 (the same high surrogate) keeps every code point whole.
                await cdp.evaluate(page, "document.getElementById('text').setSelectionRange(6, 8)")
                await cdp.call("Input.insertText", page, text="😁")
                assert await converged(cdp, page, node, server, room) == "héllo 😁 世界"

                # Text inserted before the page's caret moves the caret with its character.
                await cdp.evaluate(page, "document.getElementById('text').setSelectionRange(5, 5)")
                await node.call("insert", index=0, value="¡👋 ")
                assert await converged(cdp, page, node, server, room) == "¡👋 héllo 😁 世界"
                await cdp.call("Input.insertText", page, text="!")
                assert await converged(cdp, page, node, server, room) == "¡👋 héllo! 😁 世界"

                # Both edit at once: the page by typing, Node through its provider.
                await asyncio.gather(
                    node.call("edits", count=300, seed=11, pause=5),
                    type_into_the_page(cdp, page, steps=120, seed=12),
                )
                text = await converged(cdp, page, node, server, room)
                assert "\ufffd" not in text  # no surrogate pair was ever split
                assert any(ord(ch) > 0xFFFF for ch in text), text  # emoji
                assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text  # and CJK

                # The Node client moves: the page shows the caret where it went, at once.
                head = utf16(text[:5])
                sent = time.time() * 1000  # (the command's way to Node is counted too)
                await node.call("cursor", anchor=0, head=head, user=user)
                async with asyncio.timeout(TIMEOUT):
                    while (caret := await caret_of(cdp, page, nid) or {}).get("index") != head:
                        await asyncio.sleep(0.01)
                assert caret["selected"] == text[:5], caret  # the selection is tinted
                shown = await cdp.evaluate(page, f"collab.awareness.meta.get({nid}).lastUpdated")
                assert shown - sent < 200, (sent, shown)

                # The Node process dies: its cursor and name leave the page within 1 s.
                await cdp.evaluate(
                    page,
                    f"""void (window.removed = new Promise((ok) => collab.awareness.on('change',
                          ({{removed}}) => removed.includes({nid}) && ok(Date.now()))))""",
                )
                killed = time.time() * 1000
                await node.kill()
                async with asyncio.timeout(5):
                    removed = await cdp.evaluate(page, "window.removed")
                assert removed - killed < 1000, (killed, removed)
                assert await caret_of(cdp, page, nid) is None
                users = await cdp.evaluate(
                    page, "[...document.querySelectorAll('#users li')].map((li) => li.textContent)"
                )
                assert users == ["chromium (you)"], users
                assert await page_texts(cdp, page) == (text, text)
