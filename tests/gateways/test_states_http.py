"""State documents over HTTP with curl-like requests (aiohttp client): GET the document and
its ETag, PATCH with application/merge-patch+json, If-Match as compare-and-set (412), and the
WebSocket subscriber sees the HTTP patch."""

from __future__ import annotations

import aiohttp
from tests.servers import WsClient, running_server

MERGE = {"content-type": "application/merge-patch+json"}


async def test_get_patch_and_if_match() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as ws,
        aiohttp.ClientSession(server.http) as http,
    ):
        await ws.request("state_subscribe", topic="boards/7")
        async with http.get("/v1/states/acme/boards/7") as got:
            assert got.status == 200 and got.headers["ETag"] == '"0"'
            assert await got.json() == {"topic": "acme/boards/7", "version": 0, "document": {}}
        body = b'{"title": "Q3", "cards": ["a"]}'
        async with http.patch("/v1/states/acme/boards/7", data=body, headers=MERGE) as patched:
            assert patched.status == 200 and (await patched.json())["version"] == 1
        push = await ws.push("state")
        assert push["version"] == 1 and push["patch"] == {"title": "Q3", "cards": ["a"]}
        stale = {**MERGE, "If-Match": '"0"'}
        async with http.patch("/v1/states/acme/boards/7", data=b'{"a":1}', headers=stale) as lost:
            assert lost.status == 412
            problem = await lost.json()
            assert problem["code"] == 1640 and problem["version"] == 1
        fresh = {**MERGE, "If-Match": '"1"'}
        body = b'{"title": null}'
        async with http.patch("/v1/states/acme/boards/7", data=body, headers=fresh) as won:
            assert won.status == 200 and won.headers["ETag"] == '"2"'
        async with http.get("/v1/states/acme/boards/7") as got:
            assert (await got.json())["document"] == {"cards": ["a"]}
        wrong = {"content-type": "application/json"}
        async with http.patch("/v1/states/acme/boards/7", data=b"{}", headers=wrong) as refused:
            assert refused.status == 415
        async with http.get("/v1/states/other/boards/7") as foreign:
            assert foreign.status == 403  # another tenant's document


async def test_a_patch_nested_past_what_json_decodes_is_400_and_changes_nothing() -> None:
    async with running_server() as server, aiohttp.ClientSession(server.http) as http:
        deep = b"[" * 100_000 + b"]" * 100_000  # msgspec: RecursionError, was a 500
        async with http.patch("/v1/states/acme/deep", data=deep, headers=MERGE) as refused:
            assert refused.status == 400
            assert (await refused.json())["code"] == 1000
        async with http.get("/v1/states/acme/deep") as got:
            assert (await got.json())["version"] == 0
