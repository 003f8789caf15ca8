"""The outbound-webhook part of the OpenAPI document: `/v1/webhooks/outbound/...`.

Owns: the paths, parameters and schemas of the routes of
`gateways.webhooks_out`, which `gateways.openapi.document()` merges into the
one document. Must not import the gateway: tests/gateways/test_openapi.py
checks that the document and the registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]


_NUMBER: Final = {"type": "number", "minimum": 0}
_COUNT: Final = {"type": "integer", "minimum": 0}

_FIELDS: Final[dict[str, Any]] = {
    "pattern": {**STRING, "description": "the events to send, relative to the tenant"},
    "url": {**STRING, "format": "uri", "description": "http(s); private targets refused (SSRF)"},
    "mode": {"enum": ["binary", "structured"], "default": "binary"},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 15},
    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 8},
    "rate": {**_NUMBER, "description": "events/s; 0: unlimited", "default": 0},
    "burst": {**_NUMBER, "description": "0: max(1, rate)", "default": 0},
    "ordered": {"type": "boolean", "default": True, "description": "per-key order"},
    "enabled": {"type": "boolean", "default": True},
    "schedule": {
        "type": "array",
        "minItems": 1,
        "items": _NUMBER,
        "description": "seconds before retry 1, 2, ... (the last repeats)",
        "default": [5, 300, 1800, 7200, 18000, 36000, 36000],
    },
    "jitter": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
    "max_deliveries": {"type": "integer", "minimum": 1, "maximum": 100, "default": 8},
    "start": {**STRING, "default": "latest", "description": "latest, earliest or a token"},
}

SCHEMAS: Final[dict[str, Any]] = {
    "OutboundWebhook": {
        "type": "object",
        "required": ["name", "tenant", "pattern", "url", "keys", "origin", "group", "enabled"],
        "properties": {
            "name": STRING,
            "tenant": STRING,
            **_FIELDS,
            "keys": {
                "type": "array",
                "items": STRING,
                "description": "each secret as its key id (whsec:1a2b3c4d), never the secret",
            },
            "secrets": {
                "type": "array",
                "items": STRING,
                "description": "only in the answer that made them: the secrets the server made",
            },
            "origin": {"enum": ["config", "api"]},
            "group": {**STRING, "description": "the consumer group it runs as: webhook.<name>"},
            "disabled_reason": STRING,
            "attempts": {**_COUNT, "description": "attempts since the server started"},
            "position": STRING,
            "pending": _COUNT,
            "leased": _COUNT,
            "lag": _COUNT,
            "dead_letters": _COUNT,
        },
    },
    "OutboundWebhooks": {
        "type": "object",
        "required": ["webhooks"],
        "properties": {"webhooks": {"type": "array", "items": ref("schemas", "OutboundWebhook")}},
    },
    "DeliveryAttempts": {
        "type": "object",
        "required": ["attempts", "total"],
        "properties": {
            "total": _COUNT,
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "time": _NUMBER,
                        "event_id": STRING,
                        "topic": STRING,
                        "attempt": _COUNT,
                        "outcome": {
                            "enum": ["delivered", "failed", "gone", "timeout", "error", "refused"]
                        },
                        "status": {**_COUNT, "description": "0: no HTTP answer"},
                        "latency": _NUMBER,
                        "body": {**STRING, "description": "the answer's first 1 KB"},
                        "error": STRING,
                    },
                },
            },
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {
    "outboundName": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": (
            "The subscription's name in the caller's tenant; an admin names it <tenant>/<name>, "
            "the slash as %2F."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The `/v1/webhooks/outbound` paths; `problems(*statuses)` makes their problem responses."""
    name = ref("parameters", "outboundName")
    shown = {"content": {"application/json": {"schema": ref("schemas", "OutboundWebhook")}}}

    def changed(operation: str, summary: str) -> dict[str, Any]:
        return {
            "parameters": [name],
            "post": {
                "operationId": operation,
                "summary": summary,
                "responses": {
                    "200": {"description": "The subscription now.", **shown},
                    **problems(401, 403, 404, 500, 503),
                },
            },
        }

    put_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["pattern", "url"],
                    "additionalProperties": False,
                    "properties": {
                        **_FIELDS,
                        "secrets": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 2,
                            "items": STRING,
                            "description": (
                                'whsec_/whsk_ keys, "new" (one is made and shown once) or the '
                                "id of a current key to keep; default: one new (create), the "
                                "current ones (replace)"
                            ),
                        },
                    },
                }
            }
        },
    }
    return {
        "/v1/webhooks/outbound": {
            "get": {
                "operationId": "outboundWebhooks",
                "summary": "The outbound webhooks the caller may manage",
                "responses": {
                    "200": {
                        "description": "The subscriptions, by name.",
                        "content": {
                            "application/json": {"schema": ref("schemas", "OutboundWebhooks")}
                        },
                    },
                    **problems(401, 403, 500),
                },
            }
        },
        "/v1/webhooks/outbound/{name}": {
            "parameters": [name],
            "get": {
                "operationId": "outboundWebhook",
                "summary": "One outbound webhook, with its group's pending events and lag",
                "responses": {
                    "200": {"description": "The subscription.", **shown},
                    **problems(400, 401, 403, 404, 500),
                },
            },
            "put": {
                "operationId": "putOutboundWebhook",
                "summary": "Create or replace an outbound webhook (manage on its pattern)",
                "requestBody": put_body,
                "responses": {
                    "200": {"description": "Replaced.", **shown},
                    "201": {"description": "Created (secrets made are shown this once).", **shown},
                    **problems(400, 401, 403, 408, 409, 413, 500, 503),
                },
            },
            "delete": {
                "operationId": "deleteOutboundWebhook",
                "summary": "Delete an outbound webhook and its group",
                "responses": {
                    "204": {"description": "Deleted."},
                    **problems(400, 401, 403, 404, 500, 503),
                },
            },
        },
        "/v1/webhooks/outbound/{name}/enable": changed(
            "enableOutboundWebhook", "Start delivering (what waited goes first)"
        ),
        "/v1/webhooks/outbound/{name}/disable": changed(
            "disableOutboundWebhook", "Stop delivering (events wait in the group)"
        ),
        "/v1/webhooks/outbound/{name}/replay": {
            "parameters": [name],
            "post": {
                "operationId": "replayOutboundWebhook",
                "summary": "Deliver again from a position or a Unix time (the group's seek)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"position": STRING, "time": _NUMBER},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The group's new position.",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"position": STRING}}
                            }
                        },
                    },
                    **problems(400, 401, 403, 404, 500, 503),
                },
            },
        },
        "/v1/webhooks/outbound/{name}/attempts": {
            "parameters": [name],
            "get": {
                "operationId": "outboundWebhookAttempts",
                "summary": "The last delivery attempts, newest first (kept in memory)",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Attempts.",
                        "content": {
                            "application/json": {"schema": ref("schemas", "DeliveryAttempts")}
                        },
                    },
                    **problems(400, 401, 403, 404, 500),
                },
            },
        },
    }
