"""The inbound-webhook part of the OpenAPI document: `/v1/webhooks/...` (gateways/webhooks.py,
gateways/webhook_endpoints.py).

Owns: the paths, parameters and schemas of the inbound route and the
endpoints' admin routes, which `gateways.openapi.document()` merges into the
one document. Must not import the gateways: tests/gateways/test_openapi.py
checks that the document and the registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]


_TEXT: Final = {"type": ["string", "null"]}
_NAME: Final = {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,128}$"}

_HMAC: Final[dict[str, Any]] = {
    "type": ["object", "null"],
    "description": "How a platform that does not follow Standard Webhooks signs (scheme hmac).",
    "required": ["header"],
    "additionalProperties": False,
    "properties": {
        "header": {**STRING, "description": "the signature's header, e.g. X-Hub-Signature-256"},
        "algorithm": {"enum": ["sha1", "sha256", "sha512"], "default": "sha256"},
        "encoding": {"enum": ["hex", "base64"], "default": "hex"},
        "prefix": {**STRING, "description": "before the digest, e.g. sha256="},
        "timestamp_header": _TEXT,
        "id_header": _TEXT,
        "signed": {**STRING, "description": "{body}, {timestamp}.{body}, v0:{timestamp}:{body}"},
    },
}

_RULE: Final[dict[str, Any]] = {
    "scheme": {"enum": ["standard", "hmac"], "default": "standard"},
    "hmac": _HMAC,
    "tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400, "default": 300},
    "topic": {**STRING, "description": "a template relative to the tenant: {type}, {subject}…"},
    "type": {**_TEXT, "description": "a JSONPath ($.type) or header:<Name>"},
    "default_type": STRING,
    "subject": _TEXT,
    "default_subject": _TEXT,
    "id": {**_TEXT, "description": "default: the webhook-id header"},
    "values": {"type": "object", "additionalProperties": STRING},
    "max_body_size": {"type": "integer", "minimum": 1024, "maximum": 64 << 20},
    "rate": {"type": "number", "minimum": 0, "description": "requests/s; 0: unlimited"},
    "burst": {"type": "number", "minimum": 0},
}

_SHOWN: Final[dict[str, Any]] = {
    "name": {**STRING, "description": "the endpoint's name (an admin's: <tenant>/<name>)"},
    "tenant": STRING,
    **_RULE,
    "keys": {
        "type": "array",
        "items": STRING,
        "description": "each key as its kind and fingerprint (whsec:1a2b3c4d), never the key",
    },
    "origin": {"enum": ["config", "api"]},
    "url": {**STRING, "description": "where the platform POSTs: /v1/webhooks/<tenant>/<name>"},
    "pattern": {**STRING, "description": "the absolute pattern its topics fall under"},
}

SCHEMAS: Final[dict[str, Any]] = {
    "WebhookEndpoint": {
        "type": "object",
        "required": ["name", "tenant", "scheme", "topic", "keys", "origin", "url", "pattern"],
        "properties": _SHOWN,
    },
    "WebhookEndpoints": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": ref("schemas", "WebhookEndpoint")}},
    },
    "WebhookAck": {
        "type": "object",
        "required": ["id", "topic", "offset", "shard", "position", "epoch", "duplicate", "token"],
        "properties": {
            "id": {**STRING, "description": "the event's id (webhook-id by default)"},
            "topic": STRING,
            "offset": {"type": "integer", "minimum": 1},
            "shard": {"type": "integer", "minimum": 0},
            "position": {"type": "integer", "minimum": 1},
            "epoch": STRING,
            "duplicate": {"type": "boolean", "description": "a retry of a webhook appended before"},
            "token": STRING,
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {
    "webhookTenant": {
        "name": "tenant",
        "in": "path",
        "required": True,
        "description": "The endpoint's tenant.",
        "schema": {"type": "string", "minLength": 1},
    },
    "webhookEndpoint": {
        "name": "endpoint",
        "in": "path",
        "required": True,
        "description": "The endpoint's name in its tenant.",
        "schema": {"type": "string", "minLength": 1},
    },
    "webhookName": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": (
            "The endpoint's name in the caller's tenant; an admin names it <tenant>/<name>, the "
            "slash as %2F."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The `/v1/webhooks` paths; `problems(*statuses)` makes their problem responses."""
    name = ref("parameters", "webhookName")
    put_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["secrets"],
                    "additionalProperties": False,
                    "properties": {
                        "secrets": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 10,
                            "items": {**STRING, "minLength": 1},
                            "description": "whsec_… / whpk_… keys (scheme standard), or HMAC "
                            "secrets (scheme hmac); several during a rotation",
                        },
                        **_RULE,
                    },
                }
            }
        },
    }
    shown = {"content": {"application/json": {"schema": ref("schemas", "WebhookEndpoint")}}}
    return {
        "/v1/webhooks/{tenant}/{endpoint}": {
            "parameters": [
                ref("parameters", "webhookTenant"),
                ref("parameters", "webhookEndpoint"),
            ],
            "post": {
                "operationId": "receiveWebhook",
                "summary": "An inbound webhook: verified, turned into one event, appended",
                "description": (
                    "Signed as Standard Webhooks (webhook-id, webhook-timestamp, "
                    "webhook-signature) or as the endpoint's HMAC scheme says; no bearer "
                    "token. 200 once the event is durable (a retry: duplicate true). See "
                    "docs/webhooks.md."
                ),
                "security": [],
                "requestBody": {
                    "required": False,
                    "content": {"*/*": {"schema": {}}},
                },
                "responses": {
                    "200": {
                        "description": "Appended (or a duplicate of one appended before).",
                        "content": {"application/json": {"schema": ref("schemas", "WebhookAck")}},
                    },
                    **problems(400, 404, 408, 413, 429, 500, 503),
                },
            },
        },
        "/v1/webhooks/endpoints": {
            "get": {
                "operationId": "webhookEndpoints",
                "summary": "The inbound webhook endpoints the caller may manage",
                "responses": {
                    "200": {
                        "description": "The endpoints, without their secrets.",
                        "content": {
                            "application/json": {"schema": ref("schemas", "WebhookEndpoints")}
                        },
                    },
                    **problems(500),
                },
            },
        },
        "/v1/webhooks/endpoints/{name}": {
            "parameters": [name],
            "get": {
                "operationId": "webhookEndpoint",
                "summary": "One endpoint, without its secrets (manage)",
                "responses": {
                    "200": {"description": "The endpoint.", **shown},
                    **problems(400, 404, 500),
                },
            },
            "put": {
                "operationId": "putWebhookEndpoint",
                "summary": "Create or replace an endpoint (manage on the pattern it publishes to)",
                "requestBody": put_body,
                "responses": {
                    "201": {"description": "Created (Location: the endpoint).", **shown},
                    "200": {"description": "Replaced.", **shown},
                    **problems(400, 404, 408, 413, 500, 503),
                },
            },
            "delete": {
                "operationId": "deleteWebhookEndpoint",
                "summary": "Delete an endpoint made over the API (manage)",
                "responses": {
                    "204": {"description": "Deleted."},
                    **problems(400, 404, 500, 503),
                },
            },
        },
    }
