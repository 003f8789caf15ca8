"""`GET /v1/nodes` against the real server: who may list the nodes, the answer, a lost registry.

The servers run on loopback ports (`tests.servers.running_server`); the
shared registry is a real redis-server (tests/services).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.servers import Server, WsClient, running_server
from tests.services import RedisServer

from hybridbus.serve import REGISTRY_KEY
from hybridbus.server.access import new_api_key
from hybridbus.server.registry import fingerprint

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"
ADMIN_KEY, ADMIN_HASH = new_api_key()
ACME_KEY, ACME_HASH = new_api_key()  # role "user": everything in tenant acme
KEYS = [
    {"name": "ops", "hash": ADMIN_HASH, "admin": True},
    {"name": "acme-app", "hash": ACME_HASH, "tenant": "acme", "roles": ["user"]},
]


async def get(server: Server, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=server.http, timeout=10.0) as http:
        return await http.get("/v1/nodes", headers=headers)


def refused(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    said = response.json()
    assert said["code"] == code, said
    return said


async def test_only_admins_list_the_nodes() -> None:
    async with running_server(api_keys=KEYS, anonymous_tenant=None) as server:
        refused(await get(server), 401, 1100)  # no credentials
        refused(await get(server, "hb_not-a-key"), 401, 1100)
        said = refused(await get(server, ACME_KEY), 403, 1110)  # a tenant's caller
        assert "admin" in said["detail"]
        assert (await get(server, ADMIN_KEY)).status_code == 200

    async with running_server(api_keys=KEYS) as server:  # anonymous callers in acme
        refused(await get(server), 403, 1110)


async def test_the_answer_lists_this_node_with_a_local_registry() -> None:
    async with running_server(api_keys=KEYS, node_id="here", engine="memory://") as server:
        server.app[REGISTRY_KEY].listening([("127.0.0.1", server.port)])
        async with WsClient.open(server.url):  # one connection: shown at once
            response = await get(server, ADMIN_KEY)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        answer = response.json()
        assert answer["node"] == "here"
        assert answer["registry"] == "local"
        (node,) = answer["nodes"]
        assert node["id"] == "here"
        assert node["addresses"] == [f"127.0.0.1:{server.port}"]
        assert node["hostname"] == socket.gethostname()
        assert node["pid"] == os.getpid()
        assert node["engine"] == "memory://"
        assert node["fingerprint"] == fingerprint(server.node.config)
        assert node["connections"] == 1
        assert node["ttl"] == 10.0
        assert node["started"] <= node["heartbeat"]
        assert set(node) == {
            "id", "addresses", "hostname", "pid", "version", "engine", "fingerprint",
            "started", "heartbeat", "ttl", "connections",
        }  # fmt: skip


async def test_nodes_sharing_a_redis_registry_see_each_other(
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    shared = {"api_keys": KEYS, "registry": redis.url, "registry_ttl": 1.0}
    async with (
        running_server(node_id="one", **shared) as one,
        running_server(node_id="two", **shared) as two,
    ):
        async with asyncio.timeout(10):
            while len((await get(one, ADMIN_KEY)).json()["nodes"]) < 2:
                await asyncio.sleep(0.05)
        answer = (await get(two, ADMIN_KEY)).json()
        assert answer["node"] == "two"
        assert answer["registry"] == "redis"
        assert [node["id"] for node in answer["nodes"]] == ["one", "two"]
    # Both shut down gracefully: deregistered.


async def test_an_unreachable_registry_answers_503_and_the_node_keeps_serving(
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    redis.stop()
    async with running_server(api_keys=KEYS, registry=redis.url, registry_ttl=1.0) as server:
        response = await get(server, ADMIN_KEY)
        said = refused(response, 503, 1310)
        assert said["retriable"] is True
        assert "registry" in said["detail"]
        assert response.headers["Retry-After"]
        async with httpx.AsyncClient(base_url=server.http, timeout=10.0) as http:
            published = await http.post(
                "/v1/topics/acme/docs/1/events",
                json={"specversion": "1.0", "id": "e1", "source": "/t", "type": "t"},
                headers={"content-type": "application/cloudevents+json"},
            )
            assert published.status_code == 201  # the node serves all the same
            assert (await http.get("/readyz")).status_code == 200

        await asyncio.to_thread(redis.start)  # back: the heartbeat registers the node
        async with asyncio.timeout(10):
            while (answer := await get(server, ADMIN_KEY)).status_code != 200 or not (
                answer.json()["nodes"]
            ):
                await asyncio.sleep(0.05)
        assert [node["id"] for node in answer.json()["nodes"]] == [server.app[REGISTRY_KEY].id]
