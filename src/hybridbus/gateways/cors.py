"""CORS on the HTTP API and SSE, and the Origin check of WebSocket upgrades.

Owns: applying `core.cors.CorsPolicy` to aiohttp requests under `/v1/` — an
OPTIONS route, added at startup to every resource there, answering preflights
(an OPTIONS with `Access-Control-Request-Method`) with the resource's own
methods (no middleware: it would wrap every handler, a WebSocket's for its
whole life), and an `on_response_prepare` hook granting an allowed origin on every
response (streamed SSE and problems included) with `Vary: Origin` — and the
check `gateways.websocket` runs before an upgrade. Must not decide which
origins are allowed (that is `core.cors`) nor know any route.

Browsers enforce CORS; the server only grants it. A request whose Origin is
not allowed is served as before, just without a grant (so the page cannot read
the answer), except a preflight, refused 403, which stops the request itself.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from hybridbus.core.cors import PREFLIGHT_VARY, CorsPolicy
from hybridbus.errors import BusError
from hybridbus.gateways.httputil import problem

__all__ = ["PREFIX", "install_cors", "origin_refusal"]

PREFIX: Final = "/v1/"


def _vary(response: web.StreamResponse, *names: str) -> None:
    """Add `names` to the response's Vary header, once each."""
    present = [
        name.strip()
        for line in response.headers.getall(hdrs.VARY, ())
        for name in line.split(",")
        if name.strip()
    ]
    known = {name.lower() for name in present}
    added = [name for name in names if name.lower() not in known]
    if added:
        response.headers[hdrs.VARY] = ", ".join(present + added)


def _is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def _preflight_handler(policy: CorsPolicy, allowed: frozenset[str]) -> Handler:
    """The OPTIONS handler of a resource whose routes take the methods `allowed`."""

    async def preflight(request: web.Request) -> web.StreamResponse:
        if not (_is_preflight(request) and request.path.startswith(PREFIX)):
            raise web.HTTPMethodNotAllowed(request.method, allowed)  # as without this route
        try:
            granted = policy.preflight(
                request.headers.get(hdrs.ORIGIN, ""),
                request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD],
                request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS),
                allowed,
                private_network=(
                    request.headers.get("Access-Control-Request-Private-Network", "").lower()
                    == "true"
                ),
            )
        except BusError as exc:
            return problem(exc)
        return web.Response(status=204, headers=granted)

    return preflight


def _add_preflight_routes(app: web.Application, policy: CorsPolicy) -> None:
    """Give every resource under `PREFIX` not taking OPTIONS an OPTIONS route answering preflights.

    Routes rather than a middleware: a middleware (and the shim aiohttp then
    adds) would wrap every handler in coroutine frames living as long as it —
    a WebSocket's whole life.
    """
    # One path may be several resources (routes of one path registered apart): the
    # first of them answers every preflight of the path, with the methods of them all.
    first: dict[str, web.Resource] = {}
    methods: dict[str, set[str]] = {}
    for resource in app.router.resources():
        if not isinstance(resource, web.Resource):  # static files, sub-apps: none here
            continue
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith(PREFIX):
            continue
        first.setdefault(path, resource)
        methods.setdefault(path, set()).update(route.method for route in resource)
    for path, resource in first.items():
        taken = frozenset(methods[path])
        if not taken or hdrs.METH_OPTIONS in taken or hdrs.METH_ANY in taken:
            continue  # a route taking OPTIONS (or any method) answers it itself
        resource.add_route(hdrs.METH_OPTIONS, _preflight_handler(policy, taken))


def install_cors(app: web.Application, policy: CorsPolicy) -> None:
    """Serve CORS under `PREFIX` on `app` by `policy` (before the app starts).

    The preflight routes are added when the app starts, so routes added after
    this call are covered too.
    """

    async def grant(request: web.Request, response: web.StreamResponse) -> None:
        if (
            not policy.enabled
            or not request.path.startswith(PREFIX)
            or isinstance(response, web.WebSocketResponse)
        ):
            return
        if _is_preflight(request):  # granted by its OPTIONS route, or refused: nothing to add
            _vary(response, *PREFLIGHT_VARY)
            return
        response.headers.update(policy.response_headers(request.headers.get(hdrs.ORIGIN)))
        _vary(response, "Origin")

    async def add_preflight_routes(app: web.Application) -> None:
        _add_preflight_routes(app, policy)

    app.on_startup.append(add_preflight_routes)
    app.on_response_prepare.append(grant)


def origin_refusal(policy: CorsPolicy, request: web.Request) -> web.HTTPForbidden | None:
    """The 403 refusing an upgrade from a browser page not on the list; None to allow.

    A request without an Origin header is not from a browser page: allowed. A
    page of the server's own origin (its scheme and Host: the web console at
    `/console/`) is allowed too, listed or not, as its requests over HTTP are.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or policy.allows(origin):
        return None
    if origin.lower() == f"{request.scheme}://{request.host}".lower():
        return None
    return web.HTTPForbidden(text=f"origin {origin!r} is not allowed (cors_origins)")
