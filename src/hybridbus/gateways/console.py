"""The web console at `/console`: its static files, and the two small JSON routes it needs.

Owns: serving the console's page, modules and stylesheet from the package
directory `hybridbus/console/` and the browser client from
`hybridbus/console/client/` (a wheel's copy of `clients/js/src`, mapped by
pyproject's hatch `force-include`; in a source checkout, `clients/js/src`
itself), with the security headers of docs/console.md — a strict
Content-Security-Policy (scripts and styles from this origin only, no inline
script; connections to this origin and WebSockets), `nosniff`, no framing,
no referrer, and `index.html` never cached; and two guarded JSON routes:

    GET /v1/whoami    who the credentials are: tenant, user, roles, admin, expiry
    GET /v1/stats     the node's counters for the console's charts (admins only):
                      `Metrics.snapshot` (server/metrics.py says what each one is)

Must not hold any data in the static files (every number the console shows
comes from the authenticated API, fetched with the user's own token, so what
a user sees follows their rules) nor decide permissions (`HttpAccess` finds
the principal; `/v1/stats` needs an admin: the counters are the whole node's,
every tenant's). `/metrics` stays what Prometheus scrapes: the console does
not read it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from hybridbus.errors import Forbidden
from hybridbus.gateways.httputil import guarded, json_response
from hybridbus.hub.guard import Principal
from hybridbus.server.metrics import Metrics

__all__ = ["CONTENT_SECURITY_POLICY", "ConsoleGateway", "client_dir", "console_dir"]

PrincipalOf = Callable[[web.Request], Awaitable[Principal]]

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# The only files served, by suffix: anything else (a README, a .ts source) is a 404.
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_MAX_FILE: Final = 4 << 20  # bytes: the console's files are small; nothing larger is served


def console_dir() -> Path:
    """The directory of the console's own files (`hybridbus/console/`)."""
    return Path(__file__).resolve().parents[1] / "console"


def client_dir() -> Path:
    """The browser client's directory: the wheel's copy, else the checkout's `clients/js/src`."""
    packaged = console_dir() / "client"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "clients" / "js" / "src"


def _secured(response: web.Response) -> web.Response:
    response.headers.update(_HEADERS)
    return response


def _not_found() -> web.Response:
    return _secured(web.Response(status=404, text="not found\n", content_type="text/plain"))


def _file_in(root: Path, relative: str) -> Path | None:
    """`root/relative` if it is a servable file inside `root` (no `..`, no dot files)."""
    parts = relative.split("/")
    if not relative or any(not p or p.startswith(".") or "\\" in p for p in parts):
        return None
    if Path(relative).suffix.lower() not in _TYPES:
        return None
    try:
        base = root.resolve()
        found = (base / relative).resolve()
        if not found.is_relative_to(base) or not found.is_file():
            return None
        if found.stat().st_size > _MAX_FILE:
            return None
    except OSError:
        return None
    return found


def _read(root: Path, relative: str) -> tuple[Path, bytes] | None:
    found = _file_in(root, relative)
    if found is None:
        return None
    try:
        return found, found.read_bytes()
    except OSError:
        return None


class ConsoleGateway:
    """The console's routes: mount them with `app.add_routes(gateway.routes())`."""

    def __init__(
        self,
        metrics: Metrics,
        principal: PrincipalOf,
        *,
        root: Path | None = None,
        client: Path | None = None,
    ) -> None:
        self._metrics = metrics
        self._principal = principal
        self._root = root or console_dir()
        self._client = client or client_dir()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.redirect, allow_head=False),
            web.get("/console/", self.index, allow_head=False),
            web.get("/console/client/{path:.+}", self.client_file, allow_head=False),
            web.get("/console/{path:.+}", self.file, allow_head=False),
            web.get("/v1/whoami", guarded(self.whoami), allow_head=False),
            web.get("/v1/stats", guarded(self.stats), allow_head=False),
        ]

    # -- static files ------------------------------------------------------------------

    async def redirect(self, request: web.Request) -> web.Response:
        """`/console` → `/console/`, so that the page's relative module paths resolve."""
        response = _secured(web.Response(status=308))
        response.headers[hdrs.LOCATION] = "/console/"
        return response

    async def index(self, request: web.Request) -> web.Response:
        """The page: never cached, so a new server's console is loaded at once."""
        return await self._serve(request, self._root, "index.html", cache=False)

    async def file(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._root, request.match_info["path"])

    async def client_file(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._client, request.match_info["path"])

    async def _serve(
        self, request: web.Request, root: Path, relative: str, *, cache: bool = True
    ) -> web.Response:
        found = await asyncio.to_thread(_read, root, relative)
        if found is None:
            return _not_found()
        path, body = found
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {hdrs.CACHE_CONTROL: "no-cache" if cache else "no-store"}
        if cache:
            headers[hdrs.ETAG] = etag
            if etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
                return _secured(web.Response(status=304, headers=headers))
        response = web.Response(body=body, headers=headers)
        response.headers[hdrs.CONTENT_TYPE] = _TYPES[path.suffix.lower()]
        return _secured(response)

    # -- JSON ----------------------------------------------------------------------------

    async def whoami(self, request: web.Request) -> web.Response:
        """Who the request's credentials are (401 without valid ones, as every route)."""
        identity = (await self._principal(request)).identity
        return json_response(
            {
                "tenant": identity.tenant,
                "user": identity.user,
                "roles": list(identity.roles),
                "admin": identity.admin,
                "anonymous": identity.anonymous,
                "expires": identity.expires,
            }
        )

    async def stats(self, request: web.Request) -> web.Response:
        """The node's counters (`Metrics.snapshot`): admins only, they span every tenant."""
        principal = await self._principal(request)
        if not principal.identity.admin:
            raise Forbidden("only admins may read the node's counters")
        return json_response(self._metrics.snapshot())
