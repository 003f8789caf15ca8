"""The state-topic part of the OpenAPI document: `GET` / `PATCH /v1/states/{topic}`.

Owns: the paths of `gateways.states_http` and their schemas, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateways: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import json_answer, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]

_VERSION: Final = {"type": "integer", "minimum": 0, "description": "the document's version"}

PARAMETERS: Final[dict[str, Any]] = {
    "stateTopic": {
        "name": "topic",
        "in": "path",
        "required": True,
        "description": "The absolute state topic (tenant first); slashes as they are.",
        "schema": {"type": "string", "minLength": 1},
    },
}

SCHEMAS: Final[dict[str, Any]] = {
    "StateDocument": {
        "type": "object",
        "required": ["topic", "version", "document"],
        "properties": {
            "topic": {"type": "string"},
            "version": _VERSION,
            "document": {"description": "the JSON document (any JSON value; {} at version 0)"},
        },
    },
    "StatePatched": {
        "type": "object",
        "required": ["topic", "version"],
        "properties": {"topic": {"type": "string"}, "version": _VERSION},
    },
}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The paths of `gateways.states_http`; `problems(*statuses)` refers to the problem answers."""
    etag = {"ETag": {"description": "The version, quoted.", "schema": {"type": "string"}}}
    return {
        "/v1/states/{topic}": {
            "parameters": [ref("parameters", "stateTopic")],
            "get": {
                "operationId": "getState",
                "summary": "A state document and its version (docs/collaboration.md)",
                "responses": {
                    "200": {**json_answer("StateDocument", "The document."), "headers": etag},
                    **problems(400, 401, 403, 500, 503),
                },
            },
            "patch": {
                "operationId": "patchState",
                "summary": "Merge an RFC 7396 merge patch into a state document",
                "description": (
                    'With If-Match: "<version>" only if the document is at that version '
                    "(compare and set): else 412 with code 1640 and the current `version`."
                ),
                "parameters": [
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": False,
                        "description": 'The version the patch is for, quoted ("4").',
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/merge-patch+json": {"schema": {}}},
                },
                "responses": {
                    "200": {**json_answer("StatePatched", "Applied."), "headers": etag},
                    "412": {
                        "description": "If-Match is not the version (1640); `version` is.",
                        "content": {
                            "application/problem+json": {"schema": ref("schemas", "Problem")}
                        },
                    },
                    **problems(400, 401, 403, 409, 413, 415, 429, 500, 503),
                },
            },
        },
    }
