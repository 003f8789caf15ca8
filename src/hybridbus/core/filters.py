"""Server-side filters of a subscription: which deliveries of its pattern it is handed.

Owns: `Filter` (what a client asks for: a minimum level, field equality, a
substring, a regular expression, event types — all of them must hold), its
limits, its text forms (`field=k:v` of SSE and the CLI: `parse_field`), and
`compile_filter`, which checks a filter once and returns the predicate the
hub runs on every delivery (`Match`). Must not do I/O nor know subscriptions:
the hub's `Subscription` applies the predicate, so that every way in shares it.

What each condition looks at (docs/protocol.md §5.1 is the reference):

    condition   a log event (type "log", data an object)     any other event
    level       data.level (absent: "info"), at least this    data.level if data is an object
                                                              with one; else no match
    fields      data.fields[k] == v for every k               data[k] == v (data an object)
    contains    a substring of data.message                   of the data as JSON (bytes: UTF-8)
    regex       RE2 `search` in data.message                  in the data as JSON (bytes: UTF-8)
    types       -                                             the event's `type` is one of them

Equality: a number equals a number of the same value (1 == 1.0), a boolean
only a boolean, None only null; a string value equals a string, and also a
number, boolean or null whose JSON text it is (`"500"` matches 500,
`"true"` matches true), so that the text forms (`field=status:500`) need no
types. A missing key never matches.

Regular expressions are RE2 (the `google-re2` package): matching takes
linear time in the text whatever the pattern, and a compiled pattern's
memory is bounded (`_REGEX_MEMORY`) — a peer's pattern cannot stall the
server as a backtracking one (Python's `re`) can. RE2 has no
backreferences or lookaround; such a pattern is refused (`InvalidInput`).
Without the package, a regex filter is refused, never run with `re`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from hybridbus.core.event import Event
from hybridbus.core.logs import EVENT_TYPE, level_rank
from hybridbus.errors import InvalidInput

__all__ = [
    "MAX_CONTAINS",
    "MAX_FIELDS",
    "MAX_FIELD_KEY",
    "MAX_FIELD_VALUE",
    "MAX_REGEX",
    "MAX_TYPES",
    "FieldValue",
    "Filter",
    "Match",
    "compile_filter",
    "parse_field",
]

FieldValue = str | int | float | bool | None
Match = Callable[[Event], bool]

# Limits of one filter (characters, entries): a filter is compiled once per
# subscription and run on every delivery of its pattern.
MAX_CONTAINS: Final = 1024
MAX_REGEX: Final = 512
MAX_FIELDS: Final = 16
MAX_FIELD_KEY: Final = 128
MAX_FIELD_VALUE: Final = 1024
MAX_TYPES: Final = 16
_MAX_TYPE: Final = 256
# Bytes RE2 may use for one compiled pattern (its default is 8 MiB).
_REGEX_MEMORY: Final = 1 << 20


class Filter(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """What a subscription is handed of its pattern: every condition given must hold.

    `level`: the minimum level (a name, an alias, or a Python logging
    number as text); `fields`: equality on the log record's fields (or on
    the data's top-level keys of other events); `contains`: a substring and
    `regex`: an RE2 pattern searched in the log message (or the data as
    JSON); `types`: the event's `type` is one of these. The module docstring
    says exactly what each looks at.
    """

    level: str | None = None
    fields: dict[str, FieldValue] = msgspec.field(default_factory=dict)
    contains: str | None = None
    regex: str | None = None
    types: list[str] = msgspec.field(default_factory=list)

    def empty(self) -> bool:
        """True if the filter lets everything through."""
        return (
            self.level is None
            and not self.fields
            and self.contains is None
            and self.regex is None
            and not self.types
        )


def parse_field(text: str) -> tuple[str, str]:
    """`key:value` (SSE's `field=`) or `key=value` (the CLI's `--field`): the pair.

    The first `:` or `=` splits; the value is text (it matches a number,
    boolean or null whose JSON text it is: module docstring).
    """
    cut = min((i for i in (text.find(":"), text.find("=")) if i > 0), default=-1)
    if cut <= 0:
        raise InvalidInput(f"a field condition is key:value (or key=value), not {text!r:.80}")
    return text[:cut], text[cut + 1 :]


def compile_filter(spec: Filter | Mapping[str, Any] | None) -> Match | None:
    """Check `spec` and return its predicate; None when it lets everything through.

    Raises `InvalidInput` naming what is wrong (an unknown level, a key or
    value over its limit, a regular expression RE2 refuses).
    """
    if spec is None:
        return None
    if not isinstance(spec, Filter):
        try:
            spec = msgspec.convert(spec, Filter)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"bad filter: {exc}") from None
    if spec.empty():
        return None
    minimum = _level(spec.level)
    fields = _fields(spec.fields)
    contains = spec.contains
    if contains is not None:
        _text("contains", contains, MAX_CONTAINS)
        if not contains:
            contains = None  # the empty string is in every text
    search = _regex(spec.regex) if spec.regex is not None else None
    types = _types(spec.types)
    return _Predicate(minimum, fields, contains, search, types)


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"filter {name} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise InvalidInput(f"filter {name} is over {limit} characters")
    return value


def _level(level: str | None) -> int | None:
    if level is None:
        return None
    _text("level", level, 32)
    try:
        return level_rank(level)
    except InvalidInput as exc:
        raise InvalidInput(f"filter level: {exc}") from None


def _fields(fields: Mapping[str, Any]) -> tuple[tuple[str, FieldValue], ...]:
    if not isinstance(fields, Mapping):
        raise InvalidInput("filter fields must be an object of key: value")
    if len(fields) > MAX_FIELDS:
        raise InvalidInput(f"a filter has at most {MAX_FIELDS} fields, not {len(fields)}")
    checked: list[tuple[str, FieldValue]] = []
    for key, value in fields.items():
        _text("field key", key, MAX_FIELD_KEY)
        if not key:
            raise InvalidInput("a filter field key must not be empty")
        if isinstance(value, str):
            _text(f"field {key!r:.40}", value, MAX_FIELD_VALUE)
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise InvalidInput(
                f"filter field {key!r:.40} must be a string, number, boolean or null"
            )
        checked.append((key, value))
    return tuple(checked)


def _types(types: list[str]) -> frozenset[str] | None:
    if not types:
        return None
    if len(types) > MAX_TYPES:
        raise InvalidInput(f"a filter has at most {MAX_TYPES} types, not {len(types)}")
    return frozenset(_text("type", t, _MAX_TYPE) for t in types)


def _regex(pattern: str) -> Callable[[str], bool]:
    _text("regex", pattern, MAX_REGEX)
    try:
        import re2  # type: ignore[import-untyped]  # google-re2 ships no types
    except ImportError:
        raise InvalidInput(
            "this server does not take regex filters (the google-re2 package is not installed)"
        ) from None
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _REGEX_MEMORY
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidInput(
            f"filter regex {pattern!r:.80} is not a valid RE2 pattern: {reason}"
        ) from None
    search = compiled.search

    def found(text: str) -> bool:
        return search(text) is not None

    return found


# -- matching -----------------------------------------------------------------------------------


def _equal(wanted: FieldValue, value: Any) -> bool:
    if isinstance(wanted, str):
        if isinstance(value, str):
            return value == wanted
        if value is None or isinstance(value, (bool, int, float)):
            return msgspec.json.encode(value).decode() == wanted
        return False
    if wanted is None:
        return value is None
    if isinstance(wanted, bool) or isinstance(value, bool):
        return type(value) is type(wanted) and value == wanted
    return isinstance(value, (int, float)) and value == wanted


def _as_text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return msgspec.json.encode(data).decode()


class _Predicate:
    """A compiled filter: called with an event, True if it is to be delivered."""

    __slots__ = ("_contains", "_fields", "_minimum", "_search", "_types")

    def __init__(
        self,
        minimum: int | None,
        fields: tuple[tuple[str, FieldValue], ...],
        contains: str | None,
        search: Callable[[str], bool] | None,
        types: frozenset[str] | None,
    ) -> None:
        self._minimum = minimum
        self._fields = fields
        self._contains = contains
        self._search = search
        self._types = types

    def __call__(self, event: Event) -> bool:
        if self._types is not None and event.type not in self._types:
            return False
        data = event.data
        is_log = event.type == EVENT_TYPE and isinstance(data, dict)
        if self._minimum is not None:
            if is_log:
                level = data.get("level", "info")
            elif isinstance(data, dict) and "level" in data:
                level = data["level"]
            else:
                return False
            try:
                if level_rank(level) < self._minimum:
                    return False
            except (InvalidInput, TypeError, KeyError):
                return False
        if self._fields:
            where = data.get("fields") if is_log else data
            if not isinstance(where, dict):
                return False
            for key, wanted in self._fields:
                if key not in where or not _equal(wanted, where[key]):
                    return False
        if self._contains is not None or self._search is not None:
            if is_log:
                message = data.get("message", "")
                text = message if isinstance(message, str) else _as_text(message)
            else:
                text = _as_text(data)
            if self._contains is not None and self._contains not in text:
                return False
            if self._search is not None and not self._search(text):
                return False
        return True
