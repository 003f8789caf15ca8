"""The HTTP client of the commands over the HTTP API (groups, dlq, schemas, webhooks).

Owns: where the HTTP API is for a `--url` (`http_base`), one request with
JSON in and out (`Api.call`, on the standard library's `urllib`, so the
commands load nothing else; an https:// server verified against `--ca` or
the system's CAs, with the client certificate of `--cert`/`--key` if given:
cli.py makes that context), a refusal as `Failed` with the problem's code and
name (`1401 UNKNOWN_GROUP: ...`) and the exit status to return, and printing
JSON lines and tables. Must not know any route.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from hybridbus.errors import ErrorCode, InvalidInput

__all__ = ["FAILED", "OK", "UNREACHABLE", "Api", "Failed", "http_base", "print_json", "table"]

OK: Final = 0
FAILED: Final = 1
UNREACHABLE: Final = 3
_TIMEOUT: Final = 30.0
_SCHEMES: Final = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class Failed(Exception):
    """The request failed; `status` is the exit status to return."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


def http_base(url: str) -> str:
    """The HTTP API's base URL for a `--url` (the WebSocket endpoint, or an HTTP URL)."""
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise Failed(f"--url {url!r} is not a ws://, wss://, http:// or https:// URL", 2)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/ws"):
        path = path[: -len("/v1/ws")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Api:
    """Requests to the HTTP API: JSON in, JSON out, problems as `Failed`."""

    def __init__(
        self, base: str, token: str | None, ca: str | ssl.SSLContext | None = None
    ) -> None:
        self.base = base
        self._ssl: ssl.SSLContext | None = None  # urllib verifies with the system's CAs
        if ca is not None:
            from hybridbus.client.tls import client_context  # (the package loads aiohttp)

            try:
                self._ssl = client_context(ca)
            except InvalidInput as exc:
                raise Failed(f"--ca: {exc}", 2) from None
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """`method` `path` with `body` as JSON; the JSON answer (None if empty)."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT, context=self._ssl) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise Failed(_problem(exc)) from None
        except urllib.error.URLError as exc:
            hint = _tls_hint(self.base, exc.reason)
            if hint is not None:
                message = f"cannot connect to {self.base}: {exc.reason} ({hint})"
                raise Failed(message, UNREACHABLE) from None
            raise Failed(
                f"cannot connect to {self.base}: {exc.reason} (is the server running there? "
                "point --url or $HYBRIDBUS_URL at it)",
                UNREACHABLE,
            ) from None
        except (OSError, TimeoutError) as exc:
            hint = _tls_hint(self.base, exc) if isinstance(exc, ConnectionResetError) else None
            if hint is not None:  # the server ended the TLS connection under the request
                message = f"cannot connect to {self.base}: {exc} ({hint})"
                raise Failed(message, UNREACHABLE) from None
            raise Failed(f"{self.base}: {exc}") from None
        return json.loads(raw) if raw else None


def _tls_hint(base: str, reason: object) -> str | None:
    """--ca, or --cert/--key, if TLS is why a request to `base` failed (client/tls.py)."""
    if not base.startswith("https:"):
        return None  # (not even loading client/tls.py)
    from hybridbus.client.tls import cli_hint  # (the package loads aiohttp: on failure only)

    return cli_hint(base, str(reason))


def listing(command: str, args: Any, path: str) -> tuple[Any, int | None]:
    """`GET path` for a listing command: (the answer, None), or (None, the exit status) once
    the failure is printed as `hybridbus <command>: ...`."""
    try:
        return Api(http_base(args.url), args.token, args.ca).call("GET", path), None
    except Failed as exc:
        print(f"hybridbus {command}: {exc}", file=sys.stderr)
        return None, exc.status
    except KeyboardInterrupt:
        return None, 130


def _problem(error: urllib.error.HTTPError) -> str:
    """`1401 UNKNOWN_GROUP: detail` from a problem+json answer, else the HTTP status."""
    try:
        problem = json.loads(error.read())
        code = int(problem["code"])
        detail = str(problem["detail"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {error.code} {error.reason}"
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = "ERROR"
    return f"{code} {name}: {detail}"


def print_json(value: Any, indent: int | None = None) -> None:
    """`value` as one line of JSON (or indented) on stdout."""
    sys.stdout.write(json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(header: list[str], rows: list[list[str]]) -> None:
    """A table of left-aligned columns on stdout."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        sys.stdout.write("\n")
    sys.stdout.flush()
