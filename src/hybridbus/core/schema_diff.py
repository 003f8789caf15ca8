"""Compatibility of two JSON Schemas (Draft 2020-12): the differences, and which ones are safe.

Owns: `differences(original, update)`, a structural comparison after the
rules of Confluent's Schema Registry for JSON Schema (its `SchemaDiff`:
the same difference names, the same open / closed / partially open content
models), and `COMPATIBLE`, the differences after which every instance valid
under `original` is still valid under `update`. Must not validate instances
(the hub compiles validators), nor know versions or modes (`core.schemas`).

Theory of operation. `differences(original, update)` walks both schemas
side by side, from the root, and names each difference by where it is in
the schemas (a JSON pointer, `#/properties/items/items/properties/qty`)
and what it is (`TYPE_NARROWED`, `PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL`,
...). A difference is compatible when `update` accepts at least what
`original` accepted there: a type extended, a bound relaxed, a required
property dropped, an enum grown, a property added to a closed object. So
"backward" (the new version reads data written under the old) is
`differences(old, new)` holding only compatible ones, "forward" is
`differences(new, old)`, "full" both.

The comparison is conservative: where it cannot tell (a keyword it does not
analyse, such as `if`/`then`/`else`, `unevaluatedProperties`, `contains`,
`propertyNames`, `dependentSchemas`, changed, or a `$ref` it cannot resolve
inside the document), the change counts as incompatible; removing such a
keyword only ever widens, and is compatible. Annotations (`title`,
`description`, `default`, `examples`, `format` — an annotation in 2020-12
—, `$comment`, `$id`, ...) never make a change incompatible. Local `$ref`s
(`#`, `#/json/pointer`, `#anchor`, or the document's own `$id` followed by
one of those) are followed, recursion included: a pair of schemas already
being compared counts as compatible (coinduction). Schemas nested deeper
than 200 path parts are not compared past that depth (`NESTING_TOO_DEEP`,
incompatible), so that no schema can exhaust the stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import unquote

from hybridbus.core.schema_rules import (
    ASSERTIONS,
    BOUNDS,
    COMBINERS,
    COMPATIBLE,
    MAX_REFS,
    NARROWER,
    OPAQUE,
    UNRESOLVED,
    WIDER,
    Difference,
    find_anchor,
    is_empty,
    is_open,
    only_combiner,
    partial,
    pointer_part,
    required_added,
    resolve_pointer,
    same,
    types_of,
    value_set,
    wide,
)

__all__ = ["COMPATIBLE", "Difference", "differences", "is_compatible"]


def differences(original: Any, update: Any) -> list[Difference]:
    """Every difference between schema `original` and schema `update`, where each is found."""
    walk = _Walk(original, update)
    walk.compare(original, update)
    return walk.found


def is_compatible(original: Any, update: Any) -> bool:
    """Whether every instance `original` accepts, `update` accepts too (as far as this can tell)."""
    return all(d.compatible for d in differences(original, update))


# Where a comparison stops going deeper (in path parts: Python frames stay well under the limit).
_DEEPEST: Final = 200


class _Walk:
    """One comparison: the roots (for `$ref`), where it is, and what it found."""

    def __init__(self, original: Any, update: Any) -> None:
        self.roots = (original, update)
        self.path: list[str] = []
        self.found: list[Difference] = []
        self._seen: set[tuple[int, int]] = set()

    # -- bookkeeping ---------------------------------------------------------------

    def add(self, kind: str, *where: str | int) -> None:
        path = "/".join(["#", *self.path, *(pointer_part(w) for w in where)])
        self.found.append(Difference(path, kind))

    @contextmanager
    def at(self, *where: str | int) -> Iterator[None]:
        parts = [pointer_part(w) for w in where]
        self.path.extend(parts)
        try:
            yield
        finally:
            del self.path[len(self.path) - len(parts) :]

    def fits(self, original: Any, update: Any) -> tuple[bool, list[Difference]]:
        """Compare in a sub-walk: whether compatible, and what it found."""
        sub = _Walk.__new__(_Walk)
        sub.roots, sub.path, sub.found, sub._seen = self.roots, list(self.path), [], self._seen
        sub.compare(original, update)
        return all(d.compatible for d in sub.found), sub.found

    def deref(self, schema: Any, side: int) -> Any:
        """`schema` with its `$ref` followed (siblings: as `allOf` of the target and them)."""
        for _ in range(MAX_REFS):
            if not isinstance(schema, Mapping) or not isinstance(schema.get("$ref"), str):
                return schema
            target = self._target(schema["$ref"], side)
            if target is UNRESOLVED:
                return schema
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            if ASSERTIONS & rest.keys():
                return {"allOf": [target, rest]}
            schema = target
        return schema

    def _target(self, ref: str, side: int) -> Any:
        root = self.roots[side]
        base = root.get("$id") if isinstance(root, Mapping) else None
        if isinstance(base, str) and ref.startswith(base.split("#")[0]) and "#" in ref:
            ref = ref[len(base.split("#")[0]) :]
        if ref in ("", "#"):
            return root
        if not ref.startswith("#"):
            return UNRESOLVED
        if ref.startswith("#/"):
            return resolve_pointer(root, ref[1:])
        return find_anchor(root, unquote(ref[1:]))

    # -- the comparison -------------------------------------------------------------------

    def compare(self, original: Any, update: Any) -> None:
        original, update = self.deref(original, 0), self.deref(update, 1)
        key = (id(original), id(update))
        if key in self._seen:
            return
        if len(self.path) > _DEEPEST:
            self.add("NESTING_TOO_DEEP")  # not compared: counts as incompatible
            return
        if original is False or is_empty(update):
            return  # nothing to read, or everything accepted
        if update is False or original is True:
            self.add("TYPE_NARROWED")
            return
        if not isinstance(original, Mapping) or not isinstance(update, Mapping):
            self.add("TYPE_CHANGED")
            return
        for side, schema in ((0, original), (1, update)):
            ref = schema.get("$ref")
            if isinstance(ref, str) and self._target(ref, side) is UNRESOLVED:
                self.add("REFERENCE_UNRESOLVED", "$ref")
                return
        self._seen.add(key)
        try:
            if self._combined(original, update):
                return
            self._schema(original, update)
        finally:
            self._seen.discard(key)

    def _combined(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
        """Confluent's rules for one side a plain schema, the other a combination."""
        was, now = only_combiner(original), only_combiner(update)
        if (was is None) == (now is None):
            return False
        if now is not None:
            subs = update[now]
            if len(subs) == 1 or now == "anyOf":
                for index, sub in enumerate(subs):
                    with self.at(now, index):
                        fits, found = self.fits(original, sub)
                    if fits:
                        self.found.extend(found)
                        if len(subs) > 1:
                            self.add("SUM_TYPE_EXTENDED", now)
                        return True
        elif was is not None:
            subs = original[was]
            if len(subs) == 1 or was == "allOf":
                for index, sub in enumerate(subs):
                    with self.at(was, index):
                        fits, found = self.fits(sub, update)
                    if fits:
                        self.found.extend(found)
                        if len(subs) > 1:
                            self.add("PRODUCT_TYPE_NARROWED", was)
                        return True
        self.add("COMBINED_TYPE_CHANGED")
        return True

    def _schema(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        was, now = types_of(original), types_of(update)
        if not was <= now:
            self.add("TYPE_NARROWED" if now < was else "TYPE_CHANGED", "type")
            return
        if was != now:
            self.add("TYPE_EXTENDED", "type")
        for keyword, kind in (
            ("$id", "ID_CHANGED"),
            ("title", "TITLE_CHANGED"),
            ("description", "DESCRIPTION_CHANGED"),
            ("default", "DEFAULT_CHANGED"),
        ):
            if original.get(keyword) != update.get(keyword):
                self.add(kind, keyword)
        self._values(original, update)
        self._bounds(original, update)
        self._strings(original, update)
        self._objects(original, update)
        self._arrays(original, update)
        self._combiners(original, update)
        for keyword in OPAQUE:
            if keyword in original and keyword not in update:
                self.add("KEYWORD_REMOVED", keyword)
            elif keyword in update and (
                keyword not in original or not same(original[keyword], update[keyword])
            ):
                self.add("KEYWORD_CHANGED", keyword)

    def _values(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        if "enum" in original or "enum" in update:
            if "enum" not in update:
                self.add("ENUM_REMOVED", "enum")
            elif "enum" not in original:
                self.add("ENUM_ADDED", "enum")
            else:
                was, now = value_set(original["enum"]), value_set(update["enum"])
                if was < now:
                    self.add("ENUM_ARRAY_EXTENDED", "enum")
                elif now < was:
                    self.add("ENUM_ARRAY_NARROWED", "enum")
                elif was != now:
                    self.add("ENUM_ARRAY_CHANGED", "enum")
        if "const" in original or "const" in update:
            if "const" not in update:
                self.add("CONST_REMOVED", "const")
            elif "const" not in original:
                self.add("CONST_ADDED", "const")
            elif not same(original["const"], update["const"]):
                self.add("CONST_CHANGED", "const")

    def _bounds(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        for keyword, name, larger_widens in BOUNDS:
            was, now = original.get(keyword), update.get(keyword)
            if was == now:
                continue
            if now is None:
                self.add(f"{name}_REMOVED", keyword)
            elif was is None:
                self.add(f"{name}_ADDED", keyword)
            elif not isinstance(was, int | float) or not isinstance(now, int | float):
                self.add(f"{name}_CHANGED", keyword)
            elif (now > was) == larger_widens:
                self.add(f"{name}_{WIDER[larger_widens]}", keyword)
            else:
                self.add(f"{name}_{NARROWER[larger_widens]}", keyword)
        was, now = original.get("multipleOf"), update.get("multipleOf")
        if was != now:
            if now is None:
                self.add("MULTIPLE_OF_REMOVED", "multipleOf")
            elif was is None:
                self.add("MULTIPLE_OF_ADDED", "multipleOf")
            elif isinstance(was, int) and isinstance(now, int) and now and was % now == 0:
                self.add("MULTIPLE_OF_REDUCED", "multipleOf")
            elif isinstance(was, int) and isinstance(now, int) and was and now % was == 0:
                self.add("MULTIPLE_OF_EXPANDED", "multipleOf")
            else:
                self.add("MULTIPLE_OF_CHANGED", "multipleOf")
        if original.get("uniqueItems") is True and update.get("uniqueItems") is not True:
            self.add("UNIQUE_ITEMS_REMOVED", "uniqueItems")
        elif update.get("uniqueItems") is True and original.get("uniqueItems") is not True:
            self.add("UNIQUE_ITEMS_ADDED", "uniqueItems")

    def _strings(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        was, now = original.get("pattern"), update.get("pattern")
        if was != now:
            if now is None:
                self.add("PATTERN_REMOVED", "pattern")
            elif was is None:
                self.add("PATTERN_ADDED", "pattern")
            else:
                self.add("PATTERN_CHANGED", "pattern")

    def _objects(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        was_props: Mapping[str, Any] = original.get("properties") or {}
        now_props: Mapping[str, Any] = update.get("properties") or {}
        was_required = set(original.get("required") or ())
        now_required = set(update.get("required") or ())
        for name in was_props:
            if name in now_props:
                if name in was_required and name not in now_required:
                    self.add("REQUIRED_ATTRIBUTE_REMOVED", "required", name)
                elif name in now_required and name not in was_required:
                    self.add(required_added(now_props[name], "ATTRIBUTE"), "required", name)
        for name in sorted(now_required - was_required - set(now_props)):
            self.add("REQUIRED_ATTRIBUTE_ADDED", "required", name)  # required, undeclared
        for name in list(was_props) + [n for n in now_props if n not in was_props]:
            with self.at("properties", name):
                self._property(original, update, name)
        self._additional(original, update)
        was_deps = original.get("dependentRequired") or {}
        now_deps = update.get("dependentRequired") or {}
        for name in sorted(set(was_deps) | set(now_deps)):
            if name not in now_deps:
                self.add("DEPENDENCY_ARRAY_REMOVED", "dependentRequired", name)
            elif name not in was_deps:
                self.add("DEPENDENCY_ARRAY_ADDED", "dependentRequired", name)
            else:
                was, now = set(was_deps[name]), set(now_deps[name])
                if now < was:
                    self.add("DEPENDENCY_ARRAY_NARROWED", "dependentRequired", name)
                elif was < now:
                    self.add("DEPENDENCY_ARRAY_EXTENDED", "dependentRequired", name)
                elif was != now:
                    self.add("DEPENDENCY_ARRAY_CHANGED", "dependentRequired", name)

    def _property(self, original: Mapping[str, Any], update: Mapping[str, Any], name: str) -> None:
        was = (original.get("properties") or {}).get(name)
        now = (update.get("properties") or {}).get(name)
        if was is not None and now is not None:
            self.compare(was, now)
        elif now is None:  # removed: only the update's content model matters
            if is_open(update):
                self.add("PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL")
                return
            cover = partial(update, name)
            if cover is not None:
                fits, found = self.fits(was, cover)
                self.found.extend(found)
                self.add(
                    "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                    if fits
                    else "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                )
            elif was is False:
                self.add("PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL")
            else:
                self.add("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL")
        else:  # added: only the original's content model matters
            if is_open(original):
                self.add(
                    "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
                    if is_empty(now)
                    else "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
                )
                return
            cover = partial(original, name)
            if cover is not None:
                fits, found = self.fits(cover, now)
                self.found.extend(found)
                self.add(
                    "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                    if fits
                    else "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                )
            if name in set(update.get("required") or ()):
                self.add(required_added(now, "PROPERTY", "_TO_UNOPEN_CONTENT_MODEL"))
            else:
                self.add("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL")

    def _additional(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        was, now = original.get("additionalProperties"), update.get("additionalProperties")
        with self.at("additionalProperties"):
            if (was is not False) != (now is not False):
                self.add(
                    "ADDITIONAL_PROPERTIES_ADDED"
                    if was is False
                    else "ADDITIONAL_PROPERTIES_REMOVED"
                )
            elif wide(was) and not wide(now):
                self.add("ADDITIONAL_PROPERTIES_NARROWED")
            elif wide(now) and not wide(was):
                self.add("ADDITIONAL_PROPERTIES_EXTENDED")
            elif was is not None and now is not None:
                self.compare(was, now)
        was_patterns = original.get("patternProperties") or {}
        now_patterns = update.get("patternProperties") or {}
        for pattern in sorted(set(was_patterns) | set(now_patterns)):
            with self.at("patternProperties", pattern):
                if pattern not in now_patterns:
                    # its names fall to additionalProperties now: as wide only if that is empty
                    if not wide(now):
                        self.add("PATTERN_PROPERTY_REMOVED")
                elif pattern not in was_patterns:
                    if not is_empty(now_patterns[pattern]):
                        self.add("PATTERN_PROPERTY_ADDED")
                else:
                    self.compare(was_patterns[pattern], now_patterns[pattern])

    def _arrays(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        was_tuple = original.get("prefixItems") or []
        now_tuple = update.get("prefixItems") or []
        was_rest, now_rest = original.get("items"), update.get("items")
        for index in range(max(len(was_tuple), len(now_tuple))):
            with self.at("prefixItems", index):
                if index < len(was_tuple) and index < len(now_tuple):
                    self.compare(was_tuple[index], now_tuple[index])
                elif index < len(was_tuple):  # removed: what the update says of that place
                    if wide(now_rest):
                        self.add("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL")
                    elif now_rest is False:
                        if was_tuple[index] is False:
                            self.add("ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL")
                        else:
                            self.add("ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL")
                    else:
                        fits, found = self.fits(was_tuple[index], now_rest)
                        self.found.extend(found)
                        self.add(
                            "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                            if fits
                            else "ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                        )
                else:  # added: what the original said of that place
                    if was_rest is False:
                        self.add("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL")
                    elif wide(was_rest):
                        self.add(
                            "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
                            if is_empty(now_tuple[index])
                            else "ITEM_ADDED_TO_OPEN_CONTENT_MODEL"
                        )
                    else:
                        fits, found = self.fits(was_rest, now_tuple[index])
                        self.found.extend(found)
                        self.add(
                            "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                            if fits
                            else "ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
                        )
        with self.at("items"):
            if wide(was_rest):
                if not wide(now_rest):
                    self.add(
                        "ADDITIONAL_ITEMS_NARROWED"
                        if now_rest is not False
                        else "ADDITIONAL_ITEMS_REMOVED"
                    )
            elif wide(now_rest):
                self.add(
                    "ADDITIONAL_ITEMS_EXTENDED"
                    if was_rest is not False
                    else "ADDITIONAL_ITEMS_ADDED"
                )
            else:
                self.compare(was_rest, now_rest)

    def _combiners(self, original: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        for keyword in COMBINERS:
            was, now = original.get(keyword), update.get(keyword)
            if was is None and now is None:
                continue
            with self.at(keyword):
                if now is None:
                    self.add("COMBINED_TYPE_EXTENDED" if keyword == "allOf" else "KEYWORD_REMOVED")
                elif was is None:
                    self.add("COMBINED_TYPE_CHANGED")
                elif keyword == "allOf":
                    self._all_of(list(was), list(now))
                else:
                    self._any_of(list(was), list(now))
        was, now = original.get("not"), update.get("not")
        if was is not None or now is not None:
            with self.at("not"):
                if now is None:
                    self.add("NOT_TYPE_REMOVED")
                elif was is None:
                    self.add("NOT_TYPE_ADDED")
                else:
                    fits, found = self.fits(now, was)  # the update must exclude less
                    if not fits:
                        self.found.extend(found)
                        self.add("NOT_TYPE_EXTENDED")
                    elif found:
                        self.add("NOT_TYPE_NARROWED")

    def _any_of(self, was: list[Any], now: list[Any]) -> None:
        """Each of the original's alternatives must fit one of the update's."""
        for index, sub in enumerate(was):
            with self.at(index):
                order = [index] if index < len(now) else []
                order += [i for i in range(len(now)) if i != index]
                for other in order:
                    fits, found = self.fits(sub, now[other])
                    if fits:
                        self.found.extend(found)
                        break
                else:
                    if index < len(now):
                        self.compare(sub, now[index])
                    else:
                        self.add("COMBINED_TYPE_SUBSCHEMAS_CHANGED")
        if len(now) > len(was):
            self.add("SUM_TYPE_EXTENDED")

    def _all_of(self, was: list[Any], now: list[Any]) -> None:
        """Each of the update's conditions must follow from one of the original's."""
        for index, sub in enumerate(now):
            with self.at(index):
                order = [index] if index < len(was) else []
                order += [i for i in range(len(was)) if i != index]
                for other in order:
                    fits, found = self.fits(was[other], sub)
                    if fits:
                        self.found.extend(found)
                        break
                else:
                    if index < len(was):
                        self.compare(was[index], sub)
                    else:
                        self.add("PRODUCT_TYPE_EXTENDED")
        if len(now) < len(was):
            self.add("PRODUCT_TYPE_NARROWED")
