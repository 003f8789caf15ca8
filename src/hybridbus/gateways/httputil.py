"""What the HTTP gateways share: problem details, the handler guard, parameters, bodies, auth.

Owns: turning any error into an RFC 9457 `application/problem+json` response
(`type`, `title`, `status`, `detail`, plus hybridbus's `code`, `retriable` and,
when known, `attribute`, `parameter`, `path` or `index`), the guard every handler runs
in (so that no request, however malformed, makes a handler fail), reading a
bounded request body, parsing query parameters (a `+` in them is a plus, not a
space), and the authorization hook.
Must not know any route, nor decide anything about events, topics or the bus.

Status by error (the first row that matches):

    UnsupportedMediaType          415   the body's Content-Type is not taken
    BodyTooLarge, EventTooLarge   413   code 1004
    BodyTimeout                   408   the body did not arrive in time
    InvalidInput (any 10xx)       400   topic, pattern, event, position, parameter
    Revoked 403, Unauthorized 401, Forbidden 403, TooManyRevocations 409, LimitExceeded 429
    UnknownGroup, UnknownDeadLetter 404; GroupConflict, DeliveryGone 409 (consumer groups)
    UnknownSchema 404; SchemaIncompatible 409 (the schema registry)
    UnknownEndpoint               404   an inbound webhook endpoint (WebhookRefused: 401 above)
    BusClosed, EngineUnavailable  503   with Retry-After: the server is going away / try later
    EngineError, anything else    500   no details: they stay in the server's log
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import msgspec
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from hybridbus.errors import (
    BusClosed,
    BusError,
    DeliveryGone,
    EngineError,
    EngineUnavailable,
    ErrorCode,
    EventTooLarge,
    Forbidden,
    GroupConflict,
    InvalidInput,
    LimitExceeded,
    NotCoordinator,
    PatchTooOld,
    RateLimited,
    Revoked,
    SchemaIncompatible,
    StateConflict,
    StateTooLarge,
    TooManyRevocations,
    Unauthorized,
    UnknownDeadLetter,
    UnknownEndpoint,
    UnknownGroup,
    UnknownSchema,
    public_message,
)
from hybridbus.hub.guard import Principal

__all__ = [
    "JSON_CONTENT_TYPE",
    "PROBLEM_CONTENT_TYPE",
    "Action",
    "Authorize",
    "BadParameter",
    "BodyTimeout",
    "BodyTooLarge",
    "Charge",
    "Handler",
    "UnsupportedMediaType",
    "allow_all",
    "charge_nothing",
    "guarded",
    "json_response",
    "problem",
    "public_detail",
    "query_all",
    "query_bool",
    "query_int",
    "query_text",
    "read_body",
    "required_text",
    "status_of",
]

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
JSON_CONTENT_TYPE: Final = "application/json"
PROBLEM_TYPE_PREFIX: Final = "urn:hybridbus:error:"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Action = Literal["publish", "read", "subscribe", "presence", "list"]
# The authorization hook: called before a handler touches the bus with what
# the request wants to do and to which absolute topic or pattern (the prefix
# for "list"). It returns to allow, raises a BusError to refuse.
Authorize = Callable[[web.Request, Action, str], Awaitable[None]]


async def allow_all(request: web.Request, action: Action, target: str) -> None:
    """An authorization hook that allows everything: for tests and embedding.

    `hybridbus serve` uses `gateways.access.HttpAccess.authorize` instead.
    """


# Count a request's publishes (one per event of a batch) once `authorize` allowed it:
# raise (e.g. `RateLimited`) to refuse them all before anything is published.
Charge = Callable[[web.Request, int], Awaitable[None]]


async def charge_nothing(request: web.Request, publishes: int) -> None:
    """A charge hook that counts nothing: for tests and embedding."""


class BadParameter(InvalidInput):
    """A query parameter or header is missing or malformed; `parameter` names it."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def tenant_and_name(principal: Principal, name: str, what: str) -> tuple[str, str]:
    """(tenant, name) of a per-tenant thing the principal names (an admin: `<tenant>/<name>`)."""
    if principal.identity.admin:
        tenant, sep, rest = name.partition("/")
        if not sep or not tenant or not rest:
            raise BadParameter(
                f"an admin names {what} '<tenant>/<name>', not {name!r:.140}", "name"
            )
        return tenant, rest
    return principal.tenant, name


class UnsupportedMediaType(InvalidInput):
    """The request body is in a media type the route does not take."""


class BodyTooLarge(InvalidInput):
    """The request body is over the gateway's limit."""

    code = ErrorCode.EVENT_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the limit of {limit} bytes")
        self.limit = limit


class BodyTimeout(InvalidInput):
    """The request body did not arrive in time."""


_STATUS: Final[tuple[tuple[type[BusError], int], ...]] = (
    (UnsupportedMediaType, 415),
    (BodyTooLarge, 413),
    (EventTooLarge, 413),
    (BodyTimeout, 408),
    (InvalidInput, 400),
    (Revoked, 403),  # an Unauthorized, but the credentials were good: 403, no WWW-Authenticate
    (Unauthorized, 401),
    (Forbidden, 403),
    (TooManyRevocations, 409),  # a full store, not a rate: waiting a little does not help
    (LimitExceeded, 429),
    (UnknownGroup, 404),  # or one the caller may not see: its existence is not disclosed
    (UnknownDeadLetter, 404),
    (UnknownEndpoint, 404),  # an inbound webhook endpoint: the URL is wrong
    (GroupConflict, 409),  # the group exists over another pattern
    (DeliveryGone, 409),  # settled, or its lease ended and it went on: not the caller's now
    (NotCoordinator, 503),  # no node known to coordinate the group (else the routes answer 307)
    (UnknownSchema, 404),
    (SchemaIncompatible, 409),  # the type's compatibility mode refuses the new version
    (StateConflict, 412),  # a state patch's If-Match lost (gateways/states_http.py)
    (PatchTooOld, 409),
    (StateTooLarge, 413),
    (BusClosed, 503),
    (EngineUnavailable, 503),
)

# What peers learn of server-side failures: the details stay in the log.
_HIDDEN: Final = {
    503: "the log cannot serve now; try again later",
    500: "the server failed; the details are in its log",
}


def status_of(error: BusError) -> int:
    """The HTTP status that answers `error`."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def json_response(
    body: object, status: int = 200, content_type: str = JSON_CONTENT_TYPE
) -> web.Response:
    """A JSON response encoded with msgspec (structs, `msgspec.Raw` and builtins)."""
    return web.Response(body=msgspec.json.encode(body), status=status, content_type=content_type)


def public_detail(error: BusError) -> str:
    """What a peer may learn of `error`: server-side details stay in the log."""
    return public_message(error)


def problem(error: BusError | None, **members: Any) -> web.Response:
    """The problem+json response for `error` (None: an unexpected failure, 1399).

    `members` are extra members (e.g. `index` of a batch's bad event).
    """
    if error is None:
        status, code, retriable = 500, int(ErrorCode.INTERNAL_ERROR), False
        detail = _HIDDEN[500]
    else:
        status, code, retriable = status_of(error), int(error.code), error.retriable
        detail = public_detail(error)
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = "ERROR"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + name.lower().replace("_", "-"),
        "title": name.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
        "retriable": retriable,
    }
    for member in ("attribute", "parameter", "path"):
        value = getattr(error, member, None)
        if value is not None:
            body[member] = value
    body.update(members)
    for key, value in body.items():
        if isinstance(value, str):
            # Peer input quoted in a message may hold lone surrogates (from
            # undecodable header bytes): JSON cannot carry them.
            body[key] = value.encode("utf-8", "backslashreplace").decode()
    response = json_response(body, status, PROBLEM_CONTENT_TYPE)
    if status == 503:
        response.headers["Retry-After"] = "1"
    elif isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    elif status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="hybridbus"'

    return response


def guarded(handler: Handler) -> Handler:
    """`handler`, answering every error it raises with a problem instead of failing."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BusError as exc:
            if isinstance(exc, EngineError):  # the engine logged its cause (once, rate-limited)
                log.debug("%s %s: %s", request.method, request.path, exc)
            return problem(exc)
        except (web.HTTPException, ConnectionError):
            raise  # aiohttp's own answers; a client that left needs none
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return problem(None)

    return guard


async def read_body(request: web.Request, limit: int, within: float) -> bytes:
    """The request body, refused if over `limit` bytes or slower than `within` seconds."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {within:g} s") from None
    except (HttpProcessingError, ClientPayloadError, ConnectionError) as exc:
        # A broken body, or one the client broke off (then no one reads the answer).
        raise InvalidInput(f"the request body could not be read: {exc}") from exc
    return b"".join(chunks)


def _query_values(request: web.Request, name: str) -> list[str]:
    # A '+' in the query is a '+' (RFC 3986), not a space as in HTML forms: no
    # parameter here may hold a space, and `?pattern=acme/docs/+` reads as meant.
    raw = request.rel_url.raw_query_string
    if not raw:
        return []
    pairs = parse_qsl(raw.replace("+", "%2B"), keep_blank_values=True, errors="replace")
    return [value for key, value in pairs if key == name]


def query_all(request: web.Request, name: str) -> list[str]:
    """Every value of the repeatable query parameter `name` (each printable), in order."""
    values = _query_values(request, name)
    for value in values:
        if not value.isprintable():
            raise BadParameter(f"the query parameter {name!r} holds control characters", name)
    return values


def required_text(request: web.Request, name: str) -> str:
    """The query parameter `name`, which must be there (see `query_text`)."""
    value = query_text(request, name, required=True)
    assert value is not None
    return value


def query_text(request: web.Request, name: str, *, required: bool = False) -> str | None:
    """The query parameter `name` (at most once, printable), or None if absent."""
    values = _query_values(request, name)
    if not values:
        if required:
            raise BadParameter(f"the query parameter {name!r} is required", name)
        return None
    if len(values) > 1:
        raise BadParameter(f"the query parameter {name!r} is given {len(values)} times", name)
    value = values[0]
    if not value.isprintable():
        raise BadParameter(f"the query parameter {name!r} holds control characters", name)
    return value


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter `name` in [low, high], or `default` if absent."""
    text = query_text(request, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or not low <= int(text) <= high:
        raise BadParameter(f"{name} must be an integer from {low} to {high}, not {text!r}", name)
    return int(text)


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    """The boolean query parameter `name` (true/false/1/0), or `default` if absent."""
    text = query_text(request, name)
    if text is None:
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise BadParameter(f"{name} must be true or false, not {text!r}", name)
