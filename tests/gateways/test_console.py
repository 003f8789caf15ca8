"""The web console (gateways/console.py, src/hybridbus/console/) over HTTP, against a real server.

The page and its modules are served with a strict Content-Security-Policy and `nosniff`,
`index.html` never cached, nothing outside the console's directories (no `..`, no dot files,
no other suffixes); every data route the console calls answers 401 without a token; a token
limited by rules sees only its topics, and the node's counters (`/v1/stats`) only with an
admin token; with `ws_check_origin` on (as in every test here), a WebSocket upgrade from the
server's own origin (the console's page) is let through, others are not.

The console in a browser: tests/gateways/test_console_browser.py (which starts its servers
with `console_server` and mints its tokens with `token`, from here).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from tests.servers import JSON, TIMEOUT, Server, event, running_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hybridbus.gateways.console import CONTENT_SECURITY_POLICY, client_dir, console_dir
from hybridbus.server.keys import KeySpec
from hybridbus.server.tokens import mint

pytestmark = pytest.mark.timeout(60)

SECRET = "console-test-secret-console-test-secret!"
KEY = KeySpec(alg="HS256", secret=SECRET)
CLOUDEVENT = {"content-type": "application/cloudevents+json"}
ROLES = {
    "user": [{"allow": "*", "topics": "#"}],
    "viewer": [{"allow": ["subscribe", "history", "presence"], "topics": "docs/#"}],
}
# Every route the console reads its figures from.
DATA_ROUTES = [
    "/v1/whoami",
    "/v1/stats",
    "/v1/topics?prefix=acme/",
    "/v1/events?pattern=acme/%23",
    "/v1/topics/acme/docs/1/presence",
    "/v1/groups",
    "/v1/groups/billing/dead-letters",
    "/v1/webhooks/outbound",
    "/v1/bridges",
]


def token(sub: str = "ann", tenant: str = "acme", roles: tuple[str, ...] = ("user",),
          admin: bool = False) -> str:  # fmt: skip
    return mint(KEY, sub=sub, tenant=tenant, roles=roles, ttl=600, admin=admin)


@asynccontextmanager
async def console_server(**settings: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """A server that lets nobody in without a token, and a client without credentials."""
    settings.setdefault("anonymous_tenant", None)
    settings.setdefault("jwt_secret", SECRET)
    settings.setdefault("roles", ROLES)
    settings.setdefault("ws_check_origin", True)  # the console's own origin needs no listing
    async with (
        running_server(**settings) as server,
        httpx.AsyncClient(base_url=server.http, timeout=30.0) as http,
    ):
        yield server, http


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def assert_secured(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    policy = dict(
        ([*part.strip().split(" ", 1), ""])[:2] for part in CONTENT_SECURITY_POLICY.split(";")
    )
    assert policy["script-src"] == "'self'"  # no inline script, no eval, no other origin
    assert policy["connect-src"] == "'self' ws: wss:"
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


async def test_the_page_is_served_with_its_security_headers_and_never_cached() -> None:
    async with console_server() as (_, http):
        moved = await http.get("/console")
        assert moved.status_code == 308
        assert moved.headers["location"] == "/console/"
        page = await http.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-store"
        assert "etag" not in page.headers
        assert_secured(page)
        html = page.text
        assert '<script type="module" src="app.js"></script>' in html
        assert "<script>" not in html and " on" + "click=" not in html  # nothing inline
        assert "style=" not in html and "<style" not in html
        followed = await http.get("/console", follow_redirects=True)
        assert followed.text == html


async def test_the_modules_and_the_stylesheet_are_served_and_revalidated() -> None:
    own = sorted(
        p.relative_to(console_dir()).as_posix()
        for p in console_dir().rglob("*")
        if p.suffix in (".js", ".css")
    )
    assert {"app.js", "api.js", "chart.js", "dom.js", "style.css", "views/stream.js"} <= set(own)
    async with console_server() as (_, http):
        for name in own:
            response = await http.get(f"/console/{name}")
            assert response.status_code == 200, name
            assert_secured(response)
            expected = "text/css" if name.endswith(".css") else "text/javascript"
            assert response.headers["content-type"] == f"{expected}; charset=utf-8"
            assert response.content == (console_dir() / name).read_bytes()
            assert response.headers["cache-control"] == "no-cache"
            again = await http.get(
                f"/console/{name}", headers={"If-None-Match": response.headers["etag"]}
            )
            assert again.status_code == 304, name
            assert again.content == b""


async def test_the_browser_client_is_served_from_its_single_copy() -> None:
    modules = sorted(p.name for p in client_dir().glob("*.js"))
    if not modules:
        pytest.skip(f"no browser client in {client_dir()} yet")
    assert client_dir().parts[-3:] == ("clients", "js", "src") or client_dir().parts[-2:] == (
        "console",
        "client",
    )
    async with console_server() as (_, http):
        for name in modules:
            response = await http.get(f"/console/client/{name}")
            assert response.status_code == 200, name
            assert response.content == (client_dir() / name).read_bytes()
            assert response.headers["content-type"] == "text/javascript; charset=utf-8"
            assert_secured(response)


@pytest.mark.parametrize(
    "path",
    [
        "/console/../pyproject.toml",
        "/console/%2E%2E/%2E%2E/pyproject.toml",
        "/console/views/../../gateways/console.py",
        "/console/..%2Fgateways%2Fconsole.py",
        "/console/client/../../../../pyproject.toml",
        "/console/client/..%2F..%2F..%2F..%2Fpyproject.toml",
        "/console/.hidden.js",
        "/console/nothing-here.js",
        "/console/index.py",
        "/console/views/",
        "/console/client/",
    ],
)
async def test_nothing_outside_the_console_files_is_served(path: str) -> None:
    async with console_server() as (_, http):
        response = await http.get(path)
    assert response.status_code == 404, (path, response.text[:200])
    assert "import" not in response.text and "[project]" not in response.text


async def test_no_data_route_answers_without_a_token() -> None:
    async with console_server() as (server, http):
        await server.node.bus.publish("acme/docs/1", event())
        for path in DATA_ROUTES:
            response = await http.get(path)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "acme/docs/1" not in response.text
            bad = await http.get(path, headers=bearer("not-a-token"))
            assert bad.status_code == 401, (path, bad.text)
        # The static files hold no data: the page is the same whatever the log holds.
        page = await http.get("/console/")
        assert "acme" not in page.text


async def test_a_token_limited_by_rules_sees_only_its_topics() -> None:
    async with console_server() as (server, http):
        for topic in ("acme/docs/1", "acme/docs/2", "acme/secret/3", "globex/docs/4"):
            await server.node.bus.publish(topic, event())
        viewer = bearer(token("vic", roles=("viewer",)))
        who = await http.get("/v1/whoami", headers=viewer)
        assert who.status_code == 200, who.text
        assert who.json() == {
            "tenant": "acme",
            "user": "vic",
            "roles": ["viewer"],
            "admin": False,
            "anonymous": False,
            "expires": who.json()["expires"],
        }
        assert who.json()["expires"] > 0
        listed = await http.get("/v1/topics", params={"prefix": "acme/"}, headers=viewer)
        assert listed.status_code == 200, listed.text
        assert [t["topic"] for t in listed.json()["topics"]] == ["acme/docs/1", "acme/docs/2"]
        other = await http.get("/v1/topics", params={"prefix": "globex/"}, headers=viewer)
        assert other.status_code == 403
        refused = await http.get("/v1/stats", headers=viewer)
        assert refused.status_code == 403  # the node's counters span every tenant
        assert refused.json()["code"] == 1110
        tenant_user = await http.get("/v1/stats", headers=bearer(token()))
        assert tenant_user.status_code == 403
        full = await http.get("/v1/topics", params={"prefix": "acme/"}, headers=bearer(token()))
        assert [t["topic"] for t in full.json()["topics"]] == [
            "acme/docs/1",
            "acme/docs/2",
            "acme/secret/3",
        ]


async def test_an_admin_reads_the_node_counters() -> None:
    async with console_server() as (server, http):
        admin = bearer(token("ops", tenant="ops", roles=(), admin=True))
        before = await http.get("/v1/stats", headers=admin)
        assert before.status_code == 200, before.text
        body = before.json()
        assert set(body) >= {
            "time", "connections", "subscriptions", "publishes", "deliveries", "errors",
            "drops", "disconnects", "webhook_attempts", "webhook_refused", "latency",
        }  # fmt: skip
        assert [le for le, _ in body["latency"]["buckets"]][-1] == "+Inf"
        for _ in range(3):
            response = await http.post(
                "/v1/topics/acme/docs/1/events",
                content=json.dumps(event()),
                headers={**CLOUDEVENT, **bearer(token())},
            )
            assert response.status_code == 201, response.text
        after = (await http.get("/v1/stats", headers=admin)).json()
        assert after["publishes"] == body["publishes"] + 3
        assert after["publishes"] == server.sample("hybridbus_publishes_total", gateway="http")
        assert after["time"] >= body["time"]
        who = (await http.get("/v1/whoami", headers=admin)).json()
        assert who["admin"] is True


async def upgrade_status(server: Server, origin: str) -> int:
    """101 if a WebSocket upgrade from a page of `origin` was let through, else its status."""
    try:
        async with connect(
            server.url,
            subprotocols=[JSON],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
        ):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_the_console_may_open_its_websocket_when_upgrades_check_their_origin() -> None:
    # The console is served by the server itself: its page's origin is the server's own,
    # which `cors_origins` need not list. Pages of other origins are still refused.
    async with console_server() as (server, _):
        assert await upgrade_status(server, server.http) == 101
        assert await upgrade_status(server, f"http://localhost:{server.port}") == 403
        assert await upgrade_status(server, "http://127.0.0.1:1") == 403
        assert await upgrade_status(server, f"https://127.0.0.1:{server.port}") == 403
