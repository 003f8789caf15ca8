"""Schemas, the pure part (core/schemas.py, core/schema_diff.py): compatibility per mode, names.

The compatibility cases are Confluent's documented ones for JSON Schema (open and
closed content models, required and optional properties, narrowing and widening
types, enums, bounds): each accepted or refused per mode, a refusal naming the
path. Hypothesis checks that a schema is compatible with itself in every mode, and
that "compatible" is never a lie: an instance the old schema accepts, a new one
found backward compatible accepts too (checked with the real validator).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridbus.core.schema_diff import differences, is_compatible
from hybridbus.core.schemas import (
    MODES,
    check_compatible,
    check_mode,
    check_type_name,
    check_version,
    data_path,
    incompatibilities,
    schema_uri,
)
from hybridbus.errors import ErrorCode, InvalidSchema, SchemaIncompatible


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), **more}


CLOSED = {"additionalProperties": False}
S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741


def refused(previous: Any, new: Any, mode: str) -> SchemaIncompatible:
    with pytest.raises(SchemaIncompatible) as caught:
        check_compatible("t", 1, previous, new, check_mode(mode))
    assert caught.value.code == ErrorCode.SCHEMA_INCOMPATIBLE
    return caught.value


def accepted(previous: Any, new: Any, mode: str) -> None:
    check_compatible("t", 1, previous, new, check_mode(mode))


# (case, previous, new, the modes that accept it, the path a refusal names)
CASES: list[tuple[str, Any, Any, set[str], str]] = [
    (
        "an optional property added to a closed model",
        obj({"a": S}, ("a",), **CLOSED),
        obj({"a": S, "b": I}, ("a",), **CLOSED),
        {"backward", "none"},
        "#/properties/b",
    ),
    (
        "an optional property added to an open model",
        obj({"a": S}, ("a",)),
        obj({"a": S, "b": I}, ("a",)),
        {"forward", "none"},  # old data may hold a "b" of another type
        "#/properties/b",
    ),
    (
        "a property of any shape added to an open model",
        obj({"a": S}),
        obj({"a": S, "b": {}}),
        set(MODES),
        "",
    ),
    (
        "a required property added to a closed model",
        obj({"a": S}, ("a",), **CLOSED),
        obj({"a": S, "b": I}, ("a", "b"), **CLOSED),
        {"none"},  # forward: the old closed model refuses "b"
        "#/properties/b",
    ),
    (
        "a required property with a default added to a closed model",
        obj({"a": S}, ("a",), **CLOSED),
        obj({"a": S, "b": {**I, "default": 0}}, ("a", "b"), **CLOSED),
        {"backward", "none"},
        "#/properties/b",
    ),
    (
        "a required property removed (becomes optional)",
        obj({"a": S, "b": I}, ("a", "b")),
        obj({"a": S, "b": I}, ("a",)),
        {"backward", "none"},
        "#/required/b",
    ),
    (
        "an optional property removed from an open model",
        obj({"a": S, "b": I}, ("a",)),
        obj({"a": S}, ("a",)),
        {"backward", "none"},
        "#/properties/b",
    ),
    (
        "a property removed from a closed model",
        obj({"a": S, "b": I}, ("a",), **CLOSED),
        obj({"a": S}, ("a",), **CLOSED),
        {"forward", "none"},
        "#/properties/b",
    ),
    (
        "a type narrowed (number to integer)",
        obj({"n": {"type": "number"}}),
        obj({"n": I}),
        {"forward", "none"},
        "#/properties/n/type",
    ),
    (
        "a type widened (string to string or null)",
        obj({"s": S}),
        obj({"s": {"type": ["string", "null"]}}),
        {"backward", "none"},
        "#/properties/s/type",
    ),
    (
        "a type changed (string to integer)",
        obj({"s": S}),
        obj({"s": I}),
        {"none"},
        "#/properties/s/type",
    ),
    (
        "an enum extended",
        obj({"c": {"enum": ["EUR", "USD"]}}),
        obj({"c": {"enum": ["EUR", "USD", "GBP"]}}),
        {"backward", "none"},
        "#/properties/c/enum",
    ),
    (
        "an enum narrowed",
        obj({"c": {"enum": ["EUR", "USD"]}}),
        obj({"c": {"enum": ["EUR"]}}),
        {"forward", "none"},
        "#/properties/c/enum",
    ),
    (
        "an enum changed",
        obj({"c": {"enum": ["EUR", "USD"]}}),
        obj({"c": {"enum": ["EUR", "GBP"]}}),
        {"none"},
        "#/properties/c/enum",
    ),
    (
        "additionalProperties opened (false to absent)",
        obj({"a": S}, **CLOSED),
        obj({"a": S}),
        {"backward", "none"},
        "#/additionalProperties",
    ),
    (
        "additionalProperties closed",
        obj({"a": S}),
        obj({"a": S}, **CLOSED),
        {"forward", "none"},
        "#/additionalProperties",
    ),
    (
        "a maximum lowered, in an array's items",
        {"type": "array", "items": obj({"qty": {**I, "maximum": 100}})},
        {"type": "array", "items": obj({"qty": {**I, "maximum": 10}})},
        {"forward", "none"},
        "#/items/properties/qty/maximum",
    ),
    (
        "a maxLength raised",
        obj({"s": {**S, "maxLength": 10}}),
        obj({"s": {**S, "maxLength": 20}}),
        {"backward", "none"},
        "#/properties/s/maxLength",
    ),
    (
        "a pattern added",
        obj({"s": S}),
        obj({"s": {**S, "pattern": "^a"}}),
        {"forward", "none"},
        "#/properties/s/pattern",
    ),
    (
        "a property added to a partially open model, covered by its patternProperties",
        obj({"a": S}, patternProperties={"^x_": S}, **CLOSED),
        obj({"a": S, "x_b": S}, patternProperties={"^x_": S}, **CLOSED),
        set(MODES),  # the pattern said as much: x_b was a string either way
        "",
    ),
    (
        "a property added to a partially open model, not covered",
        obj({"a": S}, patternProperties={"^x_": S}, **CLOSED),
        obj({"a": S, "x_b": I}, patternProperties={"^x_": S}, **CLOSED),
        {"none"},
        "#/properties/x_b/type",
    ),
    (
        "an anyOf alternative added",
        {"anyOf": [S, I]},
        {"anyOf": [S, I, {"type": "null"}]},
        {"backward", "none"},
        "#/anyOf/2",
    ),
    (
        "a change behind a local $ref",
        {"$defs": {"q": {**I, "minimum": 1}}, **obj({"q": {"$ref": "#/$defs/q"}})},
        {"$defs": {"q": {**I, "minimum": 5}}, **obj({"q": {"$ref": "#/$defs/q"}})},
        {"forward", "none"},
        "#/properties/q/minimum",
    ),
    (
        "an annotation changed (title, description, format)",
        obj({"s": {**S, "title": "a", "format": "email"}}),
        obj({"s": {**S, "title": "b", "description": "now described"}}),
        set(MODES),
        "",
    ),
]


@pytest.mark.parametrize(
    ("case", "previous", "new", "modes", "path"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("mode", MODES)
def test_compatibility_per_mode(
    case: str, previous: Any, new: Any, modes: set[str], path: str, mode: str
) -> None:
    if mode in modes:
        accepted(previous, new, mode)
    else:
        error = refused(previous, new, mode)
        assert error.path == path, str(error)
        assert path in str(error) and mode in str(error)
    if mode == "full":
        assert ("full" in modes) == ({"backward", "forward"} <= modes)


def test_a_refusal_names_the_kind_and_direction() -> None:
    error = refused(obj({"a": S}, ("a",), **CLOSED), obj({"a": I}, ("a",), **CLOSED), "backward")
    assert error.kinds == ("TYPE_CHANGED",)
    assert "#/properties/a/type TYPE_CHANGED (backward)" in str(error)
    found = incompatibilities(obj({"a": S}), obj({"a": S, "b": I}, **CLOSED), "full")
    assert {way for way, _ in found} == {"backward"}


def test_recursive_refs_end() -> None:
    tree = {"$defs": {"n": obj({"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}})}}
    old = {**tree, "$ref": "#/$defs/n"}
    assert differences(old, old) == []
    grown = {
        "$defs": {"n": obj({"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}, "v": I})},
        "$ref": "#/$defs/n",
    }
    assert not is_compatible(old, grown)  # open model: a property added
    assert is_compatible(grown, old)


def test_an_unresolvable_ref_is_incompatible() -> None:
    outside = obj({"a": {"$ref": "https://example.com/a.json"}})
    assert [d.kind for d in differences(outside, outside)] == ["REFERENCE_UNRESOLVED"]


# -- names, versions, URIs, paths -------------------------------------------------------


def test_data_paths() -> None:
    assert data_path([]) == "data"
    assert data_path(["items", 2, "qty"]) == "data.items[2].qty"
    assert data_path(["a b", 0, "é"]) == 'data["a b"][0]["é"]'


def test_type_names_modes_and_versions() -> None:
    assert check_type_name("com.acme.order:v1-x_y") == "com.acme.order:v1-x_y"
    for bad in ("", "a/b", "a+", "#", " a", ".a", "x" * 201, 5):
        with pytest.raises(InvalidSchema):
            check_type_name(bad)
    with pytest.raises(InvalidSchema):
        check_mode("transitive")
    assert check_version("latest", 7) == 7
    assert check_version("3", 7) == 3
    for bad in ("0", "-1", "x", 0, True, "99999999999"):
        with pytest.raises(InvalidSchema):
            check_version(bad, 7)


def test_uris() -> None:
    assert schema_uri("acme", "t", 2, {}) == "hybridbus:schemas/acme/t/2"
    assert schema_uri("acme", "t", 2, {"$id": "https://x/y"}) == "https://x/y"
    assert schema_uri("acme", "t", 2, True) == "hybridbus:schemas/acme/t/2"


# -- properties ----------------------------------------------------------------------------

_LEAF = st.one_of(
    st.just({}),
    st.sampled_from([S, I, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]),
    st.builds(lambda n: {**I, "minimum": n}, st.integers(-3, 3)),
    st.builds(lambda n: {**I, "maximum": n}, st.integers(-3, 3)),
    st.builds(lambda n: {**S, "maxLength": n}, st.integers(0, 3)),
    st.builds(
        lambda v: {"enum": v}, st.lists(st.integers(-2, 2), min_size=1, max_size=3, unique=True)
    ),
    st.builds(
        lambda t: {"type": t},
        st.lists(
            st.sampled_from(["string", "integer", "null"]), min_size=1, max_size=3, unique=True
        ),
    ),
)
_NAMES = st.sampled_from(["a", "b", "c"])


def _objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(
        lambda props, req, closed: {
            "type": "object",
            "properties": props,
            "required": sorted(set(req) & set(props)),
            **({"additionalProperties": False} if closed else {}),
        },
        st.dictionaries(_NAMES, children, max_size=3),
        st.lists(_NAMES, max_size=3),
        st.booleans(),
    )


SCHEMAS = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        _objects(children),
        st.builds(lambda items: {"type": "array", "items": items}, children),
        st.builds(lambda subs: {"anyOf": subs}, st.lists(children, min_size=1, max_size=3)),
    ),
    max_leaves=6,
)
INSTANCES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-4, 4), st.text("ab", max_size=4)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_NAMES, children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS)
def test_a_schema_is_compatible_with_itself_in_every_mode(schema: Any) -> None:
    for mode in MODES:
        check_compatible("t", 1, schema, schema, check_mode(mode))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS, SCHEMAS, st.lists(INSTANCES, min_size=1, max_size=20))
def test_compatible_is_never_a_lie(old: Any, new: Any, instances: list[Any]) -> None:
    if not is_compatible(old, new):
        return
    before = jsonschema_rs.Draft202012Validator(old)
    after = jsonschema_rs.Draft202012Validator(new)
    for instance in instances:
        if before.is_valid(instance):
            assert after.is_valid(instance), (old, new, instance, differences(old, new))


def test_a_deeply_nested_schema_is_compared_without_exhausting_the_stack() -> None:
    deep: Any = {}
    for _ in range(2000):  # the Python stack would not hold one frame per level
        deep = {"properties": {"a": deep}}
    assert [d.kind for d in differences(deep, deep)] == ["NESTING_TOO_DEEP"]
    shallow = obj({"a": obj({"b": S})})
    assert differences(shallow, shallow) == []
