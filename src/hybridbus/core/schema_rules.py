"""The rules `core.schema_diff` compares JSON Schemas by: difference names, keywords, helpers.

Owns: `Difference`, `COMPATIBLE` (the differences after which every instance
the original schema accepts, the update accepts too: Confluent's
`COMPATIBLE_CHANGES_STRICT` for JSON Schema, plus this module's own names
for removals it analyses), the keyword tables, and the small pure helpers
over schema objects (content models, `$ref` targets, canonical values).
Must not walk two schemas (that is `core.schema_diff`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

import msgspec

__all__ = [
    "ANY_TYPE",
    "ASSERTIONS",
    "BOUNDS",
    "COMBINERS",
    "COMPATIBLE",
    "MAX_REFS",
    "NARROWER",
    "OPAQUE",
    "TYPES",
    "UNRESOLVED",
    "WIDER",
    "Difference",
    "canonical",
    "find_anchor",
    "is_empty",
    "is_open",
    "only_combiner",
    "partial",
    "pointer_part",
    "required_added",
    "resolve_pointer",
    "same",
    "types_of",
    "value_set",
    "wide",
]


class Difference(msgspec.Struct, frozen=True):
    """One difference between two schemas: where (a JSON pointer into them) and what."""

    path: str
    kind: str

    @property
    def compatible(self) -> bool:
        return self.kind in COMPATIBLE


COMPATIBLE: Final = frozenset(
    [
        "ID_CHANGED",
        "DESCRIPTION_CHANGED",
        "TITLE_CHANGED",
        "DEFAULT_CHANGED",
        "SCHEMA_REMOVED",
        "TYPE_EXTENDED",
        "MAX_LENGTH_INCREASED",
        "MAX_LENGTH_REMOVED",
        "MIN_LENGTH_DECREASED",
        "MIN_LENGTH_REMOVED",
        "PATTERN_REMOVED",
        "MAXIMUM_INCREASED",
        "MAXIMUM_REMOVED",
        "MINIMUM_DECREASED",
        "MINIMUM_REMOVED",
        "EXCLUSIVE_MAXIMUM_INCREASED",
        "EXCLUSIVE_MAXIMUM_REMOVED",
        "EXCLUSIVE_MINIMUM_DECREASED",
        "EXCLUSIVE_MINIMUM_REMOVED",
        "MULTIPLE_OF_REDUCED",
        "MULTIPLE_OF_REMOVED",
        "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
        "REQUIRED_ATTRIBUTE_REMOVED",
        "DEPENDENCY_ARRAY_NARROWED",
        "DEPENDENCY_ARRAY_REMOVED",
        "MAX_PROPERTIES_INCREASED",
        "MAX_PROPERTIES_REMOVED",
        "MIN_PROPERTIES_DECREASED",
        "MIN_PROPERTIES_REMOVED",
        "ADDITIONAL_PROPERTIES_ADDED",
        "ADDITIONAL_PROPERTIES_EXTENDED",
        "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
        "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL",
        "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
        "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL",
        "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "MAX_ITEMS_INCREASED",
        "MAX_ITEMS_REMOVED",
        "MIN_ITEMS_DECREASED",
        "MIN_ITEMS_REMOVED",
        "UNIQUE_ITEMS_REMOVED",
        "ADDITIONAL_ITEMS_ADDED",
        "ADDITIONAL_ITEMS_EXTENDED",
        "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
        "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL",
        "ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL",
        "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "ENUM_ARRAY_EXTENDED",
        "ENUM_REMOVED",
        "CONST_REMOVED",
        "COMBINED_TYPE_EXTENDED",
        "PRODUCT_TYPE_NARROWED",
        "SUM_TYPE_EXTENDED",
        "NOT_TYPE_NARROWED",
        "NOT_TYPE_REMOVED",
        "KEYWORD_REMOVED",
    ]
)

TYPES: Final = ("null", "boolean", "object", "array", "number", "string", "integer")
ANY_TYPE: Final = frozenset(TYPES)
# Assertions this module does not analyse: any change but their removal is incompatible.
OPAQUE: Final = (
    "if",
    "then",
    "else",
    "dependentSchemas",
    "propertyNames",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
)
# Keywords that hold assertions: a schema with none of them accepts everything.
ASSERTIONS: Final = frozenset(
    [
        *[
            "type",
            "enum",
            "const",
            "minLength",
            "maxLength",
            "pattern",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "minProperties",
            "maxProperties",
            "dependentRequired",
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "uniqueItems",
            "allOf",
            "anyOf",
            "oneOf",
            "not",
            "$ref",
        ],
        *OPAQUE,
    ]
)
COMBINERS: Final = ("allOf", "anyOf", "oneOf")
MAX_REFS: Final = 64  # `$ref`s followed in a row before giving up (a ref to a ref to ...)

# (keyword, name, a larger value widens) for the bounds compared alike.
BOUNDS: Final = (
    ("maxLength", "MAX_LENGTH", True),
    ("minLength", "MIN_LENGTH", False),
    ("maximum", "MAXIMUM", True),
    ("minimum", "MINIMUM", False),
    ("exclusiveMaximum", "EXCLUSIVE_MAXIMUM", True),
    ("exclusiveMinimum", "EXCLUSIVE_MINIMUM", False),
    ("maxProperties", "MAX_PROPERTIES", True),
    ("minProperties", "MIN_PROPERTIES", False),
    ("maxItems", "MAX_ITEMS", True),
    ("minItems", "MIN_ITEMS", False),
)
WIDER: Final = {True: "INCREASED", False: "DECREASED"}
NARROWER: Final = {True: "DECREASED", False: "INCREASED"}


def pointer_part(key: str | int) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def resolve_pointer(root: Any, pointer: str) -> Any:
    node = root
    for raw in pointer.split("/")[1:]:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return UNRESOLVED
    return node


UNRESOLVED: Final = object()


def find_anchor(node: Any, name: str) -> Any:
    if isinstance(node, Mapping):
        if node.get("$anchor") == name:
            return node
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return UNRESOLVED
    for child in children:
        found = find_anchor(child, name)
        if found is not UNRESOLVED:
            return found
    return UNRESOLVED


def is_empty(schema: Any) -> bool:
    """Accepts everything: `true`, or an object holding no assertion."""
    return schema is True or (isinstance(schema, Mapping) and not ASSERTIONS & schema.keys())


def wide(schema: Any) -> bool:
    """An optional keyword's schema that accepts everything: absent, `true` or `{}`."""
    return schema is None or is_empty(schema)


def types_of(schema: Mapping[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    if declared is None:
        return ANY_TYPE
    names = frozenset([declared] if isinstance(declared, str) else declared)
    return names | {"integer"} if "number" in names else names


def only_combiner(schema: Any) -> str | None:
    """The one of allOf / anyOf / oneOf that is `schema`'s only assertion, if so."""
    if not isinstance(schema, Mapping):
        return None
    held = ASSERTIONS & schema.keys()
    if len(held) == 1:
        (keyword,) = held
        if keyword in COMBINERS and isinstance(schema[keyword], list):
            return keyword
    return None


def required_added(schema: Any, what: str, suffix: str = "") -> str:
    with_default = isinstance(schema, Mapping) and "default" in schema
    return f"REQUIRED_{what}{'_WITH_DEFAULT' if with_default else ''}_ADDED{suffix}"


def is_open(schema: Mapping[str, Any]) -> bool:
    """An open content model: any other property, of any shape, is allowed."""
    return not schema.get("patternProperties") and is_empty(
        schema.get("additionalProperties", True)
    )


def partial(schema: Mapping[str, Any], name: str) -> Any:
    """The schema a partially open content model gives property `name` (None: closed)."""
    for pattern, sub in (schema.get("patternProperties") or {}).items():
        try:
            if re.search(pattern, name):
                return sub
        except re.error:
            return True  # a pattern Python cannot read: assume the widest
    extra = schema.get("additionalProperties")
    return None if extra is False else extra


def canonical(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def value_set(values: Any) -> set[bytes]:
    return {canonical(v) for v in values} if isinstance(values, list) else {canonical(values)}
