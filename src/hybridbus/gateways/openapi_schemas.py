"""The schema-registry part of the OpenAPI document: `/v1/schemas/...` (gateways/schemas.py).

Owns: the paths, parameters and schemas of the schema routes, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateway: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, json_answer, json_body, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]


_MODE: Final = {"type": "string", "enum": ["backward", "forward", "full", "none"]}
_VERSION_NUMBER: Final = {"type": "integer", "minimum": 1}
_JSON_SCHEMA: Final = {
    "type": ["object", "boolean"],
    "description": "A JSON Schema (Draft 2020-12) of the events' `data`.",
}

SCHEMAS: Final[dict[str, Any]] = {
    "SchemaType": {
        "type": "object",
        "required": ["name", "tenant", "type", "mode", "latest", "uri"],
        "properties": {
            "name": {**STRING, "description": "the type (an admin's: <tenant>/<type>)"},
            "tenant": STRING,
            "type": STRING,
            "mode": _MODE,
            "latest": {"type": "integer", "minimum": 0, "description": "0: no version yet"},
            "uri": {"type": ["string", "null"], "description": "the latest version's URI"},
        },
    },
    "SchemaTypes": {
        "type": "object",
        "required": ["schemas"],
        "properties": {"schemas": {"type": "array", "items": ref("schemas", "SchemaType")}},
    },
    "SchemaTypeDetail": {
        "allOf": [
            ref("schemas", "SchemaType"),
            {
                "type": "object",
                "required": ["versions"],
                "properties": {
                    "versions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["version", "uri", "registered"],
                            "properties": {
                                "version": _VERSION_NUMBER,
                                "uri": STRING,
                                "registered": {"type": "number"},
                            },
                        },
                    }
                },
            },
        ]
    },
    "SchemaVersion": {
        "type": "object",
        "required": ["tenant", "type", "version", "uri", "registered", "schema"],
        "properties": {
            "tenant": STRING,
            "type": STRING,
            "version": _VERSION_NUMBER,
            "uri": {**STRING, "description": "what accepted events get as `dataschema`"},
            "registered": {"type": "number", "description": "Unix seconds"},
            "schema": _JSON_SCHEMA,
        },
    },
    "SchemaTest": {
        "type": "object",
        "required": ["valid", "version", "uri"],
        "properties": {
            "valid": {"type": "boolean"},
            "version": _VERSION_NUMBER,
            "uri": STRING,
            "path": {"type": ["string", "null"], "description": "where: data.items[2].qty"},
            "error": {"type": ["string", "null"]},
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {
    "eventType": {
        "name": "type",
        "in": "path",
        "required": True,
        "description": (
            "An event type of the caller's tenant (1-200 of A-Z a-z 0-9 . _ : -); an admin "
            "names it <tenant>/<type>, the slash as %2F."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
    "schemaVersion": {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "A version number (from 1), or `latest`.",
        "schema": {"type": "string", "minLength": 1},
    },
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The `/v1/schemas` paths; `problems(*statuses)` makes their problem responses."""
    event_type = ref("parameters", "eventType")
    return {
        "/v1/schemas": {
            "get": {
                "operationId": "schemaTypes",
                "summary": "The event types with schemas in the caller's tenant",
                "responses": {
                    "200": json_answer("SchemaTypes", "The types, by name."),
                    **problems(500, 503),
                },
            },
        },
        "/v1/schemas/{type}": {
            "parameters": [event_type],
            "get": {
                "operationId": "schemaType",
                "summary": "A type's compatibility mode and versions",
                "responses": {
                    "200": json_answer("SchemaTypeDetail", "The type."),
                    **problems(400, 404, 500, 503),
                },
            },
            "post": {
                "operationId": "registerSchema",
                "summary": "Register a schema as the type's next version",
                "description": (
                    "Needs `manage` on `$schemas/<type>`. Checked against the latest version "
                    "under the type's mode (409 names the incompatible path); a schema equal "
                    "to a registered version registers nothing (200)."
                ),
                "requestBody": json_body({"schema": _JSON_SCHEMA}, ("schema",)),
                "responses": {
                    "201": json_answer("SchemaVersion", "Registered (Location: the version)."),
                    "200": json_answer("SchemaVersion", "Already registered: that version."),
                    **problems(400, 408, 409, 413, 500, 503),
                },
            },
        },
        "/v1/schemas/{type}/{version}": {
            "parameters": [event_type, ref("parameters", "schemaVersion")],
            "get": {
                "operationId": "schemaVersion",
                "summary": "One version of a type's schema",
                "responses": {
                    "200": json_answer("SchemaVersion", "The version."),
                    **problems(400, 404, 500, 503),
                },
            },
        },
        "/v1/schemas/{type}/mode": {
            "parameters": [event_type],
            "put": {
                "operationId": "schemaMode",
                "summary": "Set the type's compatibility mode",
                "description": "Needs `manage` on `$schemas/<type>`; before or after version 1.",
                "requestBody": json_body({"mode": _MODE}, ("mode",)),
                "responses": {
                    "200": json_answer("SchemaType", "The type, with its mode."),
                    **problems(400, 408, 413, 500, 503),
                },
            },
        },
        "/v1/schemas/{type}/test": {
            "parameters": [event_type],
            "post": {
                "operationId": "testSchema",
                "summary": "Check sample data (or an event's) against the type's schema",
                "description": "Publishes nothing. Give `data` or `event`, and maybe `version`.",
                "requestBody": json_body(
                    {
                        "data": {"description": "the data to check (any JSON)"},
                        "event": {"type": "object", "description": "a CloudEvent"},
                        "version": {
                            "oneOf": [_VERSION_NUMBER, {"const": "latest"}],
                            "description": "default: the latest",
                        },
                    }
                ),
                "responses": {
                    "200": json_answer("SchemaTest", "What the check found (valid or where not)."),
                    **problems(400, 404, 408, 413, 500, 503),
                },
            },
        },
    }
