"""The public error codes: one number per kind of refusal, shared by every way in.

Owns: `ErrorCode`, the codes `errors.py`'s exception tree carries (its module
docstring draws the tree and the ranges; docs/errors.md and docs/protocol.md
§10 list them). Imported through `hybridbus.errors`, which re-exports it.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ErrorCode"]


class ErrorCode(IntEnum):
    """Public error codes; see the module docstring for the ranges."""

    INVALID_INPUT = 1000
    INVALID_EVENT = 1001
    INVALID_TOPIC = 1002
    INVALID_PATTERN = 1003
    EVENT_TOO_LARGE = 1004
    INVALID_POSITION = 1005
    INVALID_SETTINGS = 1006
    SCHEMA_VIOLATION = 1007
    INVALID_SCHEMA = 1008
    # 1010-1099: the wire protocol (hybridbus.proto, docs/protocol.md).
    MALFORMED_MESSAGE = 1010
    UNKNOWN_COMMAND = 1011
    INVALID_COMMAND = 1012
    ALREADY_SUBSCRIBED = 1013
    NOT_SUBSCRIBED = 1014
    TOO_MANY_SUBSCRIPTIONS = 1015
    TOO_MANY_COMMANDS = 1016
    # 1100-1199: access (docs/security.md).
    UNAUTHORIZED = 1100
    TOKEN_EXPIRED = 1101
    TOKEN_INVALID = 1102
    UNKNOWN_KEY = 1103
    REVOKED = 1104
    TOKEN_LIFETIME_EXCEEDED = 1105
    FORBIDDEN = 1110
    LIMIT_EXCEEDED = 1120
    RATE_LIMITED = 1121
    TOO_MANY_CONNECTIONS = 1122
    TOO_MANY_REVOCATIONS = 1123
    # 1130-1139: inbound webhooks (docs/webhooks.md).
    SIGNATURE_INVALID = 1130
    TIMESTAMP_OUT_OF_WINDOW = 1131
    UNKNOWN_ENDPOINT = 1132
    SUBSCRIPTION_ENDED = 1200
    SUBSCRIBER_TOO_SLOW = 1201
    CONTINUITY_LOST = 1202
    BUS_CLOSED = 1210
    DISCONNECTED = 1220
    ENGINE_ERROR = 1300
    ENGINE_UNAVAILABLE = 1301
    ENGINE_CORRUPT = 1302
    ENGINE_LOCKED = 1303
    ENGINE_READ_ONLY = 1304
    REGISTRY_UNAVAILABLE = 1310  # the node registry (docs/scale-out.md)
    INTERNAL_ERROR = 1399
    # 1400-1499: consumer groups (docs/groups.md).
    GROUP_ERROR = 1400
    UNKNOWN_GROUP = 1401
    GROUP_CONFLICT = 1402
    DELIVERY_GONE = 1403
    UNKNOWN_DEAD_LETTER = 1404
    NOT_COORDINATOR = 1405  # another node holds the group's lease (docs/groups.md)
    # 1500-1599: the schema registry (docs/schemas.md).
    SCHEMA_ERROR = 1500
    UNKNOWN_SCHEMA = 1501
    SCHEMA_INCOMPATIBLE = 1502
    # 1600-1619: Yjs documents (docs/collaboration.md, "Documents").
    YJS_MESSAGE_INVALID = 1600  # a y-protocols message that does not decode
    YJS_UPDATE_INVALID = 1601  # a Yjs update the room's document cannot apply
    # 1620-1639: sessions and presence (docs/protocol.md, "Sessions").
    SESSION_REFUSED = 1620  # a connect's `session` is another user's, or its secret is wrong
    INVALID_CURSOR = 1621  # a `presence` cursor this node did not hand out
    # 1640-1659: awareness and state topics (docs/collaboration.md).
    STATE_CONFLICT = 1640
    PATCH_TOO_OLD = 1641
    STATE_TOO_LARGE = 1642
    AWARENESS_TOO_MANY_KEYS = 1643
    AWARENESS_STATE_TOO_LARGE = 1644
