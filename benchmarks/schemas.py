"""What checking an event against its type's JSON Schema costs, per event (issue 11).

The ~1 KB event of benchmarks/samples.py (a document edit: an author object, eight
operations of two shapes, a cursor) and a Draft 2020-12 schema of its data that a
team would write (types, required fields, a `oneOf` per operation, bounds, enums,
closed objects). Cases, in µs per event:

- `schemas.check`: the registry's check alone (`Schemas.check`: the compiled
  `jsonschema_rs` validator, then `dataschema` set) — target <= 10 µs;
- `schemas.prepare` and `schemas.prepare.bare`: all `Bus.prepare` does to an
  event on every way in (validation of the envelope, MessagePack, size), with the
  type's schema and without any schema: their difference is what a schema adds;
- peer `schemas.jsonschema`: the same check with the `jsonschema` package's
  Draft202012Validator (compiled once), when it is installed (it is not a
  dependency: it was measured, and not chosen — docs/schemas.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import hybridbus
from benchmarks.harness import Case, Result, Settings, per_op_seconds, run_async, run_cases
from benchmarks.samples import KB_ATTRIBUTES, kb_event

__all__ = ["SCHEMA", "cases", "run"]

TARGET_US: Final = 10.0
TOPIC: Final = "acme/docs/doc-4242"
_OPERATION_FIELDS: Final = {
    "op": {"enum": ["retain", "insert", "delete"]},
    "count": {"type": "integer", "minimum": 0},
    "text": {"type": "string", "maxLength": 10_000},
    "at": {"type": "integer", "minimum": 0},
    "attributes": {"type": "object", "additionalProperties": {"type": ["boolean", "string"]}},
}
SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["document", "revision", "author", "ops"],
    "additionalProperties": False,
    "properties": {
        "document": {"type": "string", "pattern": "^doc-[0-9]+$"},
        "revision": {"type": "integer", "minimum": 1},
        "author": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string", "maxLength": 200},
                "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            },
        },
        "ops": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["op"],
                "properties": _OPERATION_FIELDS,
                "additionalProperties": False,
                "oneOf": [
                    {"properties": {"op": {"const": "retain"}}, "required": ["count"]},
                    {"properties": {"op": {"const": "insert"}}, "required": ["text", "at"]},
                    {"properties": {"op": {"const": "delete"}}, "required": ["count", "at"]},
                ],
            },
        },
        "cursor": {
            "type": "object",
            "properties": {"anchor": {"type": "integer"}, "head": {"type": "integer"}},
        },
        "clientTime": {"type": "number"},
    },
}


def _micro(fn: Callable[[], object], settings: Settings) -> Callable[[], float]:
    def measure() -> float:
        return per_op_seconds(fn, settings.codec_seconds) * 1e6

    return measure


async def _buses() -> tuple[hybridbus.Bus, hybridbus.Bus]:
    """Two memory buses: one with the schema for the event's type, one with none.

    Closed again once the schema is registered: `prepare` and `Schemas.check`
    are plain calls that need no running bus.
    """
    async with hybridbus.open("memory://") as schemed, hybridbus.open("memory://") as bare:
        await schemed.schemas.register("acme", KB_ATTRIBUTES["type"], SCHEMA)
    return schemed, bare


def cases(settings: Settings) -> list[Case]:
    schemed, bare = run_async(_buses())
    event = kb_event()
    schemas = schemed.schemas
    checked = schemas.check("acme", event)
    assert checked.dataschema is not None, "the schema must accept the sample"
    found: list[Case] = [
        Case(
            "schemas.check",
            "Schemas.check (jsonschema_rs)",
            "µs/op",
            _micro(lambda: schemas.check("acme", event), settings),
            peer="schemas.jsonschema",
            target=TARGET_US,
        ),
        Case(
            "schemas.prepare",
            "Bus.prepare, with a schema",
            "µs/op",
            _micro(lambda: schemed.prepare(TOPIC, event), settings),
            peer="schemas.prepare.bare",
        ),
        Case(
            "schemas.prepare.bare",
            "Bus.prepare, no schema",
            "µs/op",
            _micro(lambda: bare.prepare(TOPIC, event), settings),
            is_peer=True,
        ),
    ]
    try:
        import jsonschema
    except ImportError:
        return found
    validator = jsonschema.Draft202012Validator(SCHEMA)
    data = event.data
    assert validator.is_valid(data)
    found.append(
        Case(
            "schemas.jsonschema",
            "jsonschema Draft202012Validator",
            "µs/op",
            _micro(lambda: validator.is_valid(data), settings),
            is_peer=True,
        )
    )
    return found


def run(settings: Settings, log: Callable[[str], None]) -> list[Result]:
    log("schemas: checking a ~1 KB event against its type's schema")
    return run_cases(cases(settings), settings, log)
