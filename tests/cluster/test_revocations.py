"""Revocations across nodes: two servers on one real Redis (the Redis engine).

A revocation made over HTTP on one node closes the revoked connection held by
the other node within a second, and the other node refuses the revoked token
from then on — the `revoke` audit event carries it to every node
(`hub.guard.Guard._follow_revocations`, docs/security.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.gateways.test_security import (
    ADMIN_KEY,
    alive,
    closed_with,
    connected,
    http,
    refused,
    secured,
    token,
)
from tests.services import RedisServer


async def test_a_revocation_on_one_node_closes_the_connection_held_by_another(
    redis_server: Callable[..., RedisServer],
) -> None:
    engine = redis_server().url
    lost, kept = token(sid="s-lost"), token(sid="s-kept")
    async with (
        secured(engine=engine) as one,
        secured(engine=engine) as two,
        http(one, ADMIN_KEY) as admin,
        connected(two, lost) as lost_client,
        connected(two, kept) as kept_client,
    ):
        started = time.monotonic()
        body = {"kind": "session", "value": "s-lost", "tenant": "acme", "reason": "laptop"}
        response = await admin.post("/v1/revocations", json=body)
        assert response.status_code == 201, response.text
        code, disconnect = await closed_with(lost_client, seconds=2.0)
        elapsed = time.monotonic() - started
        assert (code, disconnect["code"], disconnect["reconnect"]) == (4502, 4502, False)
        assert elapsed < 1.0, elapsed
        assert await alive(kept_client)
        assert (await refused(two, token=lost))[0] == 4502
        # A node started after the revocation loads it from the engine.
        async with secured(engine=engine) as three:
            assert (await refused(three, token=lost))[0] == 4502
