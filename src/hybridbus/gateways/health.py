"""Operations endpoints: `/healthz`, `/readyz`, `/metrics`.

Owns: what a load balancer and Prometheus read. Must not change anything.

    /healthz   200 while the process serves requests at all
    /readyz    200 while the node accepts connections and its engine is open,
               503 otherwise (starting, shutting down)
    /metrics   the Prometheus text exposition of `server.metrics.Metrics`
"""

from __future__ import annotations

from aiohttp import web

from hybridbus.server.metrics import CONTENT_TYPE, Metrics
from hybridbus.server.node import Node

__all__ = ["HealthGateway"]


class HealthGateway:
    """Health, readiness and metrics of one node."""

    def __init__(self, node: Node, metrics: Metrics) -> None:
        self._node = node
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount on the application."""
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        node = self._node
        body = {
            "status": "ready" if node.ready else "unavailable",
            "accepting": node.accepting,
            "connections": node.connections,
        }
        return web.json_response(body, status=200 if node.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        await self._metrics.refresh()  # what is computed at a scrape (the groups' lag)
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})
