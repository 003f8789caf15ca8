"""`GET /v1/nodes`: the nodes of the deployment, as the node registry lists them.

Owns: that route and its answer (docs/http.md, "Nodes"). Must not keep the
registry (`server.registry` does) nor decide who a caller is (the
`principal` hook: `HttpAccess.principal` in `hybridbus serve`).

    GET /v1/nodes     every live node (admins only)

    {"node": "<the id of the node answering>", "registry": "local|redis|etcd",
     "nodes": [{"id", "addresses", "hostname", "pid", "version", "engine",
                "fingerprint", "started", "heartbeat", "ttl", "connections"}, ...]}

The nodes are the whole deployment's, across tenants: only an admin (an
admin token or admin API key) may list them; anyone else gets 403 (1110),
no credentials 401. A registry that cannot be reached answers 503 with
`RegistryUnavailable` (1310) and `Retry-After`; the node keeps serving.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from hybridbus.errors import Forbidden
from hybridbus.gateways.httputil import guarded, json_response
from hybridbus.hub.guard import Principal
from hybridbus.server.registry import Registry

__all__ = ["NodesGateway"]

PrincipalOf = Callable[[web.Request], Awaitable[Principal]]


class NodesGateway:
    """The nodes route over one registry: mount it with `app.add_routes(gateway.routes())`."""

    def __init__(self, registry: Registry, principal: PrincipalOf) -> None:
        self._registry = registry
        self._principal = principal

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/nodes", guarded(self.nodes), allow_head=False)]

    async def nodes(self, request: web.Request) -> web.Response:
        """Every live node, by id (admins only)."""
        principal = await self._principal(request)
        if not principal.identity.admin:
            raise Forbidden("only admins may list the nodes")
        registry = self._registry
        found = await registry.nodes()
        return json_response({"node": registry.id, "registry": registry.kind, "nodes": found})
