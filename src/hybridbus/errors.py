"""One exception tree for all of hybridbus, and the public error codes.

Owns: every exception a caller of hybridbus can catch, and the numeric codes
that name them on the wire. Must not import anything else of hybridbus, so
every layer can raise from here.

    BusError                        code      retriable
    ├── InvalidInput                1000-1099 no: the same request fails again
    │   ├── InvalidEvent            1001      (names the attribute)
    │   │   └── SchemaViolation     1007      the data fails its type's schema (names the
    │   │                                     JSON path: `data.items[2].qty`)
    │   ├── InvalidTopic            1002
    │   ├── InvalidPattern          1003
    │   ├── EventTooLarge           1004
    │   ├── InvalidPosition         1005
    │   ├── InvalidSettings         1006      (a group's settings; names the field)
    │   ├── InvalidSchema           1008      not a usable JSON Schema, type name, mode or
    │   │                                     version (docs/schemas.md)
    │   └── ProtocolError           1010-1099 (per instance; the wire protocol)
    │         1010 MALFORMED_MESSAGE      no: the connection is closed
    │         1011 UNKNOWN_COMMAND        no
    │         1012 INVALID_COMMAND        no (names the field)
    │         1013 ALREADY_SUBSCRIBED     no
    │         1014 NOT_SUBSCRIBED         no
    │         1015 TOO_MANY_SUBSCRIPTIONS no
    │         1016 TOO_MANY_COMMANDS      yes: wait for replies, then send again
    ├── AccessError                 1100-1199 who may do what (docs/security.md)
    │   ├── Unauthorized            1100      no: credentials missing or not valid
    │   │   ├── TokenExpired        1101      no: get a new token (or `refresh`)
    │   │   ├── TokenInvalid        1102      no: bad signature, algorithm, claims
    │   │   │   └── TokenLifetimeExceeded 1105  no: `exp` too far from `iat` or now
    │   │   ├── UnknownKey          1103      no: the token's `kid` is not configured
    │   │   ├── Revoked             1104      no: the token, session or user is revoked
    │   │   └── WebhookRefused      1130      no: an inbound webhook's signature is
    │   │       │                             missing or matches no key of its endpoint
    │   │       └── TimestampOutOfWindow 1131 no: its signed timestamp is outside the
    │   │                                     endpoint's replay window (a replay, a clock)
    │   ├── Forbidden               1110      no: the rules do not allow this operation
    │   ├── UnknownEndpoint         1132      no: no inbound webhook endpoint of that name
    │   └── LimitExceeded           1120-1129
    │       ├── RateLimited         1121      yes: after `retry_after` seconds
    │       ├── TooManyConnections  1122      yes: once another connection closes
    │       └── TooManyRevocations  1123      no: the tenant holds its maximum
    ├── SubscriptionEnded           1200-1299
    │   ├── SubscriberTooSlow       1201      yes: resubscribe from `sub.position`
    │   └── ContinuityLost          1202      yes: events were missed; go on reading
    ├── BusClosed                   1210      no
    ├── Disconnected                1220      client: the server closed for good
    │   └── ConnectFailed           1220      client: the first connection failed
    ├── RemoteError                 (the server's code) client: a command failed
    ├── SchemaError                 1500-1599 the schema registry (docs/schemas.md)
    │   ├── UnknownSchema           1501      no: no schema of that type (or version)
    │   └── SchemaIncompatible      1502      no: the new version breaks the type's
    │                                         compatibility mode (names the path)
    ├── SessionRefused              1620      no: a connect's `session` belongs to another
    │                                         user, or its secret is wrong (close 4502)
    ├── InvalidCursor               1621      no: a `presence` page cursor that cannot be
    │                                         read (ask for the first page again)
    ├── YjsMessageInvalid           1600      no: a y-protocols message that does not decode
    │   └── YjsUpdateInvalid        1601      no: a Yjs update the document cannot apply
    ├── StateConflict               1640      no: a state patch's `if_version` is not the
    │                                         document's version (`version`: the current one)
    ├── PatchTooOld                 1641      no: a Lamport-ordered state patch is older than
    │                                         the document's reorder window
    ├── StateTooLarge               1642      no: the patched document would be over its limit
    ├── AwarenessTooManyKeys        1643      no: a client's awareness state has too many keys
    ├── AwarenessStateTooLarge      1644      no: an awareness value is over its byte limit
    ├── GroupError                  1400-1499 consumer groups (docs/groups.md)
    │   ├── UnknownGroup            1401      no: no group of that name in the tenant
    │   ├── GroupConflict           1402      no: the group exists with another pattern
    │   ├── DeliveryGone            1403      no: the delivery is no longer held (settled,
    │   │                                     or its lease ended and it went on)
    │   ├── UnknownDeadLetter       1404      no: no dead letter of that id
    │   └── NotCoordinator          1405      yes: another node coordinates the group now;
    │                                         `node` names it, `url` is where to go (HTTP
    │                                         307 Location, the WebSocket error's `url`)
    └── EngineError                 1300-1399
        ├── EngineUnavailable       1301      yes: try again later
        │   ├── EngineLocked        1303      yes: another process holds the data
        │   │                                 directory (names its pid and the path)
        │   ├── EngineReadOnly      1304      yes: the data directory or database is
        │   │                                 not writable (names the path)
        │   └── RegistryUnavailable 1310      yes: the node registry (Redis, etcd) cannot
        │                                     be reached; the node keeps serving
        └── EngineCorrupt           1302      no: the stored log cannot be read
    (no class)                      1399      INTERNAL_ERROR, wire only: an
                                              unexpected failure; the details
                                              stay in the server's log

Codes are stable: a code, once published, keeps its meaning. Ranges say what a
client should do: 1000-1099 fix the request (1000-1009 the data, 1010-1099 the
wire-protocol command carrying it, see `hybridbus.proto` and docs/protocol.md);
1100-1199 get other credentials or permissions (or slow down: 1120-1129);
1200-1299 the subscription is over (resubscribe if retriable); 1300-1399 the
server side failed; 1400-1499 a consumer group refused the request; 1500-1599
the schema registry refused the request.
"""

from __future__ import annotations

from pathlib import Path

from hybridbus.error_codes import ErrorCode

__all__ = [
    "AccessError",
    "AwarenessStateTooLarge",
    "AwarenessTooManyKeys",
    "BusClosed",
    "BusError",
    "ConnectFailed",
    "ContinuityLost",
    "DeliveryGone",
    "Disconnected",
    "EngineCorrupt",
    "EngineError",
    "EngineLocked",
    "EngineReadOnly",
    "EngineUnavailable",
    "ErrorCode",
    "EventTooLarge",
    "Forbidden",
    "GroupConflict",
    "GroupError",
    "InvalidCursor",
    "InvalidEvent",
    "InvalidInput",
    "InvalidPattern",
    "InvalidPosition",
    "InvalidSchema",
    "InvalidSettings",
    "InvalidTopic",
    "LimitExceeded",
    "NotCoordinator",
    "PatchTooOld",
    "ProtocolError",
    "RateLimited",
    "RegistryUnavailable",
    "RemoteError",
    "Revoked",
    "SchemaError",
    "SchemaIncompatible",
    "SchemaViolation",
    "SessionRefused",
    "StateConflict",
    "StateTooLarge",
    "SubscriberTooSlow",
    "SubscriptionEnded",
    "TimestampOutOfWindow",
    "TokenExpired",
    "TokenInvalid",
    "TokenLifetimeExceeded",
    "TooManyConnections",
    "TooManyRevocations",
    "Unauthorized",
    "UnknownDeadLetter",
    "UnknownEndpoint",
    "UnknownGroup",
    "UnknownKey",
    "UnknownSchema",
    "WebhookRefused",
    "YjsMessageInvalid",
    "YjsUpdateInvalid",
    "public_message",
]


class BusError(Exception):
    """Root of every hybridbus error. `code` is public; `retriable` is advice."""

    code: ErrorCode = ErrorCode.INVALID_INPUT
    retriable: bool = False


class InvalidInput(BusError):
    """The caller sent something hybridbus refuses; nothing was changed."""

    code = ErrorCode.INVALID_INPUT


class InvalidEvent(InvalidInput):
    """An event is not a valid CloudEvent; `attribute` names the culprit."""

    code = ErrorCode.INVALID_EVENT

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class SchemaViolation(InvalidEvent):
    """An event's data does not match the schema registered for its type.

    `path` names where, as `data.items[2].qty` (`data` itself: the whole
    value); `uri` is the schema version's URI (docs/schemas.md).
    """

    code = ErrorCode.SCHEMA_VIOLATION

    def __init__(self, message: str, path: str = "data", uri: str | None = None) -> None:
        super().__init__(message, "data")
        self.path = path
        self.uri = uri


class InvalidTopic(InvalidInput):
    """A topic name is malformed (empty segment, wildcard, too long...)."""

    code = ErrorCode.INVALID_TOPIC


class InvalidPattern(InvalidInput):
    """A subscription pattern is malformed (`#` not last, `a+`...)."""

    code = ErrorCode.INVALID_PATTERN


class EventTooLarge(InvalidInput):
    """An encoded event is over the configured size limit."""

    code = ErrorCode.EVENT_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes encoded, over the limit of {limit}")
        self.size = size
        self.limit = limit


class InvalidPosition(InvalidInput):
    """A resume token could not be decoded."""

    code = ErrorCode.INVALID_POSITION


class InvalidSettings(InvalidInput):
    """A consumer group's settings are not valid (the message names the field)."""

    code = ErrorCode.INVALID_SETTINGS


class InvalidSchema(InvalidInput):
    """Not a usable JSON Schema (Draft 2020-12), type name, mode or version (names which)."""

    code = ErrorCode.INVALID_SCHEMA


class ProtocolError(InvalidInput):
    """A peer's message broke the wire protocol (docs/protocol.md).

    `code` is one of 1010-1099 and is set per instance; `id` is the command id
    when it could be read (the session then answers that command with an error
    and goes on), None when it could not (the session closes the connection).
    """

    code = ErrorCode.MALFORMED_MESSAGE

    def __init__(self, code: ErrorCode, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = id
        self.retriable = code is ErrorCode.TOO_MANY_COMMANDS


class AccessError(BusError):
    """Who may do what: credentials, permissions, limits. Nothing was changed."""

    code = ErrorCode.UNAUTHORIZED


class Unauthorized(AccessError):
    """Credentials are missing or not valid; the message says which check failed."""

    code = ErrorCode.UNAUTHORIZED


class TokenExpired(Unauthorized):
    """The token's `exp` has passed."""

    code = ErrorCode.TOKEN_EXPIRED


class TokenInvalid(Unauthorized):
    """The token is malformed, badly signed, of a refused algorithm, or has wrong claims."""

    code = ErrorCode.TOKEN_INVALID


class TokenLifetimeExceeded(TokenInvalid):
    """The token lives longer than the server accepts (`max_token_lifetime`).

    Its `exp` is more than the maximum after its `iat`, or after now.
    """

    code = ErrorCode.TOKEN_LIFETIME_EXCEEDED


class UnknownKey(Unauthorized):
    """The token names a key id (`kid`) that is not configured."""

    code = ErrorCode.UNKNOWN_KEY


class Revoked(Unauthorized):
    """The token, its session or its user has been revoked."""

    code = ErrorCode.REVOKED


class WebhookRefused(Unauthorized):
    """An inbound webhook failed its endpoint's check: no valid signature (its body is dropped).

    The message says which check failed; it never quotes a secret.
    """

    code = ErrorCode.SIGNATURE_INVALID


class TimestampOutOfWindow(WebhookRefused):
    """An inbound webhook's signed timestamp is outside its endpoint's window (default ±5 min)."""

    code = ErrorCode.TIMESTAMP_OUT_OF_WINDOW


class UnknownEndpoint(AccessError):
    """No inbound webhook endpoint of that name (in that tenant, or one the caller may see)."""

    code = ErrorCode.UNKNOWN_ENDPOINT


class Forbidden(AccessError):
    """The credentials are valid, but the rules do not allow this operation here."""

    code = ErrorCode.FORBIDDEN


class LimitExceeded(AccessError):
    """A configured limit was reached; `retriable` says whether waiting helps."""

    code = ErrorCode.LIMIT_EXCEEDED


class RateLimited(LimitExceeded):
    """Over the publish rate; try again after `retry_after` seconds."""

    code = ErrorCode.RATE_LIMITED
    retriable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyConnections(LimitExceeded):
    """The user already holds the maximum number of connections."""

    code = ErrorCode.TOO_MANY_CONNECTIONS
    retriable = True


class TooManyRevocations(LimitExceeded):
    """The tenant already holds `max_revocations_per_tenant` live revocations.

    Not retriable soon: room comes back as revocations lapse (at most the
    longest token lifetime later).
    """

    code = ErrorCode.TOO_MANY_REVOCATIONS


class SubscriptionEnded(BusError):
    """A subscription is over; iterating it raises this."""

    code = ErrorCode.SUBSCRIPTION_ENDED


class SubscriberTooSlow(SubscriptionEnded):
    """The subscriber's bounded queue overflowed; resubscribe from its position."""

    code = ErrorCode.SUBSCRIBER_TOO_SLOW
    retriable = True


class ContinuityLost(SubscriptionEnded):
    """Events between two deliveries could not be recovered (retention, another epoch).

    Raised once by a client subscription's iterator at the gap; iterating
    again goes on with the events after it.
    """

    code = ErrorCode.CONTINUITY_LOST
    retriable = True


class Disconnected(BusError):
    """A client's connection was closed by the server with a terminal code, or by `close`.

    `close_code` is the WebSocket close code (see `hybridbus.proto.codes`).
    """

    code = ErrorCode.DISCONNECTED

    def __init__(self, close_code: int | None, reason: str) -> None:
        super().__init__(f"disconnected ({close_code}): {reason}")
        self.close_code = close_code
        self.reason = reason


class ConnectFailed(Disconnected):
    """A client's first connection to `url` failed: `reason` says why (`close_code`: the server's).

    Raised at once by `connect()`; only a client that was connected once reconnects by itself.
    """

    def __init__(self, url: str, close_code: int | None, reason: str) -> None:
        super().__init__(close_code, reason)
        self.url = url
        self.args = (f"cannot connect to {url}: {reason}",)


class RemoteError(BusError):
    """The server answered a command with an error; `code` is the server's code."""

    def __init__(
        self, code: int, message: str, retriable: bool, node: str = "", url: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[assignment]  # the server's code, maybe one we don't know
        self.retriable = retriable
        # NOT_COORDINATOR (1405): the node coordinating the group, and where it listens.
        self.node = node
        self.url = url


class BusClosed(BusError):
    """The bus (or its engine) is closed."""

    code = ErrorCode.BUS_CLOSED


class GroupError(BusError):
    """A consumer group refused the request."""

    code = ErrorCode.GROUP_ERROR


class UnknownGroup(GroupError):
    """No group of that name (in that tenant)."""

    code = ErrorCode.UNKNOWN_GROUP


class GroupConflict(GroupError):
    """The group exists with another pattern (a group's pattern never changes)."""

    code = ErrorCode.GROUP_CONFLICT


class DeliveryGone(GroupError):
    """The delivery is no longer held by the caller: settled, or its lease ended and it went on."""

    code = ErrorCode.DELIVERY_GONE


class UnknownDeadLetter(GroupError):
    """No dead letter of that id in the group."""

    code = ErrorCode.UNKNOWN_DEAD_LETTER


class NotCoordinator(GroupError):
    """Another node coordinates the group (holds its lease): ask that one (docs/groups.md).

    `node` is the holder's node id ("" if none is known: try again), `url`
    its HTTP base URL from the node registry ("" if it is not registered).
    From an engine's `write_groups`, `groups` names the groups whose fence
    was stale: nothing of the call was written.
    """

    code = ErrorCode.NOT_COORDINATOR
    retriable = True

    def __init__(
        self, message: str, node: str = "", url: str = "", groups: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.node = node
        self.url = url
        self.groups = groups


class SessionRefused(Forbidden):
    """A connect presented a session of another user, or a wrong secret: refused (4502).

    The session stays with its owner; connect without `session` for a new one.
    """

    code = ErrorCode.SESSION_REFUSED


class InvalidCursor(InvalidInput):
    """A `presence` cursor that is not one this node handed out: ask for the first page."""

    code = ErrorCode.INVALID_CURSOR


class YjsMessageInvalid(BusError):
    """A Yjs WebSocket message does not decode (`core.yjs_protocol`): the socket closes 4400."""

    code = ErrorCode.YJS_MESSAGE_INVALID


class YjsUpdateInvalid(YjsMessageInvalid):
    """A Yjs update that pycrdt cannot apply: nothing was stored, the socket closes 4400."""

    code = ErrorCode.YJS_UPDATE_INVALID


class StateConflict(BusError):
    """A state patch's `if_version` is not the document's version: nothing was changed.

    `version` is the document's version now: read it (or wait for its
    patches), decide again, and patch with the new version
    (docs/collaboration.md, "State topics").
    """

    code = ErrorCode.STATE_CONFLICT

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class PatchTooOld(BusError):
    """A Lamport-ordered state patch sorts before the document's reorder window (not applied)."""

    code = ErrorCode.PATCH_TOO_OLD


class StateTooLarge(BusError):
    """The state document, patched, would be over its byte limit (not applied)."""

    code = ErrorCode.STATE_TOO_LARGE


class AwarenessTooManyKeys(BusError):
    """A client's awareness state would hold more keys than the limit (nothing was changed)."""

    code = ErrorCode.AWARENESS_TOO_MANY_KEYS


class AwarenessStateTooLarge(BusError):
    """An awareness value is over its byte limit, encoded as JSON (nothing was changed)."""

    code = ErrorCode.AWARENESS_STATE_TOO_LARGE


class SchemaError(BusError):
    """The schema registry refused a request (docs/schemas.md)."""

    code = ErrorCode.SCHEMA_ERROR


class UnknownSchema(SchemaError):
    """No schema is registered for that type in the tenant (or not that version)."""

    code = ErrorCode.UNKNOWN_SCHEMA


class SchemaIncompatible(SchemaError):
    """A new schema version breaks its type's compatibility mode.

    `path` is where, in the schema, as a JSON pointer (`#/properties/qty`);
    `kinds` the differences found there (`TYPE_NARROWED`, ...).
    """

    code = ErrorCode.SCHEMA_INCOMPATIBLE

    def __init__(self, message: str, path: str = "#", kinds: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.kinds = kinds


class EngineError(BusError):
    """The engine failed; the driver's exception is the `__cause__`."""

    code = ErrorCode.ENGINE_ERROR


class EngineUnavailable(EngineError):
    """The engine cannot serve now (disk full, locked, unreachable)."""

    code = ErrorCode.ENGINE_UNAVAILABLE
    retriable = True


class EngineLocked(EngineUnavailable):
    """Another process holds the engine's data directory: one process per directory.

    `path` is the directory, `pid` the holder's process id (None if it could
    not be read). Raised when opening; the lock goes with its holder.
    """

    code = ErrorCode.ENGINE_LOCKED

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"the data directory {path} is in use by {holder}: stop it, or give this "
            "one another directory"
        )
        self.path = path
        self.pid = pid

    def __reduce__(self) -> tuple[type[EngineLocked], tuple[Path, int | None]]:
        return type(self), (self.path, self.pid)  # copies and pickles rebuild the message


class EngineReadOnly(EngineUnavailable):
    """The engine's data directory or database file is not writable; `path` names it."""

    code = ErrorCode.ENGINE_READ_ONLY

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path} is read-only (not writable by this process): {detail}")
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[type[EngineReadOnly], tuple[Path, str]]:
        return type(self), (self.path, self.detail)  # copies and pickles rebuild the message


class RegistryUnavailable(EngineUnavailable):
    """The node registry (Redis or etcd: `server.registry`) cannot be reached now.

    Only `/v1/nodes` fails with it (HTTP 503); the node keeps serving and
    retries its heartbeat with backoff.
    """

    code = ErrorCode.REGISTRY_UNAVAILABLE


class EngineCorrupt(EngineError):
    """Stored data could not be decoded."""

    code = ErrorCode.ENGINE_CORRUPT


def public_message(error: BusError) -> str:
    """What a peer may learn of `error`: the details of server-side failures stay in the log.

    Every way in (WebSocket error replies, HTTP problems, SSE endings) answers with this.
    """
    if isinstance(error, RegistryUnavailable):
        return "the node registry cannot be reached now; try again later"
    if isinstance(error, EngineUnavailable):
        return "the log cannot serve now; try again later"
    if isinstance(error, EngineError):
        return "the server failed; the details are in its log"
    if isinstance(error, BusClosed):
        return "the server is shutting down; try another one or later"
    return str(error)
