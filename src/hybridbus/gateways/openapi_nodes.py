"""The node-registry part of the OpenAPI document: `/v1/nodes`.

Owns: the path and schemas of the route of `gateways.nodes`, which
`gateways.openapi.document()` merges into the one document. Must not import
the gateway: tests/gateways/test_openapi.py checks that the document and the
registered routes list the same routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from hybridbus.gateways.openapi_parts import STRING, json_answer, ref

__all__ = ["PARAMETERS", "SCHEMAS", "paths"]

_SECONDS: Final = {"type": "number", "description": "Unix seconds"}

SCHEMAS: Final[dict[str, Any]] = {
    "NodeInfo": {
        "type": "object",
        "required": [
            "id",
            "addresses",
            "hostname",
            "pid",
            "version",
            "engine",
            "fingerprint",
            "started",
            "heartbeat",
            "ttl",
            "connections",
        ],
        "properties": {
            "id": STRING,
            "addresses": {"type": "array", "items": STRING, "description": "host:port"},
            "hostname": STRING,
            "pid": {"type": "integer"},
            "version": STRING,
            "engine": {**STRING, "description": "the engine URL, no credentials or settings"},
            "fingerprint": {**STRING, "description": "of the settings, secrets left out"},
            "started": _SECONDS,
            "heartbeat": {**_SECONDS, "description": "when this entry was written"},
            "ttl": {"type": "number", "description": "seconds it lives without a heartbeat"},
            "connections": {"type": "integer", "minimum": 0},
        },
    },
    "Nodes": {
        "type": "object",
        "required": ["node", "registry", "nodes"],
        "properties": {
            "node": {**STRING, "description": "the id of the node that answered"},
            "registry": {"enum": ["local", "redis", "etcd"]},
            "nodes": {"type": "array", "items": ref("schemas", "NodeInfo")},
        },
    },
}

PARAMETERS: Final[dict[str, Any]] = {}


def paths(problems: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The path of `gateways.nodes`; `problems(*statuses)` refers to the problem answers."""
    return {
        "/v1/nodes": {
            "get": {
                "operationId": "nodes",
                "summary": "The live nodes of the deployment (admins only)",
                "responses": {
                    "200": json_answer("Nodes", "Every node whose lease is live, by id."),
                    **problems(401, 403, 500, 503),
                },
            },
        },
    }
