"""Registries across nodes: what one node stores (schemas, inbound webhook endpoints, outbound
webhook subscriptions) the other nodes on the same Redis use at once, without a restart.

Two servers (`tests.servers.running_server`) share one real redis-server; each change is made
over one node's HTTP API and used through the other's (`hub.changes`, docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.gateways.test_schemas_http import ORDER, SCHEMA, problem, register
from tests.gateways.test_webhooks_in import INVOICE, SECRET, client, signed
from tests.server.test_webhooks_out import Receiver
from tests.servers import running_server
from tests.services import RedisServer

from hybridbus.errors import ErrorCode

pytestmark = pytest.mark.timeout(60)


async def until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def test_schemas_and_webhook_endpoints_made_on_one_node_work_on_another(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    async with (
        running_server(engine=engine) as one,
        running_server(engine=engine) as two,
        client(one) as http_one,
        client(two) as http_two,
    ):
        # A schema registered on one node is enforced on the other.
        await register(http_one, ORDER, SCHEMA)
        bad = {"specversion": "1.0", "id": "o1", "source": "/s", "type": ORDER, "data": {}}

        async def refused_there() -> bool:
            answer = await http_two.post(
                "/v1/topics/acme/orders/events",
                json=bad,
                headers={"content-type": "application/cloudevents+json"},
            )
            return answer.status_code == 400

        await until(refused_there)
        listed = (await http_two.get("/v1/schemas")).json()["schemas"]
        assert [s["type"] for s in listed] == [ORDER]

        # An inbound endpoint made on one node takes webhooks on the other; deleted, it is gone.
        rule = {"secrets": [SECRET], "topic": "billing/{type}", "type": "$.type"}
        made = await http_one.put("/v1/webhooks/endpoints/billing", json=rule)
        assert made.status_code == 201, made.text

        async def taken_there() -> bool:
            answer = await http_two.post(
                "/v1/webhooks/acme/billing", content=INVOICE, headers=signed(INVOICE)
            )
            return answer.status_code == 200

        await until(taken_there)
        assert (await http_one.delete("/v1/webhooks/endpoints/billing")).status_code == 204

        async def gone_there() -> bool:
            answer = await http_two.post(
                "/v1/webhooks/acme/billing", content=INVOICE, headers=signed(INVOICE)
            )
            return answer.status_code == 404

        await until(gone_there)
        problem(
            await http_two.post(
                "/v1/webhooks/acme/billing", content=INVOICE, headers=signed(INVOICE)
            ),
            404,
            ErrorCode.UNKNOWN_ENDPOINT,
        )


async def test_an_outbound_subscription_made_on_one_node_is_listed_and_deleted_on_another(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    peer = Receiver([])
    await peer.start()
    try:
        async with (
            running_server(engine=engine, webhook_allow_private=True) as one,
            running_server(engine=engine, webhook_allow_private=True) as two,
            httpx.AsyncClient(base_url=one.http, timeout=10.0) as http_one,
            httpx.AsyncClient(base_url=two.http, timeout=10.0) as http_two,
        ):
            body = {"pattern": "orders/#", "url": peer.url}
            made = await http_one.put("/v1/webhooks/outbound/billing", json=body)
            assert made.status_code == 201, made.text

            async def listed_there() -> bool:
                return (await http_two.get("/v1/webhooks/outbound/billing")).status_code == 200

            await until(listed_there)
            assert (await http_two.delete("/v1/webhooks/outbound/billing")).status_code == 204

            async def gone_here() -> bool:
                return (await http_one.get("/v1/webhooks/outbound/billing")).status_code == 404

            await until(gone_here)
    finally:
        await peer.stop()
