"""The console part of the OpenAPI document: `/v1/whoami` and `/v1/stats`.

Owns: the paths and schemas of the JSON routes of `gateways.console`, which
`gateways.openapi.document()` merges into the one document (the console's
static files under `/console/` are not API routes). Must not import the
gateway: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, json_answer

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]

_COUNT: Final = {"type": "number", "minimum": 0}
_BY: Final = {"type": "object", "additionalProperties": _COUNT}

SCHEMAS: Final[dict[str, Any]] = {
    "WhoAmI": {
        "type": "object",
        "required": ["tenant", "user", "roles", "admin", "anonymous", "expires"],
        "properties": {
            "tenant": STRING,
            "user": {"type": ["string", "null"], "description": "the token's sub"},
            "roles": {"type": "array", "items": STRING},
            "admin": {"type": "boolean", "description": "an operator: absolute topics"},
            "anonymous": {"type": "boolean"},
            "expires": {"type": ["number", "null"], "description": "Unix seconds"},
        },
    },
    "Stats": {
        "type": "object",
        "required": [
            "time",
            "connections",
            "subscriptions",
            "publishes",
            "duplicates",
            "deliveries",
            "drops",
            "disconnects",
            "webhook_attempts",
            "webhook_refused",
            "errors",
            "latency",
        ],
        "properties": {
            "time": {"type": "number", "description": "Unix seconds, when read"},
            "connections": {**_BY, "description": "open, by transport"},
            "subscriptions": {**_BY, "description": "active, by transport"},
            "publishes": {**_COUNT, "description": "since the node started"},
            "duplicates": _COUNT,
            "deliveries": _COUNT,
            "drops": {**_BY, "description": "deliveries dropped, by reason"},
            "disconnects": {**_BY, "description": "connections closed, by close code"},
            "webhook_attempts": {**_BY, "description": "outbound attempts, by outcome"},
            "webhook_refused": _COUNT,
            "errors": {**_COUNT, "description": "drops + refused + failed attempts"},
            "latency": {
                "type": "object",
                "required": ["buckets", "count", "sum"],
                "description": "publish → delivery, seconds: the cumulative histogram",
                "properties": {
                    "buckets": {
                        "type": "array",
                        "items": {"type": "array", "prefixItems": [STRING, _COUNT]},
                        "description": "[upper bound (le, '+Inf' last), count at or below]",
                    },
                    "count": _COUNT,
                    "sum": _COUNT,
                },
            },
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The paths of `gateways.console`; `problems(*statuses)` refers to the problem answers."""
    return {
        "/v1/whoami": {
            "get": {
                "operationId": "whoami",
                "summary": "Who the credentials are",
                "responses": {
                    "200": json_answer("WhoAmI", "The caller's tenant, user and roles."),
                    **problems(401, 403, 500),
                },
            },
        },
        "/v1/stats": {
            "get": {
                "operationId": "stats",
                "summary": "This node's counters, for the console's charts (admins only)",
                "responses": {
                    "200": json_answer("Stats", "Counters since the node started."),
                    **problems(401, 403, 500),
                },
            },
        },
    }
