"""The OpenAPI 3.1 document of the HTTP API and SSE, served at `GET /v1/openapi.json`.

Owns: the description of every route `HttpGateway.routes()` registers: its
parameters, bodies, responses and their schemas, as one JSON-able dict. Must
not import the gateway: tests/gateways/test_openapi.py checks that the two
list the same routes, and runs schemathesis against a live server with it.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from hybridbus.core.topics import MAX_TOPIC_LENGTH
from hybridbus.gateways import (
    openapi_bridges,
    openapi_console,
    openapi_groups,
    openapi_logs,
    openapi_nodes,
    openapi_schemas,
    openapi_states,
    openapi_webhooks,
    openapi_webhooks_out,
)
from hybridbus.gateways.openapi_parts import json_answer, ref
from hybridbus.proto.frames import MAX_HISTORY_LIMIT

__all__ = ["document"]

_PROBLEM: Final = "application/problem+json"


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): ref("responses", f"Problem{status}") for status in statuses}


_TEXT: Final = {"type": "string", "minLength": 1}
# Segments without whitespace, '/', '+' or '#' (the server also refuses control
# characters, and more than 32 segments).
_SEGMENT: Final = r"[^/\s+#]+"
_TOPIC_REGEX: Final = rf"^{_SEGMENT}(/{_SEGMENT})*$"
_PATTERN_REGEX: Final = rf"^(#|({_SEGMENT}|\+)(/({_SEGMENT}|\+))*(/#)?)$"
_TIME: Final = {"type": "string", "format": "date-time"}

_CLOUDEVENT: Final = {
    "type": "object",
    "description": (
        "A CloudEvents 1.0 event in the JSON structured format. Other top-level members are "
        "extension attributes: names of 1-20 characters a-z and 0-9, values string, "
        "32-bit integer or boolean."
    ),
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": _TEXT,
        "source": _TEXT,
        "type": _TEXT,
        "subject": _TEXT,
        "time": _TIME,
        "datacontenttype": _TEXT,
        "dataschema": _TEXT,
        "data": {"description": "any JSON value"},
        "data_base64": {"type": "string", "contentEncoding": "base64"},
        "tenantid": _TEXT,
        "appid": _TEXT,
        "partitionkey": _TEXT,
        "expirytime": _TIME,
        "sequence": _TEXT,
        "lamport": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": {"type": ["string", "integer", "boolean"]},
}

_SCHEMAS: Final[dict[str, Any]] = {
    "CloudEvent": _CLOUDEVENT,
    "Batch": {
        "type": "array",
        "description": "The CloudEvents JSON batch format.",
        "items": ref("schemas", "CloudEvent"),
    },
    "Ack": {
        "type": "object",
        "required": ["topic", "offset", "shard", "position", "epoch", "duplicate", "token"],
        "properties": {
            "topic": {"type": "string"},
            "offset": {"type": "integer", "minimum": 1, "description": "1, 2, 3... per topic"},
            "shard": {"type": "integer", "minimum": 0},
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "the event's position in its shard's log (not a resume token)",
            },
            "epoch": {"type": "string"},
            "duplicate": {
                "type": "boolean",
                "description": "already appended (same source + id): the fields are the original's",
            },
            "token": {
                "type": "string",
                "description": (
                    "the resume token right after this event: as `since` or Last-Event-ID it "
                    "gives exactly the later events of this topic (docs/http.md)"
                ),
            },
        },
    },
    "Acks": {
        "type": "object",
        "required": ["acks"],
        "properties": {"acks": {"type": "array", "items": ref("schemas", "Ack")}},
    },
    "HistoryEvent": {
        "type": "object",
        "required": ["topic", "offset", "shard", "position", "event"],
        "properties": {
            "topic": {"type": "string"},
            "offset": {"type": "integer", "minimum": 1},
            "shard": {"type": "integer", "minimum": 0},
            "position": {"type": "integer", "minimum": 1},
            "event": ref("schemas", "CloudEvent"),
        },
    },
    "History": {
        "type": "object",
        "required": ["events", "position", "more", "exact"],
        "properties": {
            "events": {"type": "array", "items": ref("schemas", "HistoryEvent")},
            "position": {
                "type": "string",
                "description": "the resume token to continue from, as `since`",
            },
            "more": {"type": "boolean", "description": "more events follow this page"},
            "exact": {
                "type": "boolean",
                "description": "false: retention removed events after `since`, "
                "or `since` is from another epoch",
            },
        },
    },
    "ClientInfo": {
        "type": "object",
        "required": ["client"],
        "properties": {
            "client": {"type": "string"},
            "user": {"type": "string"},
            "device": {"type": "string"},
            "name": {"type": "string"},
            "session": {"type": "string", "description": "its session's public id"},
            "state": {
                "type": "string",
                "enum": ["active", "degraded"],
                "description": "degraded: its connection dropped and its session waits "
                "for it (protocol.md §4.1); absent: active",
            },
        },
    },
    "Presence": {
        "type": "object",
        "required": ["topic", "clients"],
        "properties": {
            "topic": {"type": "string"},
            "clients": {"type": "array", "items": ref("schemas", "ClientInfo")},
        },
    },
    "Topics": {
        "type": "object",
        "required": ["topics", "more"],
        "properties": {
            "topics": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["topic", "offset"],
                    "properties": {
                        "topic": {"type": "string"},
                        "offset": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "the offset of the topic's newest event",
                        },
                    },
                },
            },
            "more": {"type": "boolean", "description": "more topics follow: page with `after`"},
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details, with the hybridbus error code.",
        "required": ["type", "title", "status", "detail", "code", "retriable"],
        "properties": {
            "type": {"type": "string", "description": "urn:hybridbus:error:<name>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "integer", "description": "the ErrorCode (docs/errors.md)"},
            "retriable": {"type": "boolean"},
            "attribute": {"type": "string", "description": "the event attribute at fault"},
            "parameter": {"type": "string", "description": "the parameter at fault"},
            "index": {"type": "integer", "description": "the batch event at fault"},
        },
    },
}

_PROBLEM_TEXT: Final = {
    400: (
        "Bad input: topic, pattern, event, position, parameter or body, a group's name or "
        "settings (`code` says which)."
    ),
    404: (
        "No such group (1401: or not the caller's tenant's) or dead letter (1404), no schema "
        "of that type or version (1501)."
    ),
    408: "The request body did not arrive in time.",
    413: "An event (or the body) is too large (code 1004).",
    415: "Not a CloudEvent: the Content-Type is neither structured nor batch, no ce-specversion.",
    401: "No credentials where they are needed, an unknown API key, a bad or expired token.",
    403: "Revoked (1104), or the topic is another tenant's or the rules refuse it (1110).",
    409: (
        "The tenant holds max_revocations_per_tenant live revocations (1123); the group exists "
        "over another pattern (1402); the delivery is no longer held (1403); the type's "
        "compatibility mode refuses the new schema (1502, `path` names where)."
    ),
    429: (
        "Over the caller's or the tenant's publish rate (1121), or a fetch over "
        "max_connections_per_user (1122); see Retry-After."
    ),
    500: "The server failed (code 1300-1399); the details are in its log.",
    503: (
        "The log is unavailable or the server is shutting down; the node registry cannot be "
        "reached (1310, /v1/nodes); see Retry-After."
    ),
}


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _PROBLEM_TEXT[status],
        "content": {_PROBLEM: {"schema": ref("schemas", "Problem")}},
    }
    if status == 400:
        # aiohttp answers requests it cannot parse itself, before any route:
        # a request line or header over 8190 bytes, a broken chunked body.
        response["content"]["text/plain"] = {"schema": {"type": "string"}}
        response["description"] += " Requests the HTTP server cannot parse: text/plain."
    if status in (503, 429):
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


# Who may call (docs/security.md): an API key or a JWT, or nobody where anonymous callers may.
_SECURITY_SCHEMES: Final = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (hb_...) or a JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    "token": {"type": "apiKey", "in": "query", "name": "token", "description": "A JWT (SSE)"},
}
_SECURITY: Final[list[dict[str, list[str]]]] = [{}, {"bearer": []}, {"apiKey": []}, {"token": []}]

_REVOCATIONS: Final = {
    "post": {
        "operationId": "revoke",
        "summary": "Revoke a token (jti), a session (sid) or a user; live connections close",
        "description": (
            "Admins anywhere; a tenant's API key inside its tenant, within its tenant's "
            "revocation rate (429) and count (409). `until` (a future time) defaults to, and is "
            "held to, the horizon: now + max_token_lifetime + jwt_leeway; a user revocation "
            "refuses the user's tokens issued up to now, for the horizon."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["kind", "value"],
                        "additionalProperties": False,
                        "properties": {
                            "kind": {"enum": ["token", "session", "user"]},
                            "value": {"type": "string", "minLength": 1, "maxLength": 256},
                            "tenant": {"type": "string"},
                            "until": {"type": "number", "exclusiveMinimum": 0},
                            "reason": {"type": "string", "maxLength": 1024},
                        },
                    }
                }
            },
        },
        "responses": {
            "201": {
                "description": "Stored; the revocation as kept.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **_problems(400, 401, 403, 408, 409, 413, 429, 500, 503),
        },
    }
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation but the document itself may be refused 401 / 403; publish 429 too."""
    for path, item in paths.items():
        if path == "/v1/openapi.json":
            continue
        for method, operation in item.items():
            if method == "parameters":
                continue
            statuses = (401, 403, 429) if operation["operationId"] == "publish" else (401, 403)
            operation["responses"].update(_problems(*statuses))
    return paths


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


_PARAMETERS: Final[dict[str, Any]] = {
    "topic": {
        "name": "topic",
        "in": "path",
        "required": True,
        "description": (
            "An absolute topic, e.g. acme/docs/42: the rest of the path, slashes included "
            "(or percent-encoded as %2F)."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TOPIC_LENGTH,
            "pattern": _TOPIC_REGEX,
        },
    },
    "pattern": {
        **_query(
            "pattern",
            "A topic or pattern: + one segment, # the rest (send them as %2B and %23).",
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TOPIC_LENGTH,
                "pattern": _PATTERN_REGEX,
            },
        ),
        "required": True,
    },
    "since": _query(
        "since",
        "A resume token (a `position` from an earlier answer): only events after it.",
        {"type": "string"},
    ),
    "limit": _query(
        "limit",
        "At most this many events.",
        {"type": "integer", "minimum": 0, "maximum": MAX_HISTORY_LIMIT, "default": 100},
    ),
}

_HISTORY_PARAMETERS: Final = [
    ref("parameters", "since"),
    ref("parameters", "limit"),
    *openapi_logs.FILTER_PARAMETERS,
]
_CE_HEADERS: Final = [
    {"name": f"ce-{name}", "in": "header", "required": False, "schema": {"type": "string"}}
    for name in ("specversion", "id", "source", "type", "subject", "time")
]


def _paths() -> dict[str, Any]:
    topic = ref("parameters", "topic")
    return {
        "/v1/topics/{topic}/events": {
            "parameters": [topic],
            "post": {
                "operationId": "publish",
                "summary": "Publish one event, or a batch in order, to a topic",
                "description": (
                    "Structured mode (application/cloudevents+json), the batch format "
                    "(application/cloudevents-batch+json), or binary mode: any body and "
                    "Content-Type with the attributes in ce-* headers. A batch is checked whole "
                    "first: one bad event (named by `index`) and nothing is published."
                ),
                "parameters": _CE_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/cloudevents+json": {"schema": ref("schemas", "CloudEvent")},
                        "application/cloudevents-batch+json": {"schema": ref("schemas", "Batch")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "application/json": {"schema": {}},
                    },
                },
                "responses": {
                    "201": json_answer("Acks", "Published: one ack per event, in order."),
                    "200": json_answer(
                        "Acks", "Every event was a duplicate: acks of the originals."
                    ),
                    **_problems(400, 408, 413, 415, 500, 503),
                },
            },
            "get": {
                "operationId": "topicHistory",
                "summary": "Retained events of one topic, oldest first",
                "parameters": _HISTORY_PARAMETERS,
                "responses": {
                    "200": json_answer("History", "A page of history."),
                    **_problems(400, 500, 503),
                },
            },
        },
        "/v1/topics/{topic}/presence": {
            "parameters": [topic],
            "get": {
                "operationId": "presence",
                "summary": "The clients subscribed to a topic",
                "responses": {
                    "200": json_answer("Presence", "Who is there (an empty list if nobody)."),
                    **_problems(400, 500),
                },
            },
        },
        "/v1/topics": {
            "get": {
                "operationId": "topics",
                "summary": "The topics, by name",
                "parameters": [
                    _query(
                        "prefix",
                        "Only topics whose name starts with this text (e.g. acme/).",
                        {"type": "string", "maxLength": MAX_TOPIC_LENGTH},
                    ),
                    _query(
                        "after",
                        "Only topics after this name: the last topic of the previous page.",
                        {"type": "string", "maxLength": MAX_TOPIC_LENGTH},
                    ),
                    _query(
                        "limit",
                        "At most this many topics.",
                        {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100},
                    ),
                ],
                "responses": {
                    "200": json_answer("Topics", "A page of topics."),
                    **_problems(400, 500, 503),
                },
            },
        },
        "/v1/events": {
            "get": {
                "operationId": "history",
                "summary": "Retained events of a topic or pattern, oldest first",
                "parameters": [ref("parameters", "pattern"), *_HISTORY_PARAMETERS],
                "responses": {
                    "200": json_answer("History", "A page of history."),
                    **_problems(400, 500, 503),
                },
            },
        },
        "/v1/sse": {
            "get": {
                "operationId": "sse",
                "summary": "A topic or pattern as a server-sent event stream",
                "description": (
                    "Events `subscribed` (first), `event` (one per CloudEvent; `id` is the resume "
                    "token after it) and `unsubscribed` (last, when the server ends the stream), "
                    "plus keep-alive comments. Resume with Last-Event-ID. See docs/http.md."
                ),
                "parameters": [
                    ref("parameters", "pattern"),
                    ref("parameters", "since"),
                    *openapi_logs.FILTER_PARAMETERS,
                    _query(
                        "envelope",
                        "Send {topic, offset, shard, position, event} instead of the bare event.",
                        {"type": "boolean", "default": False},
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "A resume token; wins over `since`.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The stream (it lasts until either side ends it).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_problems(400, 500, 503),
                },
            },
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy each call)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "hybridbus HTTP API",
                "version": "1",
                "description": (
                    "Publish CloudEvents to topics, read history, presence and topics, and stream "
                    "topics and patterns as server-sent events, pull from consumer groups and "
                    "manage their dead letters. Topics are absolute (tenant first); group "
                    "names are relative to the caller's tenant. Errors are "
                    "application/problem+json. See docs/http.md."
                ),
            },
            "paths": _secured(
                {
                    **_paths(),
                    "/v1/revocations": _REVOCATIONS,
                    **openapi_groups.paths(_problems),
                    **openapi_schemas.paths(_problems),
                    **openapi_webhooks.paths(_problems),
                    **openapi_webhooks_out.paths(_problems),
                    **openapi_nodes.paths(_problems),
                    **openapi_bridges.paths(_problems),
                    **openapi_console.paths(_problems),
                    **openapi_logs.paths(_problems),
                    **openapi_states.paths(_problems),
                }
            ),
            "security": _SECURITY,
            "components": {
                "securitySchemes": _SECURITY_SCHEMES,
                "schemas": {
                    **_SCHEMAS,
                    **openapi_groups.SCHEMAS,
                    **openapi_schemas.SCHEMAS,
                    **openapi_webhooks.SCHEMAS,
                    **openapi_webhooks_out.SCHEMAS,
                    **openapi_nodes.SCHEMAS,
                    **openapi_bridges.SCHEMAS,
                    **openapi_console.SCHEMAS,
                    **openapi_logs.SCHEMAS,
                    **openapi_states.SCHEMAS,
                },
                "parameters": {
                    **_PARAMETERS,
                    **openapi_groups.PARAMETERS,
                    **openapi_schemas.PARAMETERS,
                    **openapi_webhooks.PARAMETERS,
                    **openapi_webhooks_out.PARAMETERS,
                    **openapi_nodes.PARAMETERS,
                    **openapi_bridges.PARAMETERS,
                    **openapi_console.PARAMETERS,
                    **openapi_logs.PARAMETERS,
                    **openapi_states.PARAMETERS,
                },
                "responses": {f"Problem{s}": _problem_response(s) for s in _PROBLEM_TEXT},
            },
        }
    )
