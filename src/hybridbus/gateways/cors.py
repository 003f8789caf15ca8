"""CORS on the HTTP API and SSE, and the Origin check of WebSocket upgrades.

Owns: applying `core.cors.CorsPolicy` to aiohttp requests under `/v1/` — a
middleware answering preflights (an OPTIONS with
`Access-Control-Request-Method`) for every route there, with the route's own
methods, and an `on_response_prepare` hook granting an allowed origin on every
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
from aiohttp.typedefs import Handler, Middleware

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


def _preflight_middleware(policy: CorsPolicy) -> Middleware:
    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (_is_preflight(request) and request.path.startswith(PREFIX)):
            return await handler(request)
        method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
        refused = request.match_info.http_exception
        if not isinstance(refused, web.HTTPMethodNotAllowed):
            return await handler(request)  # an unknown path (404), or a route taking OPTIONS
        try:
            granted = policy.preflight(
                request.headers.get(hdrs.ORIGIN, ""),
                method,
                request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS),
                refused.allowed_methods,
                private_network=(
                    request.headers.get("Access-Control-Request-Private-Network", "").lower()
                    == "true"
                ),
            )
        except BusError as exc:
            return problem(exc)
        return web.Response(status=204, headers=granted)

    return preflight


def install_cors(app: web.Application, policy: CorsPolicy) -> None:
    """Serve CORS under `PREFIX` on `app` by `policy` (before the app starts)."""

    async def grant(request: web.Request, response: web.StreamResponse) -> None:
        if (
            not policy.enabled
            or not request.path.startswith(PREFIX)
            or isinstance(response, web.WebSocketResponse)
        ):
            return
        if _is_preflight(request):  # granted by the middleware, or refused: nothing to add
            _vary(response, *PREFLIGHT_VARY)
            return
        response.headers.update(policy.response_headers(request.headers.get(hdrs.ORIGIN)))
        _vary(response, "Origin")

    app.middlewares.append(_preflight_middleware(policy))
    app.on_response_prepare.append(grant)


def origin_refusal(policy: CorsPolicy, request: web.Request) -> web.HTTPForbidden | None:
    """The 403 refusing an upgrade from a browser page not on the list; None to allow.

    A request without an Origin header is not from a browser page: allowed.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or policy.allows(origin):
        return None
    return web.HTTPForbidden(text=f"origin {origin!r} is not allowed (cors_origins)")
