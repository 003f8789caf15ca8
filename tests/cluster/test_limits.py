"""The tenant publish rate across nodes: one bucket per tenant in a real redis-server.

`tenant_publish_rate` / `tenant_publish_burst` hold for the whole deployment:
two nodes publishing for one tenant as fast as they can together get the rate
of one (server/limits_redis.py, docs/scale-out.md "Presence and limits across
nodes"). While that Redis cannot be reached, each node limits on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.servers import WsClient, event, running_server
from tests.services import RedisServer

RATE = 40.0
BURST = 20.0
SECONDS = 2.0
FRAME = 10  # publish commands per frame: as fast as a client can ask


async def hammer(client: WsClient, until: float) -> tuple[int, int]:
    """Publish as fast as possible until `until` (monotonic): (accepted, rate-limited)."""
    accepted = limited = 0
    while time.monotonic() < until:
        commands = [client.command("publish", topic="load/1", event=event()) for _ in range(FRAME)]
        await client.send(*commands)
        for command in commands:
            answer = await client.answer(command["id"])
            if answer["type"] == "reply":
                accepted += 1
            else:
                assert answer["code"] == 1121, answer  # RATE_LIMITED, nothing else
                limited += 1
    return accepted, limited


async def test_the_tenant_rate_holds_across_two_nodes(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    settings = {"tenant_publish_rate": RATE, "tenant_publish_burst": BURST}
    async with (
        running_server(engine=engine, node_id="a", **settings) as a,
        running_server(engine=engine, node_id="b", **settings) as b,
        WsClient.open(a.url) as on_a,
        WsClient.open(b.url) as on_b,
    ):
        started = time.monotonic()
        results = await asyncio.gather(
            hammer(on_a, started + SECONDS), hammer(on_b, started + SECONDS)
        )
        elapsed = time.monotonic() - started
    accepted = sum(ok for ok, _ in results)
    limited = sum(refused for _, refused in results)
    allowed = BURST + RATE * elapsed
    # Over: at most what the nodes lease ahead and advance (docs/scale-out.md), a few events.
    # Under: a lease in flight when the run ends; 25 % is generous for a loaded machine.
    assert 0.75 * allowed <= accepted <= allowed + 10, (accepted, allowed, limited)
    assert limited > accepted  # both nodes were pushed well past the rate
    assert all(ok > 0 for ok, _ in results)  # neither node was starved


async def test_without_redis_each_node_limits_on_its_own(
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    # The memory engine: publishes do not need Redis, only the shared bucket does.
    settings = {
        "registry": redis.url + "?prefix=t:",
        "tenant_publish_rate": RATE,
        "tenant_publish_burst": BURST,
    }
    async with running_server(node_id="a", **settings) as a, WsClient.open(a.url) as client:
        await asyncio.to_thread(redis.stop)
        started = time.monotonic()
        accepted, limited = await hammer(client, started + SECONDS)
        elapsed = time.monotonic() - started
        # Fail open to this node's own bucket, at the full rate: limited, never unlimited.
        allowed = BURST + RATE * elapsed
        assert 0.5 * allowed <= accepted <= allowed + 10, (accepted, allowed, limited)
        assert limited > 0
        # Back: the shared bucket again (it starts full).
        await asyncio.to_thread(redis.start)
        async with asyncio.timeout(10):
            while not a.node.guard.tenant_limits.reachable:
                await asyncio.sleep(0.05)
