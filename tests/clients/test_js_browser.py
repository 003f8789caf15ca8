"""The JavaScript client (clients/js) in headless Chromium and Firefox, against a real server.

A small aiohttp page server serves a page and clients/js/src/ as it is, at
/client/: the page imports /client/index.js as an ES module (no bundler, no
import map), as the console does. Each test runs in both browsers of tests/browser.py
(Chromium over the DevTools protocol, Firefox ESR over WebDriver BiDi); the page
reports back through the value of a script evaluated in it. The server is tests/clients/harness.py's
(sqlite, JWT tokens, a TCP proxy the test cuts).

1. The page connects with a token, subscribes, publishes a burst and receives it
   in order, reads history and presence, and sees a refusal's code.
2. Drop and recover: the page's connection goes through the proxy; the test cuts
   it and holds it down while the server takes more events from a Python client,
   then lets it back: the page has every event once, in order, and continued
   its session.

Without a browser the tests skip, unless HYBRIDBUS_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests import browser as browsers
from tests.browser import Browser, Page, open_page, page_server
from tests.clients.harness import CLIENT, Harness, js_harness, mint
from tests.servers import event

import hybridbus.client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
browser = browsers.browser  # the fixture: a headless Chromium, then a headless Firefox

# The page: what a web application does with the client. Every function reports, never throws.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>hybridbus client</title></head>
<body><script type="module">
import { Client, HybridbusError } from "/client/index.js";

window.got = [];
window.states = [];

window.run = async (url, token, topic) => {
  const out = {};
  const client = new Client(url, { token, reconnect: { base: 20, max: 300 } });
  client.on("state", (s) => window.states.push(s));
  out.info = await client.connect();
  const sub = client.subscribe(`${topic}/+`);
  out.ready = await sub.ready;
  const burst = [];
  for (let n = 0; n < 20; n++) burst.push({ id: `b-${n}`, type: "com.acme.t", data: { n } });
  const acks = await Promise.all(burst.map((e, n) => client.publish(`${topic}/${n % 2}`, e)));
  out.duplicates = acks.filter((a) => a.duplicate).length;
  const received = [];
  for await (const ev of sub) {
    received.push([ev.topic, ev.offset, ev.event.id, ev.token]);
    if (received.length === burst.length) break;  // leaving the loop unsubscribes
  }
  out.received = received;
  out.lastToken = acks.at(-1).token;
  out.history = (await client.history(`${topic}/+`, { limit: 5 })).events.map((e) => e.event.id);
  const room = client.subscribe(`${topic}/room`);
  await room.ready;
  out.presence = (await client.presence(`${topic}/room`)).clients.map((c) => c.user);
  try {
    await client.publish(`${topic}/+`, { type: "t" });
    out.refusal = null;
  } catch (e) {
    out.refusal = { hybridbus: e instanceof HybridbusError, code: e.code, message: e.message };
  }
  await client.close();
  out.states = window.states;
  return out;
};

window.begin = async (url, token, pattern) => {
  window.client = new Client(url, { token, reconnect: { base: 20, max: 300 } });
  window.client.on("state", (s) => window.states.push(s));
  await window.client.connect();
  const sub = window.client.subscribe(pattern, { onEvent: (ev) => window.got.push(ev.event.id) });
  await sub.ready;
  return window.client.state;
};
</script></body></html>
"""


@contextlib.asynccontextmanager
async def loaded(browser: Browser, data: Path) -> AsyncIterator[tuple[Harness, Page]]:
    """The harness and a tab with the page loaded (its module run)."""
    async with (
        js_harness(data) as harness,
        page_server(PAGE, {"/client/": CLIENT / "src"}) as port,
        open_page(browser) as page,
    ):
        await page.goto(f"http://127.0.0.1:{port}/")
        await browsers.until(page, "typeof window.begin === 'function'")  # the module ran
        yield harness, page


def call(function: str, *args: Any) -> str:
    return f"{function}({json.dumps(list(args))[1:-1]})"


async def test_the_page_connects_subscribes_publishes_and_reads(
    browser: Browser, tmp_path: Path
) -> None:
    async with loaded(browser, tmp_path / "data") as (harness, page):
        async with asyncio.timeout(60):
            out = await page.eval(call("run", harness.url, mint("ann"), "web"))
    assert out["info"]["tenant"] == "acme", out
    assert out["ready"]["recovered"] is True
    assert out["duplicates"] == 0
    received = out["received"]
    assert [r[2] for r in received] == [f"b-{n}" for n in range(20)]
    assert [(r[0], r[1]) for r in received] == [(f"web/{n % 2}", n // 2 + 1) for n in range(20)]
    assert received[-1][3] == out["lastToken"]
    assert out["history"] == [f"b-{n}" for n in range(5)]
    assert out["presence"] == ["ann"]
    assert out["refusal"] == {
        "hybridbus": True,
        "code": 1002,
        "message": out["refusal"]["message"],
    }
    assert out["refusal"]["message"].startswith("1002 INVALID_TOPIC: "), out
    assert out["states"] == ["connecting", "connected", "closed"]


async def test_the_page_recovers_exactly_after_its_connection_drops(
    browser: Browser, tmp_path: Path
) -> None:
    async with (
        loaded(browser, tmp_path / "data") as (harness, page),
        hybridbus.client.connect(harness.url, token=mint("pub")) as publisher,
    ):
        proxy = harness.proxy
        assert proxy is not None
        state = await page.eval(call("begin", harness.proxy_url, mint("ann"), "d/+"))
        assert state == "connected"
        await publisher.publish_many("d/1", [event(f"e{n}") for n in range(5)])
        await until(page, "window.got.length === 5")
        proxy.hold()  # the network goes away, and stays away for now
        await until(page, "window.client.state === 'reconnecting'")
        for n in range(5, 30):
            await publisher.publish(f"d/{n % 3}", event(f"e{n}"))
        proxy.resume()
        await until(page, "window.got.length >= 30 && window.client.state === 'connected'")
        await publisher.publish("d/1", event("e30"))
        await until(page, "window.got.length >= 31")
        await asyncio.sleep(0.2)  # anything repeated would arrive by now
        got = await page.eval("window.got")
        resumes = await page.eval("window.client.resumes")
        states = await page.eval("window.states")
        await page.eval("window.client.close()")
    assert got == [f"e{n}" for n in range(31)]
    assert resumes == 1  # the session continued
    assert states[:4] == ["connecting", "connected", "reconnecting", "connected"]


async def until(page: Page, condition: str, timeout: float = 15.0) -> None:
    """Wait until a JavaScript expression holds in the page."""
    async with asyncio.timeout(timeout):
        while await page.eval(condition) is not True:
            await asyncio.sleep(0.05)
