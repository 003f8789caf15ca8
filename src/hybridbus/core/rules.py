"""The rules of the permission model, and their parsing from the configuration.

Owns: `Rule` and `TimeWindow` (each checked on construction), `PLACEHOLDERS`,
the check of a rule's pattern template, and `parse_rules`, which turns the
configuration's plain rule tables (as from TOML: `allow`/`deny`, `topics`,
`days`, `hours`, `zone`, `apps`) into `Rule`s with `ValueError`s that name the
rule and the field. `core.permissions` decides with these rules and is where
callers parse them (`Policy.from_config`). Must not decide anything, do I/O
(except the time-zone lookups of `zoneinfo`), read a clock (the caller passes
`now`) or scope patterns into a tenant: every pattern here is relative to the
identity's tenant. `_PLACEHOLDER` and `_local` are shared with
`core.permissions` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from hybridbus.core.identity import OPERATIONS
from hybridbus.core.topics import validate_pattern
from hybridbus.errors import InvalidPattern

# Bad configuration is a ValueError whatever its kind (the server reports it):
# ruff: noqa: TRY004

__all__ = [
    "PLACEHOLDERS",
    "Rule",
    "TimeWindow",
    "parse_rules",
]

PLACEHOLDERS: Final[frozenset[str]] = frozenset({"sub", "tenant", "device", "app"})
_DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_MINUTES: Final = 24 * 60
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HOURS = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
_RULE_FIELDS: Final = frozenset({"allow", "deny", "topics", "days", "hours", "zone", "apps"})


# -- the model -------------------------------------------------------------------------


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:  # before the cache: a list is not hashable
        raise ValueError(f"a time zone must be an IANA name like 'Europe/Berlin', not {name!r}")
    return _zone_named(name)


@lru_cache(maxsize=256)
def _zone_named(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _local(now: float, zone: str) -> tuple[int, int]:
    """The weekday (0 = Monday) and the minute of the day at `now` in `zone`."""
    local = datetime.fromtimestamp(now, _zone(zone))
    return local.weekday(), local.hour * 60 + local.minute


class TimeWindow(msgspec.Struct, frozen=True, kw_only=True):
    """Some weekdays' hours in a time zone, in whole minutes of local (wall) time.

    `days`: 0 = Monday ... 6 = Sunday. `start` (inclusive) and `end`
    (exclusive) are minutes since midnight; `start > end` crosses midnight
    (22:00-06:00), and the hours after midnight belong to the day the window
    started (Friday 22:00-06:00 includes Saturday 05:59). On the days clocks
    change, the window follows the wall clock: an hour that does not exist
    that day is not in it, an hour that happens twice is in it twice.
    """

    days: frozenset[int]
    start: int
    end: int
    zone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.days or not all(isinstance(d, int) and 0 <= d <= 6 for d in self.days):
            raise ValueError(f"days must be weekdays 0 (Monday) to 6 (Sunday), not {self.days}")
        if not 0 <= self.start < _DAY_MINUTES:
            raise ValueError(f"start must be a minute in 0..1439, not {self.start}")
        if not 0 <= self.end <= _DAY_MINUTES:
            raise ValueError(f"end must be a minute in 0..1440, not {self.end}")
        if self.start == self.end:
            raise ValueError("a window must not start when it ends (all day is 00:00-24:00)")
        _zone(self.zone)

    def contains(self, now: float) -> bool:
        """Is the Unix time `now` inside the window?"""
        return self._holds(*_local(now, self.zone))

    def _holds(self, day: int, minute: int) -> bool:
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return day in self.days
        return minute < self.end and (day - 1) % 7 in self.days


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """Allow or deny `operations` on the topics `pattern` matches.

    `pattern` may hold the placeholders `{sub}`, `{tenant}`, `{device}` and
    `{app}`. The rule applies only inside one of `windows` (none: always) and
    only to the apps in `apps` (None: any app).
    """

    effect: Literal["allow", "deny"]
    operations: frozenset[str]
    pattern: str
    windows: tuple[TimeWindow, ...] = ()
    apps: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.effect not in ("allow", "deny"):
            raise ValueError(f"effect must be 'allow' or 'deny', not {self.effect!r}")
        if not self.operations:
            raise ValueError("a rule must name at least one operation")
        unknown = set(self.operations) - OPERATIONS
        if unknown:
            raise ValueError(
                f"unknown operation(s) {', '.join(sorted(map(repr, unknown)))};"
                f" known: {', '.join(sorted(OPERATIONS))}"
            )
        _check_template(self.pattern)
        if not all(isinstance(w, TimeWindow) for w in self.windows):
            raise ValueError("windows must be TimeWindows")
        if self.apps is not None and (
            not self.apps or not all(isinstance(a, str) and a for a in self.apps)
        ):
            raise ValueError("apps must be None or a non-empty set of app names")


def _check_template(template: object) -> None:
    if not isinstance(template, str):
        raise ValueError(f"a pattern must be a string, not {type(template).__name__}")
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} in {template!r};"
                f" known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
    sample = _PLACEHOLDER.sub("x", template)
    if "{" in sample or "}" in sample:
        raise ValueError(f"unbalanced brace in pattern {template!r}")
    try:
        validate_pattern(sample)
    except InvalidPattern as exc:
        raise ValueError(str(exc)) from None


# -- the configuration -----------------------------------------------------------------


def parse_rules(owner: str, entries: object) -> Iterator[tuple[int, Rule]]:
    """The `Rule`s of `owner`'s configuration `entries` (a list of tables, as from TOML).

    Each comes with the 1-based number of the entry it was parsed from (an
    entry with several topics gives several rules). Raises `ValueError` naming
    `owner` (e.g. "role 'ops'"), the entry's number and the field.
    """
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise ValueError(f"{owner}: the rules must be a list of tables, not {entries!r}")
    for index, entry in enumerate(entries, 1):
        where = f"{owner} rule {index}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: a rule must be a table, not {entry!r}")
        try:
            rules = _parse_rule(entry)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for rule in rules:
            yield index, rule


def _parse_rule(entry: Mapping[str, Any]) -> list[Rule]:
    unknown = set(entry) - _RULE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(sorted(map(repr, map(str, unknown))))};"
            f" known: {', '.join(sorted(_RULE_FIELDS))}"
        )
    if ("allow" in entry) == ("deny" in entry):
        raise ValueError("'allow' or 'deny': a rule needs exactly one of them")
    effect: Literal["allow", "deny"] = "allow" if "allow" in entry else "deny"
    operations = _parse_operations(effect, entry[effect])
    if "topics" not in entry:
        raise ValueError("'topics' is missing")
    topics = entry["topics"]
    patterns = [topics] if isinstance(topics, str) else topics
    if not isinstance(patterns, (list, tuple)) or not patterns:
        raise ValueError(f"'topics' must be a pattern or a non-empty list of them, not {topics!r}")
    for pattern in patterns:
        try:
            _check_template(pattern)
        except ValueError as exc:
            raise ValueError(f"'topics': {exc}") from None
    windows: tuple[TimeWindow, ...] = ()
    zone = entry.get("zone", "UTC")
    try:
        _zone(zone)
    except ValueError as exc:
        raise ValueError(f"'zone': {exc}") from None
    if "days" in entry or "hours" in entry:
        days = _parse_days(entry["days"]) if "days" in entry else frozenset(range(7))
        start, end = _parse_hours(entry["hours"]) if "hours" in entry else (0, _DAY_MINUTES)
        windows = (TimeWindow(days=days, start=start, end=end, zone=zone),)
    apps: frozenset[str] | None = None
    if "apps" in entry:
        value = entry["apps"]
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(a, str) and a for a in value)
        ):
            raise ValueError(f"'apps' must be a non-empty list of app names, not {value!r}")
        apps = frozenset(value)
    return [
        Rule(effect=effect, operations=operations, pattern=p, windows=windows, apps=apps)
        for p in patterns
    ]


def _parse_operations(field: str, value: object) -> frozenset[str]:
    if value == "*":
        return OPERATIONS
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{field!r} must be a list of operations or '*', not {value!r}")
    if "*" in names:
        return OPERATIONS
    for name in names:
        if name not in OPERATIONS:
            raise ValueError(
                f"{field!r}: unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}"
            )
    return frozenset(names)


def _day(name: str) -> int:
    try:
        return _DAY_NAMES.index(name.strip().lower())
    except ValueError:
        raise ValueError(
            f"'days': unknown day {name!r}; use {', '.join(_DAY_NAMES)} or a range like 'mon-fri'"
        ) from None


def _parse_days(value: object) -> frozenset[int]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"'days' must be a non-empty list of days like 'mon-fri', not {value!r}")
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"'days': a day must be a name like 'mon', not {item!r}")
        first, dash, last = item.partition("-")
        start = _day(first)
        stop = _day(last) if dash else start
        days.update((start + i) % 7 for i in range((stop - start) % 7 + 1))  # may wrap: fri-mon
    return frozenset(days)


def _parse_hours(value: object) -> tuple[int, int]:
    match = _HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"'hours' must look like '08:00-20:00', not {value!r}")
    h1, m1, h2, m2 = map(int, match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"'hours': {value!r} is not a time of day (00:00 to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"'hours': {value!r} is empty; all day is '00:00-24:00'")
    return start, end
