"""The bridges part of the OpenAPI document: `/v1/bridges`.

Owns: the path and schemas of the route of `gateways.bridges`, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateway: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, json_answer, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]

_COUNT: Final = {"type": "integer", "minimum": 0}
_TIME: Final = {"type": ["number", "null"], "description": "Unix seconds"}

SCHEMAS: Final[dict[str, Any]] = {
    "BridgeInfo": {
        "type": "object",
        "required": [
            "name",
            "kind",
            "direction",
            "state",
            "lag",
            "received",
            "delivered",
            "duplicates",
            "rejected",
            "errors",
            "last_error",
            "last_error_time",
            "connected_since",
            "group",
            "position",
            "settings",
        ],
        "properties": {
            "name": STRING,
            "kind": {**STRING, "description": "mqtt, postgres, kafka, amqp"},
            "direction": {"enum": ["in", "out"]},
            "state": {"enum": ["starting", "running", "reconnecting", "stopped"]},
            "lag": {**_COUNT, "description": "messages or events not yet confirmed"},
            "received": {**_COUNT, "description": "taken from the source side"},
            "delivered": {**_COUNT, "description": "written to the target side and confirmed"},
            "duplicates": {**_COUNT, "description": "appends the bus's dedupe window dropped"},
            "rejected": {**_COUNT, "description": "messages that could not become events"},
            "errors": {**_COUNT, "description": "failed attempts and lost connections"},
            "last_error": STRING,
            "last_error_time": _TIME,
            "connected_since": _TIME,
            "group": {
                "type": ["string", "null"],
                "description": "the consumer group of an 'out' bridge: <tenant>/bridge.<name>",
            },
            "position": {"type": ["string", "null"], "description": "where it is in the log"},
            "settings": {
                "type": "object",
                "description": "its [[bridges]] table, passwords shown as ***",
            },
        },
    },
    "Bridges": {
        "type": "object",
        "required": ["bridges"],
        "properties": {"bridges": {"type": "array", "items": ref("schemas", "BridgeInfo")}},
    },
}

PARAMETERS: Final[dict[str, Any]] = {}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The path of `gateways.bridges`; `problems(*statuses)` refers to the problem answers."""
    return {
        "/v1/bridges": {
            "get": {
                "operationId": "bridges",
                "summary": "The bridges of this node the caller may manage (admins: all)",
                "responses": {
                    "200": json_answer("Bridges", "State, lag and counters of each, by name."),
                    **problems(401, 403, 500),
                },
            },
        },
    }
