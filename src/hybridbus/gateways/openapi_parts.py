"""The small builders every part of the OpenAPI document uses.

Owns: how a part refers to a component (`ref`), describes a JSON answer
(`json_answer`) and a JSON request body (`json_body`). Must not hold any
route: `gateways.openapi` and its parts (`openapi_groups`, `openapi_schemas`,
`openapi_webhooks`, `openapi_webhooks_out`) do.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["STRING", "json_answer", "json_body", "ref"]

STRING: Final = {"type": "string"}


def ref(kind: str, name: str) -> dict[str, str]:
    """A `$ref` to component `name` of `kind` (`schemas`, `responses`, `parameters`)."""
    return {"$ref": f"#/components/{kind}/{name}"}


def json_answer(schema: str, description: str) -> dict[str, Any]:
    """A response whose JSON body is component schema `schema`."""
    return {
        "description": description,
        "content": {"application/json": {"schema": ref("schemas", schema)}},
    }


def json_body(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, optional: bool = False
) -> dict[str, Any]:
    """A JSON object request body with these properties (and no others)."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = list(required)
    return {"required": not optional, "content": {"application/json": {"schema": schema}}}
