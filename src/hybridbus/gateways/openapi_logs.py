"""The live-logs part of the OpenAPI document: log ingest, and the filter query parameters.

Owns: the path of `gateways.logs_http` (`POST /v1/logs/{service}/{instance}`),
its answer's schema, and the filter parameters (`level`, `contains`,
`regex`, `field`, `type`) that the history routes and SSE take, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateways: tests/gateways/test_openapi.py checks that the document and
the registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.core.filters import MAX_CONTAINS, MAX_REGEX, MAX_TYPES
from hybridbus.gateways.openapi_parts import STRING, json_answer, ref

__all__ = ["FILTER_PARAMETERS", "PARAMETERS", "SCHEMAS", "paths"]

# One topic segment: no '/', '+', '#' or whitespace.
_SEGMENT: Final = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^/\s+#]+$"}
_OFFSET: Final = {"type": ["integer", "null"], "minimum": 1}


def _query(name: str, description: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **more}


PARAMETERS: Final[dict[str, Any]] = {
    "service": {
        "name": "service",
        "in": "path",
        "required": True,
        "description": "The service: one topic segment.",
        "schema": _SEGMENT,
    },
    "instance": {
        "name": "instance",
        "in": "path",
        "required": True,
        "description": "The instance of the service: one topic segment.",
        "schema": _SEGMENT,
    },
    "filterLevel": _query(
        "level",
        "Only log events at least this level (trace, debug, info, warn, error, fatal).",
        {"type": "string", "maxLength": 32},
    ),
    "filterContains": _query(
        "contains",
        "Only events whose log message (other events: data as JSON) holds this text.",
        {"type": "string", "maxLength": MAX_CONTAINS},
    ),
    "filterRegex": _query(
        "regex",
        "Only events where this RE2 pattern is found in that text.",
        {"type": "string", "maxLength": MAX_REGEX},
    ),
    "filterField": _query(
        "field",
        "key:value: only events whose log field (other events: top-level data key) equals it. "
        "Repeatable: all must hold.",
        {"type": "array", "items": {"type": "string", "pattern": "^[^:=]+[:=]"}},
        style="form",
        explode=True,
    ),
    "filterType": _query(
        "type",
        "Only events of this type. Repeatable: any of them.",
        {"type": "array", "items": STRING, "maxItems": MAX_TYPES},
        style="form",
        explode=True,
    ),
}

# What `gateways.openapi` adds to the history and SSE routes' parameters.
FILTER_PARAMETERS: Final = [
    ref("parameters", name)
    for name in ("filterLevel", "filterContains", "filterRegex", "filterField", "filterType")
]

SCHEMAS: Final[dict[str, Any]] = {
    "LogsAccepted": {
        "type": "object",
        "required": ["accepted", "duplicates", "first", "last", "token"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0, "description": "records appended"},
            "duplicates": {
                "type": "integer",
                "minimum": 0,
                "description": "of which already appended (a retry with the same Idempotency-Key)",
            },
            "first": {**_OFFSET, "description": "the offset of the first record's event"},
            "last": {**_OFFSET, "description": "the offset of the last record's event"},
            "token": {
                "type": ["string", "null"],
                "description": "the resume token right after the last record",
            },
        },
    },
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The path of `gateways.logs_http`; `problems(*statuses)` refers to the problem answers."""
    lines = {"schema": {"type": "string"}}
    return {
        "/v1/logs/{service}/{instance}": {
            "parameters": [ref("parameters", "service"), ref("parameters", "instance")],
            "post": {
                "operationId": "ingestLogs",
                "summary": "Log lines: one log event each on <tenant>/logs/<service>/<instance>",
                "description": (
                    "application/x-ndjson: a JSON object (a log record) per line; text/plain: a "
                    "line per record. Appended in line order, in batches, as the body arrives. "
                    "The first bad line ends the request: the lines before it are appended, the "
                    "problem names it (`line`) and counts what was (`accepted`). A retried body "
                    "with the same Idempotency-Key is appended once. See docs/logs.md."
                ),
                "parameters": [
                    _query(
                        "tenant",
                        "The tenant to log in (default: the caller's; an admin must name it).",
                        {"type": "string", "minLength": 1},
                    ),
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Names the body: its lines land once, however often sent.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-ndjson": lines, "text/plain": lines},
                },
                "responses": {
                    "201": json_answer("LogsAccepted", "Appended."),
                    "200": json_answer("LogsAccepted", "Every line was a duplicate."),
                    **problems(400, 408, 413, 415, 429, 500, 503),
                },
            },
        },
    }
