"""A real browser on another origin: EventSource, fetch publish and history, WebSocket.

Headless Chromium (`/usr/bin/chromium`, Debian's `chromium` package) loads a
page from a small page server on other ports than the hybridbus server's, and
the page calls the server the way a web application does: an `EventSource`
with `?token=`, `fetch` POST publish with `Authorization: Bearer`, `fetch`
history, a `WebSocket`. The test drives the browser over the Chrome DevTools
Protocol (`Cdp` and the `chromium` fixture of tests/browser.py: `Runtime.evaluate`
with `awaitPromise`) and asserts that everything works from an allowed origin
(`http://localhost:<port>`, allowed by the pattern `http://localhost:*`) and
that the browser blocks everything from a disallowed one
(`http://127.0.0.1:<port>`), the server having published nothing for it.

Without chromium the tests skip, unless HYBRIDBUS_REQUIRE_BROWSER=1 (as CI
sets in .ci/run), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from tests import browser as browsers
from tests.browser import START_TIMEOUT, Cdp, page_server
from tests.servers import TIMEOUT, Server, running_server
from websockets.asyncio.client import connect

pytestmark = pytest.mark.slow
chromium = browsers.chromium  # the fixture: a headless Chromium, its DevTools URL

SECRET = "browser-test-secret-browser-test-secret!"
TENANT = "acme"


# What a web application does. Every step reports instead of throwing.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>hybridbus from another origin</title></head>
<body><script>
function within(ms, promise, otherwise) {
  return Promise.race([promise, new Promise((ok) => setTimeout(() => ok(otherwise), ms))]);
}

async function run(api, ws, token, tenant, tag) {
  const out = {origin: location.origin};
  const pattern = `${tenant}/browser/+`;
  const topic = `${tenant}/browser/${tag}`;
  const auth = {"Authorization": `Bearer ${token}`};

  // 1. Server-sent events: EventSource cannot set headers, so the token is in the query.
  const url = `${api}/v1/sse?pattern=${encodeURIComponent(pattern)}` +
              `&token=${encodeURIComponent(token)}`;
  const es = new EventSource(url);
  const opened = new Promise((ok) => {
    es.addEventListener("subscribed", () => ok("subscribed"));
    es.onerror = () => ok(es.readyState === EventSource.CLOSED ? "closed" : "error");
  });
  const delivered = new Promise((ok) => {
    es.addEventListener("event", (e) => ok(JSON.parse(e.data)));
  });
  out.sse = await within(15000, opened, "timeout");

  // 2. Publish with fetch and a bearer token: a preflighted request.
  const ce = {specversion: "1.0", id: `${tag}-1`, source: "/browser", type: "com.acme.t",
              data: {from: location.origin}};
  try {
    const r = await fetch(`${api}/v1/topics/${topic}/events`, {
      method: "POST",
      headers: {...auth, "Content-Type": "application/cloudevents+json"},
      body: JSON.stringify(ce),
    });
    out.publish = {status: r.status, body: await r.json()};
  } catch (e) {
    out.publish = {error: String(e)};
  }
  out.delivered = out.sse === "subscribed" ? await within(15000, delivered, "timeout") : null;
  es.close();

  // 3. Publish in binary mode: ce-* headers.
  try {
    const r = await fetch(`${api}/v1/topics/${topic}/events`, {
      method: "POST",
      headers: {...auth, "Content-Type": "application/json", "ce-specversion": "1.0",
                "ce-id": `${tag}-2`, "ce-source": "/browser", "ce-type": "com.acme.t"},
      body: JSON.stringify({binary: true}),
    });
    out.binary = {status: r.status};
  } catch (e) {
    out.binary = {error: String(e)};
  }

  // 4. History with fetch.
  try {
    const r = await fetch(`${api}/v1/events?pattern=${encodeURIComponent(pattern)}`,
                          {headers: auth});
    const body = await r.json();
    out.history = {status: r.status, ids: body.events.map((e) => e.event.id)};
  } catch (e) {
    out.history = {error: String(e)};
  }

  // 5. A refusal the page can read: the problem and an exposed header.
  try {
    const r = await fetch(`${api}/v1/events?pattern=${encodeURIComponent(pattern)}`,
                          {headers: {"Authorization": "Bearer not-a-token"}});
    out.refusal = {status: r.status, code: (await r.json()).code,
                   authenticate: r.headers.get("WWW-Authenticate")};
  } catch (e) {
    out.refusal = {error: String(e)};
  }

  // 6. The WebSocket protocol.
  out.ws = await within(15000, new Promise((ok) => {
    const socket = new WebSocket(ws, "hybridbus.v1.json");
    socket.onopen = () => socket.send(JSON.stringify({type: "connect", id: 1, token}));
    socket.onmessage = (m) => { ok(JSON.parse(m.data.split("\\n")[0]).type); socket.close(); };
    socket.onerror = () => ok("error");
  }), "timeout");
  return out;
}
</script></body></html>
"""


def token(sub: str = "ann") -> str:
    now = int(time.time())
    claims = {"sub": sub, "tenantid": TENANT, "roles": ["user"], "iat": now, "exp": now + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def browser_setup(chromium: str) -> AsyncIterator[tuple[Server, int, Cdp]]:
    async with (
        running_server(
            jwt_secret=SECRET,
            anonymous_tenant=None,  # the page's token is needed, and used
            cors_origins=["http://localhost:*"],
            ws_check_origin=True,
        ) as server,
        page_server(PAGE) as page_port,
        connect(chromium, max_size=None, open_timeout=TIMEOUT) as ws,
    ):
        yield server, page_port, Cdp(ws)


@contextlib.asynccontextmanager
async def loaded(cdp: Cdp, url: str) -> AsyncIterator[str]:
    """A new tab at `url`, loaded and its `run` defined: its session id."""
    async with cdp.tab(url) as session:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                with contextlib.suppress(RuntimeError):  # still navigating
                    ready = "document.readyState === 'complete' && typeof run === 'function'"
                    if await cdp.evaluate(session, ready) is True:
                        break
                await asyncio.sleep(0.05)
        yield session


async def run_page(cdp: Cdp, page: str, server: Server, tag: str) -> dict[str, Any]:
    args = json.dumps([server.http, server.url, token(), TENANT, tag])[1:-1]
    async with loaded(cdp, page) as session, asyncio.timeout(60):
        result = await cdp.evaluate(session, f"run({args})")
    assert isinstance(result, dict), result
    return result


async def published_ids(server: Server) -> list[str]:
    page = await server.node.bus.history(f"{TENANT}/browser/+", limit=100)
    return [delivery.event.id for delivery in page.deliveries]


async def test_a_page_on_an_allowed_origin_uses_sse_fetch_and_websocket(chromium: str) -> None:
    async with browser_setup(chromium) as (server, page_port, cdp):
        result = await run_page(cdp, f"http://localhost:{page_port}/", server, "ok")
    assert result["origin"] == f"http://localhost:{page_port}"
    assert result["sse"] == "subscribed", result
    assert result["publish"]["status"] == 201, result
    assert result["publish"]["body"]["acks"][0]["topic"] == f"{TENANT}/browser/ok"
    assert result["delivered"]["id"] == "ok-1", result
    assert result["delivered"]["data"] == {"from": result["origin"]}
    assert result["binary"] == {"status": 201}, result
    assert result["history"] == {"status": 200, "ids": ["ok-1", "ok-2"]}, result
    assert result["refusal"]["status"] == 401, result
    assert result["refusal"]["code"] == 1102, result  # TOKEN_INVALID, read from the body
    assert result["refusal"]["authenticate"], result  # an exposed header
    assert result["ws"] == "reply", result


async def test_a_page_on_a_disallowed_origin_is_blocked(chromium: str) -> None:
    async with browser_setup(chromium) as (server, page_port, cdp):
        result = await run_page(cdp, f"http://127.0.0.1:{page_port}/", server, "evil")
        assert await published_ids(server) == []  # the preflight stopped both publishes
    assert result["origin"] == f"http://127.0.0.1:{page_port}"
    assert result["sse"] == "closed", result  # failed for good: no reconnect
    assert "error" in result["publish"], result  # fetch rejects: TypeError: Failed to fetch
    assert result["delivered"] is None
    assert "error" in result["binary"], result
    assert "error" in result["history"], result
    assert "error" in result["refusal"], result
    assert result["ws"] == "error", result  # refused 403 before the upgrade
