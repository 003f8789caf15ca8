"""Cross-origin rules: which web origins' pages may call the server, and with what.

Owns: the syntax of an origin pattern (the `cors_origins` setting), matching
a request's `Origin` header against the allow-list, and the CORS headers a
preflight and an actual response grant (Fetch standard, "CORS protocol").
Pure: no I/O, no aiohttp; `gateways.cors` applies these decisions to HTTP
requests and `gateways.websocket` to upgrades.

Patterns (case-insensitive; a default port, 80 for http and 443 for https, is
the same origin written or not):

    https://app.example.com     exactly that origin
    http://localhost:*          that scheme and host, on any port or none
    https://*.example.com       any subdomain (one or more labels), not the domain itself;
                                `https://*.example.com:*` on any port too
    *                           every origin, except the opaque `null` (file://, sandboxes)

An origin that is not `scheme://host[:port]` (`null`, a path, userinfo) is
never allowed. Credentials travel in the `Authorization` header (or `?token=`
for EventSource), never in cookies, so `Access-Control-Allow-Credentials` is
not granted: a page needs no credentials mode.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from hybridbus.errors import Forbidden, InvalidInput

__all__ = [
    "ALLOWED_HEADERS",
    "EXPOSED_HEADERS",
    "MAX_AGE",
    "ORIGIN_PATTERN",
    "PREFLIGHT_VARY",
    "CorsPolicy",
]

_SCHEME: Final = r"[A-Za-z][A-Za-z0-9+.-]*"
_HOST: Final = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\]"
_PORT: Final = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4}"

# What a `cors_origins` entry must look like: the configuration checks it at load
# (msgspec searches with it, hence the anchors).
ORIGIN_PATTERN: Final = rf"^(?:\*|{_SCHEME}://(?:\*\.)?(?:{_HOST})(?::(?:\*|{_PORT}))?)\Z"

_PATTERN_RE: Final = re.compile(
    rf"(?P<scheme>{_SCHEME})://(?P<sub>\*\.)?(?P<host>{_HOST})(?::(?P<port>\*|{_PORT}))?"
)
_ORIGIN_RE: Final = re.compile(rf"(?P<scheme>{_SCHEME})://(?P<host>{_HOST})(?::(?P<port>{_PORT}))?")
_DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# Request headers a page may send (`ce-*` too: binary mode); the CORS-safelisted
# ones are listed so that a preflight naming them is not refused.
ALLOWED_HEADERS: Final = (
    "authorization",
    "content-type",
    "last-event-id",
    "x-api-key",
    "accept",
    "accept-language",
    "content-language",
)
# Response headers a page may read besides the safelisted ones.
EXPOSED_HEADERS: Final = ("Retry-After", "Location", "WWW-Authenticate")
# Seconds a browser may cache a preflight's answer (Chromium caps it at 7200).
MAX_AGE: Final = 600
# A preflight's answer depends on these request headers.
PREFLIGHT_VARY: Final = (
    "Origin",
    "Access-Control-Request-Method",
    "Access-Control-Request-Headers",
)

_ANY_PORT: Final = -1


@dataclass(frozen=True, slots=True)
class _Pattern:
    scheme: str
    host: str
    subdomains: bool
    port: int | None  # None: the default port; _ANY_PORT: any


def _port(scheme: str, text: str | None) -> int | None:
    if text is None:
        return None
    port = int(text)
    return None if _DEFAULT_PORTS.get(scheme) == port else port


def _parse_pattern(text: str) -> _Pattern | None:
    """The pattern, None for `*`; raises InvalidInput if `text` is not one."""
    if text == "*":
        return None
    match = _PATTERN_RE.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"cors_origins: {text!r} is not an origin pattern: write scheme://host[:port], "
            "with * for any port (http://localhost:*) or subdomain (https://*.example.com), "
            "or * alone"
        )
    scheme = match["scheme"].lower()
    port_text = match["port"]
    port = _ANY_PORT if port_text == "*" else _port(scheme, port_text)
    return _Pattern(scheme, match["host"].lower(), match["sub"] is not None, port)


class CorsPolicy:
    """The allow-list of origins, and what it grants (see the module docstring)."""

    __slots__ = ("_any", "_exact", "_patterns", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        parsed = [_parse_pattern(text) for text in self.patterns]
        self._any = any(p is None for p in parsed)
        self._patterns = tuple(p for p in parsed if p is not None)
        # Exact origins, looked up without a scan.
        self._exact = frozenset(
            (p.scheme, p.host, p.port)
            for p in self._patterns
            if not p.subdomains and p.port != _ANY_PORT
        )

    @property
    def enabled(self) -> bool:
        """Whether any origin may be allowed at all."""
        return bool(self.patterns)

    def allows(self, origin: str | None) -> bool:
        """Whether the `Origin` header `origin` (None: absent) is on the list."""
        if origin is None or not self.patterns:
            return False
        match = _ORIGIN_RE.fullmatch(origin)
        if match is None:
            return False
        if self._any:
            return True
        scheme, host = match["scheme"].lower(), match["host"].lower()
        port = _port(scheme, match["port"])
        if (scheme, host, port) in self._exact:
            return True
        for pattern in self._patterns:
            if pattern.scheme != scheme or pattern.port not in (_ANY_PORT, port):
                continue
            if pattern.subdomains:
                if host.endswith("." + pattern.host) and not host.startswith("["):
                    return True
            elif pattern.host == host:
                return True
        return False

    def preflight(
        self,
        origin: str,
        method: str,
        request_headers: str | None,
        methods: Collection[str],
        *,
        private_network: bool = False,
    ) -> dict[str, str]:
        """The headers granting a preflight (an OPTIONS with Access-Control-Request-Method).

        `method` and `request_headers` are what the browser asks for, `methods`
        what the route takes. Raises `Forbidden` saying what is not allowed.
        """
        if not self.patterns:
            raise Forbidden("cross-origin requests are off: no origin is in cors_origins")
        if not self.allows(origin):
            raise Forbidden(f"origin {origin!r} is not allowed (cors_origins)")
        if method not in methods:
            raise Forbidden(f"method {method} is not allowed on this route")
        asked = [
            name.strip().lower() for name in (request_headers or "").split(",") if name.strip()
        ]
        for name in asked:
            if name not in ALLOWED_HEADERS and not name.startswith("ce-"):
                raise Forbidden(f"header {name} is not allowed in a cross-origin request")
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
            "Access-Control-Allow-Headers": ", ".join(asked or ALLOWED_HEADERS),
            "Access-Control-Max-Age": str(MAX_AGE),
        }
        if private_network:
            # Chromium asks before a public page calls a private address: an
            # allowed origin may.
            headers["Access-Control-Allow-Private-Network"] = "true"
        return headers

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """The headers granting an actual response to `origin`; none if it is not allowed."""
        if not self.allows(origin):
            return {}
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
        }
