"""The web console end to end, in headless Chromium and Firefox against a real server.

Each browser is driven through tests/browser.py (Chromium over the DevTools protocol,
Firefox ESR over WebDriver BiDi; clicks and typing are DOM events, what the page shows is
read as DOM text); every test runs in both. A user logs in, watches an event published
over HTTP arrive in the live stream (filtered on the server, held while paused), sees a
consumer group with one pending entry and one dead letter, inspects and replays the dead
letter from the page (it is published again), reads the metrics view of a non-admin, logs
out, and logs in again with a token limited to `docs/#`, which sees only those topics and no
groups. An admin sees every view: rates, presence, webhook attempts with a failure, bridges,
a publish from the form, the metrics charts filling. No page may cause a
Content-Security-Policy violation (a `securitypolicyviolation` listener installed before the
page's scripts run; that it sees one is tested too).

With HYBRIDBUS_CONSOLE_SCREENSHOTS=docs/img the tests write the screenshots of docs/console.md
(Chromium's; Firefox's go beside them with a `-firefox` suffix, for comparing by eye).
Without a browser they skip, unless HYBRIDBUS_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from tests import browser as browsers
from tests.browser import Browser, open_page
from tests.gateways.test_console import CLOUDEVENT, bearer, console_server, token
from tests.servers import Server, WsClient, event

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

browser = browsers.browser  # the fixture: a headless Chromium, then a headless Firefox
# Set to a directory (docs/img) to write a PNG of each view: HYBRIDBUS_CONSOLE_SCREENSHOTS=docs/img
SCREENSHOTS = os.environ.get("HYBRIDBUS_CONSOLE_SCREENSHOTS")
# Run before the page's scripts: every Content-Security-Policy violation, kept for the test.
WATCH_CSP = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


class Page:
    """One tab of the console: DOM text, clicks, typing (as DOM events)."""

    def __init__(self, tab: browsers.Page) -> None:
        self.inner = tab

    async def js(self, expression: str) -> Any:
        return await self.inner.eval(expression)

    async def until(self, expression: str, what: str, timeout: float = 20.0) -> Any:
        """The value of `expression` once truthy (polled), else fail naming `what`."""
        try:
            return await browsers.until(self.inner, expression, timeout)
        except TimeoutError:
            text = await self.js("document.body.innerText")
            pytest.fail(
                f"{what}: not within {timeout:g} s in {self.inner.kind}; the page shows:\n"
                f"{text[:3000]}"
            )

    async def text(self, selector: str) -> str:
        found = await self.js(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")
        return str(found)

    async def type(self, selector: str, value: str) -> None:
        await self.js(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" el.value = {json.dumps(value)}; el.dispatchEvent(new Event('input')); }})()"
        )

    async def click(self, selector: str) -> None:
        clicked = await self.js(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return false; el.click(); return true; })()"
        )
        assert clicked, f"nothing to click at {selector}"

    async def click_text(self, selector: str, text: str) -> None:
        """Click the first `selector` element whose text is `text`."""
        clicked = await self.js(
            f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find((e) => e.textContent.trim() === {json.dumps(text)});"
            " if (!el) return false; el.click(); return true; })()"
        )
        assert clicked, f"no {selector} reading {text!r}"

    async def tab(self, view: str) -> None:
        await self.click(f'#tabs button[data-view="{view}"]')
        await self.until(f"!document.getElementById('view-{view}').hidden", f"the {view} view")

    async def screenshot(self, name: str) -> None:
        """docs/img/console-<name>.png when HYBRIDBUS_CONSOLE_SCREENSHOTS names a directory."""
        if not SCREENSHOTS:
            return
        await asyncio.sleep(0.3)  # the last repaint
        suffix = "" if self.inner.kind == "chromium" else f"-{self.inner.kind}"
        path = Path(SCREENSHOTS) / f"console-{name}{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(await self.inner.screenshot())


@asynccontextmanager
async def console_page(browser: Browser, server: Server) -> AsyncIterator[Page]:
    """A new tab at the server's /console/, loaded (its login form shown)."""
    async with open_page(browser, init_script=WATCH_CSP) as tab:
        await tab.goto(f"{server.http}/console/")
        page = Page(tab)
        await browsers.until(tab, "document.body?.dataset.state === 'login'")
        yield page
        violations = await page.js("window.cspViolations")
        assert violations == [], violations  # the page keeps to its own policy


async def test_in_a_browser_the_csp_watch_sees_a_violation(browser: Browser) -> None:
    """What makes the pages' "no violation" meaningful: an inline script is blocked, and seen."""
    async with console_server() as (server, _), open_page(browser, init_script=WATCH_CSP) as tab:
        await tab.goto(f"{server.http}/console/")
        await tab.eval(
            "(() => { const s = document.createElement('script');"
            " s.textContent = 'window.inlineRan = true'; document.head.append(s); })()"
        )
        seen = await Page(tab).until(
            "window.cspViolations.length > 0 && window.cspViolations", "the violation"
        )
        assert seen[0].startswith("script-src") and seen[0].endswith(" inline"), seen
        assert await tab.eval("window.inlineRan") is None  # blocked, not only reported


async def log_in(page: Page, credential: str) -> None:
    await page.type("#token", credential)
    await page.click("#login-go")
    await page.until("document.body.dataset.state === 'ready'", "the console after logging in")


async def http_publish(http: httpx.AsyncClient, credential: str, topic: str, id: str) -> None:
    body = event(id, type="com.acme.order", data={"n": id})
    response = await http.post(
        f"/v1/topics/{topic}/events",
        content=json.dumps(body),
        headers={**CLOUDEVENT, **bearer(credential)},
    )
    assert response.status_code == 201, response.text


async def a_dead_letter_and_a_pending_one(http: httpx.AsyncClient, credential: str) -> None:
    """Group `billing` over acme/orders/#: order-1 termed (a dead letter), order-2 leased."""
    auth = bearer(credential)
    made = await http.put(
        "/v1/groups/billing",
        json={"pattern": "acme/orders/#", "settings": {"start": "earliest", "ack_wait": 300}},
        headers=auth,
    )
    assert made.status_code == 201, made.text
    for n in (1, 2):
        await http_publish(http, credential, f"acme/orders/{n}", f"order-{n}")
    fetched = await http.post("/v1/groups/billing/fetch", json={"max": 2, "wait": 5}, headers=auth)
    deliveries = fetched.json()["deliveries"]
    assert [d["event"]["id"] for d in deliveries] == ["order-1", "order-2"], fetched.text
    termed = await http.post(
        "/v1/groups/billing/term",
        json={"id": deliveries[0]["id"], "reason": "no such customer"},
        headers=auth,
    )
    assert termed.status_code == 204, termed.text


async def test_in_a_browser_log_in_watch_an_event_and_replay_a_dead_letter(
    browser: Browser,
) -> None:
    ann = token("ann")
    async with (
        console_server() as (server, http),
        console_page(browser, server) as page,
    ):
        await a_dead_letter_and_a_pending_one(http, ann)
        await log_in(page, ann)
        assert await page.text("#who") == "ann · tenant acme · user"
        assert await page.js("sessionStorage.getItem('hybridbus.console.token')") == ann

        # Topics: relative to the tenant, with their latest offsets.
        listed = await page.until(
            "document.getElementById('topics-list').innerText.includes('orders/2')"
            " && document.getElementById('topics-list').innerText",
            "the topics",
        )
        assert "acme/" not in listed
        rows = await page.js(
            "[...document.querySelectorAll('#topics-list tbody tr')]"
            ".map((tr) => [...tr.cells].slice(0, 2).map((td) => td.innerText))"
        )
        assert ["orders/1", "1"] in rows and ["orders/2", "1"] in rows, rows

        # The live stream: an event published over HTTP arrives, filtered on the server.
        await page.tab("stream")
        await page.type("#stream-pattern", "orders/#")
        await page.type("#stream-types", "com.acme.order")
        await page.click("#stream-go")
        await page.until(
            "document.getElementById('stream-status').innerText"
            ".startsWith('subscribed to orders/#')",
            "the subscription",
        )
        other = event("not-an-order", type="com.acme.other")
        await server.node.bus.publish("acme/orders/9", other)  # left out by the filter
        await http_publish(http, ann, "acme/orders/3", "live-1")
        await page.until(
            "document.getElementById('stream-rows').innerText.includes('live-1')",
            "the event live-1 in the stream",
        )
        row = await page.js(
            "[...document.querySelector('#stream-rows tr').cells].map((td) => td.innerText)"
        )
        assert row[1:5] == ["orders/3", "1", "com.acme.order", "live-1"], row
        assert '{"n":"live-1"}' in row[5]
        assert "not-an-order" not in await page.text("#stream-rows")
        # Paused, events wait in the buffer; resumed, they are shown.
        await page.click("#stream-pause")
        await http_publish(http, ann, "acme/orders/4", "while-paused")
        await page.until(
            "document.getElementById('stream-status').innerText.includes('1 buffered')",
            "the buffered event",
        )
        assert "while-paused" not in await page.text("#stream-rows")
        await page.click("#stream-pause")
        await page.until(
            "document.getElementById('stream-rows').innerText.includes('while-paused')",
            "the buffered event shown on resume",
        )
        await page.screenshot("stream")

        # Groups: billing with one pending and one dead letter.
        await page.tab("groups")
        await page.until(
            "document.getElementById('groups-list').innerText.includes('billing')", "the group"
        )
        group = await page.js(
            "Object.fromEntries([...document.querySelectorAll('#groups-list tbody tr td')]"
            ".filter((td) => td.className).map((td) => [td.className, td.innerText]))"
        )
        assert group["name"] == "billing", group
        assert group["num pending"] == "1", group
        assert group["num dead"] == "1", group
        await page.click_text("#groups-list button", "pending")
        await page.until(
            "document.getElementById('groups-detail').innerText.includes('orders/2')",
            "the pending entry",
        )
        await page.screenshot("groups")

        # Dead letters: inspect, then replay from the page.
        await page.click_text("#groups-list button", "dead letters")
        await page.until(
            "document.getElementById('dead-list').innerText.includes('no such customer')",
            "the dead letter",
        )
        assert "orders/1" in await page.text("#dead-list")
        await page.click("#dead-list button.inspect")
        await page.until(
            "document.getElementById('dead-detail').innerText.includes('order-1')",
            "the dead letter's event",
        )
        await page.screenshot("dead-letters")
        before = await server.node.bus.history("acme/orders/1", limit=10)
        await page.click("#dead-list button.replay")
        await page.until(
            "document.getElementById('dead-status').innerText.includes('replayed 1')",
            "the replay",
        )
        assert await page.text("#dead-list") == "no dead letters"
        after = await server.node.bus.history("acme/orders/1", limit=10)
        assert len(after.deliveries) == len(before.deliveries) + 1  # published to its topic again
        assert after.deliveries[-1].event.data == {"n": "order-1"}

        # Metrics: a tenant's user does not read the node's counters; the rate of its topics.
        await page.tab("metrics")
        await page.until(
            "document.getElementById('metrics-status').innerText.includes('need an admin token')",
            "the metrics view of a tenant's user",
        )
        assert await page.js("document.querySelectorAll('#view-metrics canvas').length") == 1

        # Logging out forgets the token.
        await page.click("#logout")
        await page.until("document.body.dataset.state === 'login'", "the login form again")
        assert await page.js("sessionStorage.getItem('hybridbus.console.token')") is None
        assert await page.js("window.hybridbusConsole") is None

        # A token limited by rules sees only what they allow: docs/#, no groups.
        await http_publish(http, ann, "acme/docs/7", "doc-7")
        await log_in(page, token("vic", roles=("viewer",)))
        await page.tab("topics")
        await page.until(
            "document.getElementById('topics-list').innerText.includes('docs/7')", "vic's topics"
        )
        assert "orders" not in await page.text("#topics-list")
        await page.tab("groups")
        await page.until(
            "document.getElementById('groups-list').innerText.includes('no groups')",
            "no groups for vic",
        )


@asynccontextmanager
async def webhook_peer() -> AsyncIterator[str]:
    """An HTTP peer for outbound webhooks: 200, or 500 for events whose id has "fail"."""

    async def hook(request: web.Request) -> web.Response:
        failing = "fail" in request.headers.get("ce-id", "")
        return web.Response(status=500 if failing else 200, text="no" if failing else "ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with browsers.serving(app) as port:
        yield f"http://127.0.0.1:{port}/hook"


@asynccontextmanager
async def trickle(http: httpx.AsyncClient, credential: str, topic: str) -> AsyncIterator[None]:
    """Events published to `topic` every 0.2 s while the block runs (a rate to show)."""

    tag = os.urandom(4).hex()

    async def publish() -> None:
        for n in itertools.count():
            await http_publish(http, credential, topic, f"t-{tag}-{n}")
            await asyncio.sleep(0.2)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_in_a_browser_an_admin_sees_every_view(browser: Browser) -> None:
    ann = token("ann")
    ops = token("ops", tenant="ops", roles=(), admin=True)
    async with (
        console_server(webhook_allow_private=True) as (server, http),
        webhook_peer() as hook_url,
        WsClient.open(server.url, token=token("bob", roles=("viewer",))) as bob,
        console_page(browser, server) as page,
    ):
        await page.screenshot("login")
        made = await http.put(
            "/v1/webhooks/outbound/crm",
            json={"pattern": "orders/#", "url": hook_url, "schedule": [0.2], "jitter": 0,
                  "max_deliveries": 2},
            headers=bearer(ann),
        )  # fmt: skip
        assert made.status_code == 201, made.text
        await a_dead_letter_and_a_pending_one(http, ann)
        await http_publish(http, ann, "acme/orders/5", "order-fail-5")
        assert (await bob.request("subscribe", pattern="docs/1"))["type"] == "reply"
        await log_in(page, ops)
        assert await page.text("#who") == "ops · admin"

        # Topics of every tenant, absolute, with rates from two polls.
        await http_publish(http, ann, "acme/docs/1", "doc-1")
        async with trickle(http, ann, "acme/docs/live"):
            await page.until(
                "[...document.querySelectorAll('#topics-list tbody tr')].some((tr) =>"
                " tr.cells[0].innerText === 'acme/docs/live' && Number(tr.cells[2].innerText) > 0)",
                "acme/docs/live with a rate",
            )
            assert "acme/orders/5" in await page.text("#topics-list")
            await page.screenshot("topics")

        # Presence: bob subscribes to docs/1 over the WebSocket protocol.
        await page.js(
            "[...document.querySelectorAll('#topics-list tbody tr')]"
            ".find((tr) => tr.cells[0].innerText === 'acme/docs/1')"
            ".querySelectorAll('button')[1].click()"
        )
        await page.until(
            "document.getElementById('presence-topic').value === 'acme/docs/1'"
            " && document.getElementById('presence-list').innerText.includes('bob')",
            "bob present on acme/docs/1",
        )
        await page.screenshot("presence")

        # Webhooks: the subscription and its attempts, a failure among them.
        await page.tab("webhooks")
        await page.until(
            "document.getElementById('webhooks-list').innerText.includes('order-fail-5')"
            " && document.getElementById('webhooks-list').innerText.includes('delivered')",
            "the webhook's attempts",
        )
        shown = await page.text("#webhooks-list")
        assert "acme/crm" in shown and "failed" in shown and "500" in shown, shown
        await page.screenshot("webhooks")

        await page.tab("bridges")
        await page.until(
            "document.getElementById('bridges-list').innerText.includes('no bridges')",
            "the bridges (none configured)",
        )

        # Publish from the page, over the browser client's WebSocket.
        await page.tab("publish")
        await page.type("#publish-topic", "acme/docs/1")
        await page.type("#publish-data", '{"from": "the console"}')
        await page.click("#publish-go")
        await page.until(
            "document.getElementById('publish-status').innerText.includes('at offset 2')",
            "the publish's ack",
        )
        latest = await server.node.bus.history("acme/docs/1", limit=100)
        assert latest.deliveries[-1].event.data == {"from": "the console"}
        await page.screenshot("publish")

        # Metrics: the node's counters as live charts, while events flow.
        # (the page's own subscription: deliveries, and their latency, to chart)
        await page.tab("stream")
        await page.type("#stream-pattern", "acme/docs/#")
        await page.click("#stream-go")
        await page.until(
            "document.getElementById('stream-status').innerText.startsWith('subscribed')",
            "the admin's subscription",
        )
        await page.tab("metrics")
        async with trickle(http, ann, "acme/docs/1"):
            await page.until(
                "window.hybridbusConsole.views.metrics.charts.latency.samples"
                ".filter(([, v]) => v[0] !== null).length >= 2",
                "latency percentiles from two polls of /v1/stats",
                timeout=30,
            )
            await page.screenshot("metrics")
        assert "t-" in await page.text("#stream-rows")
        rates = await page.js("window.hybridbusConsole.views.metrics.charts.rate.samples")
        assert any(values[0] > 0 for _, values in rates), rates  # events were published
        connections = await page.js("window.hybridbusConsole.views.metrics.charts.connections.last")
        assert connections[0] >= 2, connections  # bob's and the page's WebSockets
        assert "node counters" in await page.text("#metrics-status")
