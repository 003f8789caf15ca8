"""Nodes of one deployment in this test process: real servers on one real Redis.

`nodes(engine, "n1", "n2")` starts a server per node id (`running_server`)
and tells each node's registry where it listens, as `hybridbus serve` does,
so that NOT_COORDINATOR answers carry the coordinator's URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.servers import Server, running_server

from hybridbus.serve import REGISTRY_KEY

__all__ = ["nodes", "registered"]


async def registered(server: Server) -> Server:
    """`server` with its listening address in the node registry (as `serve` does)."""
    server.app[REGISTRY_KEY].listening([("127.0.0.1", server.port)])
    return server


@contextlib.asynccontextmanager
async def nodes(engine: str, *ids: str, **settings: Any) -> AsyncIterator[list[Server]]:
    """One server per node id on `engine`, registered; stopped at the end."""
    settings.setdefault("registry_ttl", 3.0)
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for node_id in ids:
            server = await stack.enter_async_context(
                running_server(engine=engine, node_id=node_id, **settings)
            )
            servers.append(await registered(server))
        yield servers
