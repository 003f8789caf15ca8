"""One exception tree for all of hybridbus, and the public error codes.

Owns: every exception a caller of hybridbus can catch, and the numeric codes
that name them on the wire. Must not import anything else of hybridbus, so
every layer can raise from here.

    BusError                        code      retriable
    ├── InvalidInput                1000-1099 no: the same request fails again
    │   ├── InvalidEvent            1001      (names the attribute)
    │   ├── InvalidTopic            1002
    │   ├── InvalidPattern          1003
    │   ├── EventTooLarge           1004
    │   └── InvalidPosition         1005
    ├── SubscriptionEnded           1200-1299
    │   └── SubscriberTooSlow       1201      yes: resubscribe from `sub.position`
    ├── BusClosed                   1210      no
    └── EngineError                 1300-1399
        ├── EngineUnavailable       1301      yes: try again later
        └── EngineCorrupt           1302      no: the stored log cannot be read

Codes are stable: a code, once published, keeps its meaning. Ranges say what a
client should do: 1000-1099 fix the request; 1200-1299 the subscription is over
(resubscribe if retriable); 1300-1399 the server side failed.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "BusClosed",
    "BusError",
    "EngineCorrupt",
    "EngineError",
    "EngineUnavailable",
    "ErrorCode",
    "EventTooLarge",
    "InvalidEvent",
    "InvalidInput",
    "InvalidPattern",
    "InvalidPosition",
    "InvalidTopic",
    "SubscriberTooSlow",
    "SubscriptionEnded",
]


class ErrorCode(IntEnum):
    """Public error codes; see the module docstring for the ranges."""

    INVALID_INPUT = 1000
    INVALID_EVENT = 1001
    INVALID_TOPIC = 1002
    INVALID_PATTERN = 1003
    EVENT_TOO_LARGE = 1004
    INVALID_POSITION = 1005
    SUBSCRIPTION_ENDED = 1200
    SUBSCRIBER_TOO_SLOW = 1201
    BUS_CLOSED = 1210
    ENGINE_ERROR = 1300
    ENGINE_UNAVAILABLE = 1301
    ENGINE_CORRUPT = 1302


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


class SubscriptionEnded(BusError):
    """A subscription is over; iterating it raises this."""

    code = ErrorCode.SUBSCRIPTION_ENDED


class SubscriberTooSlow(SubscriptionEnded):
    """The subscriber's bounded queue overflowed; resubscribe from its position."""

    code = ErrorCode.SUBSCRIBER_TOO_SLOW
    retriable = True


class BusClosed(BusError):
    """The bus (or its engine) is closed."""

    code = ErrorCode.BUS_CLOSED


class EngineError(BusError):
    """The engine failed; the driver's exception is the `__cause__`."""

    code = ErrorCode.ENGINE_ERROR


class EngineUnavailable(EngineError):
    """The engine cannot serve now (disk full, locked, unreachable)."""

    code = ErrorCode.ENGINE_UNAVAILABLE
    retriable = True


class EngineCorrupt(EngineError):
    """Stored data could not be decoded."""

    code = ErrorCode.ENGINE_CORRUPT
