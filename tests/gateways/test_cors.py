"""CORS over real HTTP, and the Origin check of WebSocket upgrades.

A real server (`running_server`), real clients: aiohttp's for preflights and
headers, `curl` once as a browser-less peer, `websockets` (which sends any
`Origin` asked of it) for upgrades. The browser itself is test_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.servers import JSON, TIMEOUT, Server, event, running_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from hybridbus.core.cors import EXPOSED_HEADERS
from hybridbus.errors import ErrorCode, InvalidInput
from hybridbus.server.config import load_config

ALLOWED = "http://localhost:5173"
DISALLOWED = "http://evil.example"
LOCAL = ["http://localhost:*", "http://127.0.0.1:*"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vary(headers: Any) -> set[str]:
    return {v.strip().lower() for line in headers.getall("Vary", []) for v in line.split(",")}


def concrete(path: str) -> str:
    """A path of a route, its `{topic}` and other `{name}` parts filled in."""
    head, _, tail = path.partition("{topic")
    path = head + "acme/docs/1" + tail.partition("}")[2] if _ else path
    return re.sub(r"\{[^}]*\}", "x", path)


def v1_routes(server: Server) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route under /v1 (the WebSocket endpoint aside)."""
    found = set()
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/v1/") and path != "/v1/ws" and route.method not in ("HEAD", "OPTIONS"):
            found.add((route.method, concrete(path)))
    return sorted(found)


async def preflight(
    server: Server,
    path: str,
    method: str,
    origin: str | None = ALLOWED,
    headers: str | None = None,
) -> aiohttp.ClientResponse:
    sent = {"Access-Control-Request-Method": method}
    if origin is not None:
        sent["Origin"] = origin
    if headers is not None:
        sent["Access-Control-Request-Headers"] = headers
    async with aiohttp.ClientSession() as session:
        response = await session.options(server.http + path, headers=sent)
        await response.read()
        return response


async def request(
    server: Server, method: str, path: str, origin: str | None = ALLOWED, **kwargs: Any
) -> aiohttp.ClientResponse:
    headers = dict(kwargs.pop("headers", {}))
    if origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as session:
        response = await session.request(method, server.http + path, headers=headers, **kwargs)
        await response.read()
        return response


# -- preflight --------------------------------------------------------------------------------


async def test_every_v1_route_answers_a_preflight_of_an_allowed_origin() -> None:
    async with running_server(cors_origins=LOCAL) as server:
        routes = v1_routes(server)
        # The HTTP API's routes, SSE and revocations: if one is added, it is here too.
        assert {path for _, path in routes} >= {
            "/v1/topics/acme/docs/1/events",
            "/v1/topics/acme/docs/1/presence",
            "/v1/topics",
            "/v1/events",
            "/v1/sse",
            "/v1/openapi.json",
            "/v1/revocations",
        }
        for method, path in routes:
            response = await preflight(
                server, path, method, headers="authorization, content-type, x-api-key"
            )
            assert response.status == 204, (method, path, response.status)
            headers = response.headers
            assert headers["Access-Control-Allow-Origin"] == ALLOWED
            assert method in headers["Access-Control-Allow-Methods"].split(", ")
            assert (
                headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-api-key"
            )
            assert int(headers["Access-Control-Max-Age"]) > 0
            assert vary(headers) == {
                "origin",
                "access-control-request-method",
                "access-control-request-headers",
            }
            assert "Access-Control-Allow-Credentials" not in headers


async def test_a_preflight_grants_binary_mode_and_resume_headers() -> None:
    asked = "ce-specversion, ce-id, ce-source, ce-type, content-type, last-event-id"
    async with running_server(cors_origins=LOCAL) as server:
        response = await preflight(server, "/v1/topics/acme/x/events", "POST", headers=asked)
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Headers"] == asked
        assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
        response = await preflight(
            server, "/v1/sse?pattern=acme/%23", "GET", origin="http://127.0.0.1:3000"
        )
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:3000"
        assert "Access-Control-Allow-Private-Network" not in response.headers
        # Chromium asks before a public page calls a private address: an allowed origin may.
        async with aiohttp.ClientSession() as session:
            response = await session.options(
                server.http + "/v1/events",
                headers={
                    "Origin": ALLOWED,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Private-Network": "true",
                },
            )
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize(
    ("origin", "method", "headers", "reason"),
    [
        (DISALLOWED, "POST", None, "origin 'http://evil.example' is not allowed"),
        ("https://localhost:5173", "POST", None, "is not allowed"),
        ("null", "POST", None, "origin 'null' is not allowed"),
        (ALLOWED, "DELETE", None, "method DELETE is not allowed"),
        (ALLOWED, "POST", "content-type, x-custom", "header x-custom is not allowed"),
    ],
)
async def test_a_preflight_is_refused_with_a_problem_and_no_grant(
    origin: str, method: str, headers: str | None, reason: str
) -> None:
    async with running_server(cors_origins=LOCAL) as server:
        response = await preflight(server, "/v1/topics/acme/x/events", method, origin, headers)
        assert response.status == 403
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert problem["code"] == ErrorCode.FORBIDDEN
        assert reason in problem["detail"]
        if origin != ALLOWED:
            assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Methods" not in response.headers


async def test_without_cors_origins_a_preflight_is_refused_and_nothing_is_granted() -> None:
    async with running_server() as server:
        response = await preflight(server, "/v1/events", "GET")
        assert response.status == 403
        assert "cors_origins" in (await response.json())["detail"]
        response = await request(server, "GET", "/v1/events?pattern=acme/%23")
        assert response.status == 200
        assert not any(h.startswith("Access-Control-") for h in response.headers)


async def test_options_that_is_not_a_preflight_and_unknown_paths_are_left_alone() -> None:
    async with running_server(cors_origins=LOCAL) as server:
        response = await request(server, "OPTIONS", "/v1/events")  # no Request-Method
        assert response.status == 405
        response = await preflight(server, "/v1/nowhere", "GET")
        assert response.status == 404
        response = await preflight(server, "/healthz", "GET")
        assert response.status == 405
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_curl_sees_a_preflight_answered() -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with running_server(cors_origins=LOCAL) as server:
        process = await asyncio.create_subprocess_exec(
            curl, "-s", "-i", "-X", "OPTIONS",
            "-H", f"Origin: {ALLOWED}",
            "-H", "Access-Control-Request-Method: POST",
            "-H", "Access-Control-Request-Headers: authorization, content-type",
            f"{server.http}/v1/topics/acme/docs/1/events",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            out, _ = await process.communicate()
        head = out.decode().lower()
        assert head.startswith("http/1.1 204"), head
        assert f"access-control-allow-origin: {ALLOWED}" in head
        assert "access-control-allow-headers: authorization, content-type" in head


# -- actual requests --------------------------------------------------------------------------


async def test_responses_to_an_allowed_origin_grant_it_and_expose_headers() -> None:
    async with running_server(cors_origins=LOCAL) as server:
        body = json.dumps(event(id="e1")).encode()
        publish = await request(
            server,
            "POST",
            "/v1/topics/acme/docs/1/events",
            data=body,
            headers={"Content-Type": "application/cloudevents+json"},
        )
        history = await request(server, "GET", "/v1/events?pattern=acme/%23")
        topics = await request(server, "GET", "/v1/topics?prefix=acme/")
        for response in (publish, history, topics):
            assert response.status in (200, 201), response.status
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
            exposed = response.headers["Access-Control-Expose-Headers"].split(", ")
            assert set(exposed) == set(EXPOSED_HEADERS)
            assert {"Retry-After", "Location"} <= set(exposed)
            assert "origin" in vary(response.headers)


async def test_error_responses_grant_the_origin_too_so_a_page_reads_the_problem() -> None:
    async with running_server(cors_origins=LOCAL, anonymous_tenant=None) as server:
        response = await request(server, "GET", "/v1/events?pattern=acme/%23")
        assert response.status == 401
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    async with running_server(cors_origins=LOCAL, publish_rate=0.001, publish_burst=1) as server:
        body = json.dumps([event(), event()]).encode()
        response = await request(
            server,
            "POST",
            "/v1/topics/acme/docs/1/events",
            data=body,
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert response.status == 429
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_a_disallowed_or_absent_origin_is_not_granted_but_varies() -> None:
    async with running_server(cors_origins=LOCAL) as server:
        for origin in (DISALLOWED, None):
            response = await request(server, "GET", "/v1/topics?prefix=acme/", origin=origin)
            assert response.status == 200  # browsers enforce CORS: the server does not refuse
            assert "Access-Control-Allow-Origin" not in response.headers
            assert "origin" in vary(response.headers)
        health = await request(server, "GET", "/healthz")
        assert "Access-Control-Allow-Origin" not in health.headers


async def test_an_sse_stream_grants_an_allowed_origin_in_its_headers() -> None:
    async with (
        running_server(cors_origins=LOCAL) as server,
        aiohttp.ClientSession() as session,
        session.get(
            server.http + "/v1/sse?pattern=acme/%23", headers={"Origin": ALLOWED}
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "origin" in vary(response.headers)
        async with asyncio.timeout(TIMEOUT):
            assert await response.content.readline() == b": hybridbus\n"


# -- the Origin of WebSocket upgrades ---------------------------------------------------------


async def ws_status(server: Server, origin: str | None) -> int:
    """101 if the upgrade with `origin` succeeded and a connect was answered, else its status."""
    try:
        async with connect(
            server.url,
            subprotocols=[JSON],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
        ) as ws:
            await ws.send('{"type":"connect","id":1}')
            async with asyncio.timeout(TIMEOUT):
                reply = json.loads(await ws.recv())
            assert reply["type"] == "reply", reply
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_ws_check_origin_refuses_a_browser_origin_not_in_the_list() -> None:
    async with running_server(cors_origins=LOCAL, ws_check_origin=True) as server:
        assert await ws_status(server, ALLOWED) == 101
        assert await ws_status(server, "http://127.0.0.1:8000") == 101
        assert await ws_status(server, None) == 101  # not a browser
        assert await ws_status(server, DISALLOWED) == 403
        assert await ws_status(server, "null") == 403
        assert await ws_status(server, "https://localhost:5173") == 403


async def test_ws_check_origin_with_no_origins_refuses_every_browser() -> None:
    async with running_server(ws_check_origin=True) as server:
        assert await ws_status(server, ALLOWED) == 403
        assert await ws_status(server, None) == 101


async def test_without_ws_check_origin_any_origin_may_upgrade() -> None:
    async with running_server(cors_origins=LOCAL) as server:
        assert await ws_status(server, DISALLOWED) == 101


# -- configuration ----------------------------------------------------------------------------


def test_the_dev_config_allows_localhost_pages_only() -> None:
    config = load_config(EXAMPLES / "dev.toml")
    assert "http://localhost:*" in config.cors_origins
    assert "http://127.0.0.1:*" in config.cors_origins
    assert config.ws_check_origin is False


def test_the_defaults_allow_no_origin_and_check_no_upgrade() -> None:
    config = load_config()
    assert config.cors_origins == []
    assert config.ws_check_origin is False


def test_a_bad_origin_pattern_is_refused_at_load_naming_the_setting(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text('cors_origins = ["http://localhost:*", "localhost:3000"]\n')
    with pytest.raises(InvalidInput, match="cors_origins"):
        load_config(file)
    config = load_config(env={"HYBRIDBUS_WS_CHECK_ORIGIN": "true"})
    assert config.ws_check_origin is True


async def test_ws_check_origin_holds_for_the_yjs_endpoint_too() -> None:
    """Every WebSocket way in: a Yjs socket from a page not allowed is refused before upgrading."""
    import aiohttp

    async with running_server(cors_origins=LOCAL, ws_check_origin=True) as server:

        async def status(origin: str | None) -> int:
            headers = {"Origin": origin} if origin else {}
            url = f"ws://127.0.0.1:{server.port}/v1/yjs/room1"
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(url, headers=headers):
                        return 101
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        assert await status(ALLOWED) == 101
        assert await status(None) == 101  # not a browser
        assert await status(DISALLOWED) == 403
