"""`GET /v1/bridges`: the bridges of this process, their state, lag and counters.

Owns: that route and its answer (docs/bridges.md, "Watching"). Must not run
bridges (`bridges.registry.Bridges` does) nor decide permissions
(`hub.guard.Guard.may` does).

    GET /v1/bridges     the bridges the caller may manage

    {"bridges": [{"name", "kind", "direction", "state", "lag", "received",
                  "delivered", "duplicates", "rejected", "errors", "last_error",
                  "last_error_time", "connected_since", "group", "position",
                  "settings"}, ...]}

Permission. A bridge reaches into tenants: an admin sees every bridge; any
other caller sees those whose bus side lies in its tenant and which it may
`manage` there ("out": the pattern; "in": the topic template's tenant and
its `#`; a sink: every pattern). No credentials: 401. Passwords in URLs are
shown as `***`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from hybridbus.bridges.base import BridgeInfo
from hybridbus.bridges.registry import Bridges
from hybridbus.gateways.httputil import guarded, json_response
from hybridbus.hub.guard import Guard, Principal

__all__ = ["BridgesGateway", "patterns_of"]

PrincipalOf = Callable[[web.Request], Awaitable[Principal]]


def patterns_of(info: BridgeInfo) -> list[str]:
    """The bus patterns a bridge touches (what a caller must be allowed to manage)."""
    settings = info.settings
    if info.direction == "out":
        found = settings.get("patterns") or [settings.get("pattern")]
        return [p for p in found if isinstance(p, str)]
    topic = settings.get("topic")
    if not isinstance(topic, str):
        return []
    return [topic.split("/", 1)[0] + "/#"]


class BridgesGateway:
    """The bridges route: mount it with `app.add_routes(gateway.routes())`."""

    def __init__(self, bridges: Bridges, guard: Guard, principal: PrincipalOf) -> None:
        self._bridges = bridges
        self._guard = guard
        self._principal = principal

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/bridges", guarded(self.list), allow_head=False)]

    def _may(self, principal: Principal, info: BridgeInfo) -> bool:
        if principal.identity.admin:
            return True
        patterns = patterns_of(info)
        prefix = f"{principal.tenant}/"
        return bool(patterns) and all(
            p.startswith(prefix) and self._guard.may(principal, "manage", p[len(prefix) :])
            for p in patterns
        )

    async def list(self, request: web.Request) -> web.Response:
        """The bridges the caller may manage, by name."""
        principal = await self._principal(request)
        shown = [
            msgspec.to_builtins(info)
            for info in self._bridges.infos()
            if self._may(principal, info)
        ]
        return json_response({"bridges": shown})
