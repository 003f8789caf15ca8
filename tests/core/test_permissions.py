"""Permissions: the pattern algebra against a brute-force oracle, decide, windows, config."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridbus.core.identity import OPERATIONS, Grant, Identity
from hybridbus.core.permissions import Decision, Policy, covers, decide, intersects
from hybridbus.core.rules import Rule, TimeWindow
from hybridbus.core.topics import matches, validate_pattern
from hybridbus.errors import InvalidPattern

# The oracle ----------------------------------------------------------------------------
#
# Every topic of up to five segments over a tiny alphabet. "c" is in no
# pattern (it stands for "any other segment"), "$s" tests the rule that a
# leading wildcard does not match a `$` first segment. For patterns of up to
# four segments a topic telling two of them apart is at most five long, so on
# this universe set inclusion and intersection are exact.

TOPIC_SEGMENTS = ("a", "b", "c", "$s")
PATTERN_SEGMENTS = ("a", "b", "$s", "+")
TOPICS = tuple(
    "/".join(parts)
    for depth in range(1, 6)
    for parts in itertools.product(TOPIC_SEGMENTS, repeat=depth)
)


@cache
def matched(pattern: str, tenant: str = "") -> frozenset[str]:
    """The topics of the universe `pattern` matches (under `tenant/` if given)."""
    if tenant:
        return frozenset(t for t in TOPICS if matches(f"{tenant}/{pattern}", f"{tenant}/{t}"))
    return frozenset(t for t in TOPICS if matches(pattern, t))


def all_patterns(max_segments: int) -> list[str]:
    found = []
    for n in range(1, max_segments + 1):
        found += ["/".join(p) for p in itertools.product(PATTERN_SEGMENTS, repeat=n)]
        found += ["/".join((*p, "#")) for p in itertools.product(PATTERN_SEGMENTS, repeat=n - 1)]
    return found


patterns = st.integers(1, 4).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from(PATTERN_SEGMENTS), min_size=n - 1, max_size=n - 1),
        st.sampled_from(PATTERN_SEGMENTS) | st.just("#"),
    ).map(lambda parts: "/".join((*parts[0], parts[1])))
)


def test_the_universe_is_all_valid_patterns() -> None:
    every = all_patterns(3)
    assert len(every) == 105
    for pattern in every:
        assert validate_pattern(pattern) == pattern
    assert len(TOPICS) == 4 + 16 + 64 + 256 + 1024


def test_covers_and_intersects_agree_with_the_oracle_exhaustively() -> None:
    every = all_patterns(3)
    wrong = []
    for a, b in itertools.product(every, repeat=2):
        if covers(a, b) != (matched(b) <= matched(a)):
            wrong.append(("covers", a, b))
        if intersects(a, b) != bool(matched(a) & matched(b)):
            wrong.append(("intersects", a, b))
    assert wrong == []


@given(patterns, patterns)
@settings(max_examples=400)
def test_covers_is_inclusion_of_matched_topics(general: str, specific: str) -> None:
    assert covers(general, specific) == (matched(specific) <= matched(general))


@given(patterns, patterns)
@settings(max_examples=400)
def test_intersects_is_a_common_matched_topic(a: str, b: str) -> None:
    assert intersects(a, b) == bool(matched(a) & matched(b))
    assert intersects(a, b) == intersects(b, a)


@given(patterns)
def test_a_pattern_covers_and_intersects_itself(pattern: str) -> None:
    assert covers(pattern, pattern)
    assert intersects(pattern, pattern)


@given(patterns, st.sampled_from(TOPICS))
def test_on_a_topic_both_are_matches(pattern: str, topic: str) -> None:
    assert covers(pattern, topic) == matches(pattern, topic)
    assert intersects(pattern, topic) == matches(pattern, topic)


@pytest.mark.parametrize(
    ("general", "specific", "expected"),
    [
        ("a/#", "a", True),  # `#` matches zero segments: the parent too
        ("a/#", "a/#", True),
        ("a/#", "a/+", True),
        ("a/#", "a/b/+/#", True),
        ("a/+", "a/#", False),  # a/# matches `a` and a/b/c
        ("a/+/#", "a/#", False),  # ... and `a`
        ("a/+/#", "a/+", True),
        ("#", "+/#", True),  # the same topics
        ("+/#", "#", True),
        ("#", "a/b/c", True),
        ("+", "a", True),
        ("+", "#", False),
        ("a", "+", False),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("#", "$s/x", False),  # a leading wildcard never matches a `$` first segment
        ("+/x", "$s/x", False),
        ("$s/#", "$s/x", True),
        ("#", "a/$s", True),  # only the first segment
    ],
)
def test_covers_examples(general: str, specific: str, expected: bool) -> None:
    assert covers(general, specific) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a/#", "a", True),
        ("a/+", "a/#", True),
        ("a/+", "a", False),
        ("a/+/c", "a/b/+", True),  # a/b/c
        ("a/+/c", "a/b/d", False),
        ("+/+", "a/#", True),
        ("a/b/#", "+/c/#", False),
        ("#", "$s", False),
        ("+/#", "$s/#", False),
        ("$s/#", "$s/a", True),
        ("a/+/+", "a/#", True),
        ("a/+/+", "a/b", False),
    ],
)
def test_intersects_examples(a: str, b: str, expected: bool) -> None:
    assert intersects(a, b) is expected
    assert intersects(b, a) is expected


# decide --------------------------------------------------------------------------------

# Monday 2024-06-03 12:00 in Berlin (CEST, UTC+2).
NOON = datetime(2024, 6, 3, 10, 0, tzinfo=UTC).timestamp()

POLICY = Policy.from_config(
    {
        "editor": [
            {"allow": ["subscribe", "history", "presence"], "topics": "docs/#"},
            {"allow": ["publish"], "topics": "docs/{sub}/#"},
            {"deny": ["publish", "subscribe"], "topics": "docs/locked/#"},
            {"allow": "*", "topics": ["users/{sub}/#", "devices/{device}/#"]},
            {"allow": ["publish"], "topics": "apps/{app}/{tenant}/log"},
            {"allow": ["publish"], "topics": "home/user-{sub}"},
            {"deny": ["subscribe"], "topics": "docs/+/secret"},
            {"deny": ["subscribe"], "topics": "+/secret"},
        ],
        "viewer": [
            {"allow": ["subscribe"], "topics": ["feed/a", "feed/b"]},
            {"allow": ["subscribe"], "topics": "wide/#"},
            {"deny": ["subscribe"], "topics": "wide/{sub}/drafts"},
        ],
        "mobile": [{"allow": ["publish"], "topics": "m/#", "apps": ["ios", "android"]}],
        "strict": [{"deny": "*", "topics": "#"}],
        "everything": [{"allow": "*", "topics": "#"}],
    },
    anonymous=[{"allow": ["subscribe"], "topics": "public/#"}],
)


def who(**fields: Any) -> Identity:
    values: dict[str, Any] = {"tenant": "acme", "user": "alice", "roles": ("editor",)}
    values.update(fields)
    return Identity(**values)


CASES: list[tuple[str, Identity, str, str, bool]] = [
    # (what, identity, operation, pattern, allowed)
    ("an allowed read", who(), "subscribe", "docs/x/y", True),
    ("an operation no rule names", who(), "publish", "docs/x", False),
    ("a topic no rule matches", who(), "subscribe", "elsewhere", False),
    ("no roles at all", who(roles=()), "subscribe", "docs/x", False),
    ("an unknown role", who(roles=("ghost",)), "subscribe", "docs/x", False),
    (
        "an unknown role beside a known one",
        who(roles=("ghost", "editor")),
        "subscribe",
        "docs/x",
        True,
    ),
    ("own folder", who(), "publish", "docs/alice/n", True),
    ("own folder itself (# matches the parent)", who(), "publish", "docs/alice", True),
    ("someone else's folder", who(), "publish", "docs/bob/n", False),
    ("deny beats a more specific allow", who(user="locked"), "publish", "docs/locked/n", False),
    ("deny beats allow for reads", who(), "subscribe", "docs/locked/x", False),
    ("a deny's own operations only", who(), "history", "docs/locked/x", True),
    (
        "deny from one role beats allow from another",
        who(roles=("everything", "strict")),
        "publish",
        "x",
        False,
    ),
    ("the allow-all role", who(roles=("everything",)), "publish", "a/b/c", True),
    ("{device}", who(device="d1"), "publish", "devices/d1/state", True),
    ("{device} missing", who(), "publish", "devices/d1/state", False),
    ("{app} and {tenant}", who(app="web"), "publish", "apps/web/acme/log", True),
    ("{tenant} is the identity's", who(app="web"), "publish", "apps/web/other/log", False),
    ("{app} missing", who(), "publish", "apps/web/acme/log", False),
    ("a placeholder inside a segment", who(), "publish", "home/user-alice", True),
    ("... for someone else", who(), "publish", "home/user-bob", False),
    ("anonymous: sub None, nothing fills", who(user=None), "publish", "users/None/x", False),
    # Injection: claim values never become wildcards or segments.
    ("sub '#'", who(user="#"), "publish", "users/x/y", False),
    ("sub '+'", who(user="+"), "publish", "users/x/y", False),
    ("sub 'a/#'", who(user="a/#"), "publish", "users/a/x", False),
    ("sub 'a/b' gives no extra segment", who(user="a/b"), "publish", "users/a/b", False),
    ("sub ''", who(user=""), "publish", "users/x", False),
    ("sub with a space", who(user="a b"), "publish", "home/user-a", False),
    (
        "sub '{app}' is not filled again",
        who(user="{app}", app="x"),
        "publish",
        "home/user-x",
        False,
    ),
    ("... it is literal", who(user="{app}", app="x"), "publish", "home/user-{app}", True),
    # Apps.
    ("an app in the rule's apps", who(roles=("mobile",), app="ios"), "publish", "m/1", True),
    ("an app not in them", who(roles=("mobile",), app="web"), "publish", "m/1", False),
    ("no app", who(roles=("mobile",)), "publish", "m/1", False),
    # Wildcards: allowed only if one rule covers them, refused if a deny intersects.
    ("a pattern inside the allowed one", who(), "history", "docs/+/notes/#", True),
    ("wider than any rule", who(), "subscribe", "#", False),
    ("wider at the front", who(), "subscribe", "+/x", False),
    ("a deny intersects it", who(), "subscribe", "docs/#", False),
    ("a deny intersects it (docs/+ matches docs/locked)", who(), "subscribe", "docs/+", False),
    ("a deny with + intersects it", who(), "subscribe", "docs/a/+", False),
    ("clear of every deny", who(), "subscribe", "docs/a/public/#", True),
    ("a union of rules does not cover", who(roles=("viewer",)), "subscribe", "feed/+", False),
    ("each rule's own part", who(roles=("viewer",)), "subscribe", "feed/b", True),
    ("deny with {sub} intersects", who(roles=("viewer",)), "subscribe", "wide/alice/#", False),
    ("deny with {sub} for someone else", who(roles=("viewer",)), "subscribe", "wide/bob/#", True),
    # Relative patterns live under the tenant: `$` is not special here.
    ("# allows a relative $ topic", who(roles=("everything",)), "publish", "$x/y", True),
    (
        "+ denies a relative $ topic",
        who(roles=("everything", "editor")),
        "subscribe",
        "$x/secret",
        False,
    ),
    ("... and only that", who(roles=("everything", "editor")), "subscribe", "$x/public", True),
]


@pytest.mark.parametrize(
    ("identity", "operation", "pattern", "allowed"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(identity: Identity, operation: str, pattern: str, allowed: bool) -> None:
    assert decide(POLICY, identity, operation, pattern, NOON).allowed is allowed


def test_a_deny_rule_that_cannot_be_filled_denies_the_whole_segment() -> None:
    policy = Policy.from_config(
        {"r": [{"allow": "*", "topics": "#"}, {"deny": ["publish"], "topics": "u/{device}/x"}]}
    )
    # With a device, the deny names it; without one (or a bad one) it fails closed.
    assert decide(policy, who(roles=("r",), device="d"), "publish", "u/e/x", NOON).allowed
    assert not decide(policy, who(roles=("r",), device="d"), "publish", "u/d/x", NOON).allowed
    for device in (None, "", "#", "a/b", "+"):
        decision = decide(policy, who(roles=("r",), device=device), "publish", "u/e/x", NOON)
        assert not decision.allowed, device
        assert decide(policy, who(roles=("r",), device=device), "publish", "u/e/y", NOON).allowed


def test_admin_may_do_everything() -> None:
    admin = Identity(tenant="acme", admin=True)
    for operation in OPERATIONS:
        assert decide(Policy(), admin, operation, "#", NOON) == Decision(True, "admin")
    strict = who(roles=("strict",), admin=True)
    assert decide(POLICY, strict, "publish", "$audit/x", NOON).allowed


def test_anonymous_rules_apply_to_anonymous_identities_only() -> None:
    anonymous = Identity(tenant="acme", anonymous=True)
    assert decide(POLICY, anonymous, "subscribe", "public/news", NOON).allowed
    assert decide(POLICY, anonymous, "subscribe", "public/#", NOON).allowed
    assert not decide(POLICY, anonymous, "subscribe", "#", NOON).allowed
    assert not decide(POLICY, anonymous, "publish", "public/news", NOON).allowed
    assert not decide(POLICY, who(roles=()), "subscribe", "public/news", NOON).allowed


def test_grants_allow_their_operations_on_their_pattern_only() -> None:
    grants = (Grant("chat/#"), Grant("out/{sub}", frozenset({"publish"})), Grant("a//b"))
    identity = who(roles=(), grants=grants)
    assert decide(POLICY, identity, "subscribe", "chat/+", NOON).allowed
    assert decide(POLICY, identity, "history", "chat/1", NOON).allowed
    assert decide(POLICY, identity, "presence", "chat/1", NOON).allowed
    assert not decide(POLICY, identity, "publish", "chat/1", NOON).allowed  # not by default
    assert not decide(POLICY, identity, "subscribe", "#", NOON).allowed
    # No placeholders in a grant: it is literal.
    assert not decide(POLICY, identity, "publish", "out/alice", NOON).allowed
    assert decide(POLICY, identity, "publish", "out/{sub}", NOON).allowed
    # A role's deny still beats a grant.
    grant_all = who(roles=("strict",), grants=(Grant("#", OPERATIONS),))
    assert not decide(POLICY, grant_all, "subscribe", "x", NOON).allowed


def test_reasons_name_the_rule() -> None:
    assert decide(POLICY, who(), "publish", "docs/alice/x", NOON) == Decision(
        True, "allowed by role 'editor' rule 2 (docs/{sub}/#)"
    )
    assert decide(POLICY, who(user="locked"), "publish", "docs/locked/x", NOON) == Decision(
        False, "denied by role 'editor' rule 3 (docs/locked/#)"
    )
    assert decide(POLICY, who(), "publish", "x/y", NOON) == Decision(
        False, "no rule allows publish on 'x/y'"
    )
    # Both topics of one entry carry the entry's number.
    assert decide(POLICY, who(device="d"), "history", "devices/d/x", NOON).reason == (
        "allowed by role 'editor' rule 4 (devices/{device}/#)"
    )
    partial = decide(POLICY, who(roles=("viewer",)), "subscribe", "feed/+", NOON)
    assert not partial.allowed
    assert partial.reason.startswith("no rule allows subscribe on all of 'feed/+'")
    assert "role 'viewer' rule 1" in partial.reason
    anonymous = Identity(tenant="acme", anonymous=True)
    assert decide(POLICY, anonymous, "subscribe", "public/x", NOON).reason == (
        "allowed by anonymous rule 1 (public/#)"
    )
    granted = who(roles=(), grants=(Grant("a"), Grant("b")))
    assert decide(POLICY, granted, "subscribe", "b", NOON).reason == "allowed by grant 2 (b)"


def test_rules_built_directly_are_numbered_by_position() -> None:
    policy = Policy(
        {
            "r": [
                Rule(effect="allow", operations=frozenset({"publish"}), pattern="#"),
                Rule(effect="deny", operations=frozenset({"publish"}), pattern="x"),
            ]
        }
    )
    assert decide(policy, who(roles=("r",)), "publish", "x", NOON).reason == (
        "denied by role 'r' rule 2 (x)"
    )


def test_an_invalid_pattern_is_refused_with_an_error() -> None:
    with pytest.raises(InvalidPattern):
        decide(POLICY, who(), "subscribe", "docs/#/x", NOON)


@given(patterns, patterns)
@settings(max_examples=300)
def test_an_allow_rule_allows_exactly_what_it_covers(rule: str, request: str) -> None:
    policy = Policy({"r": [Rule(effect="allow", operations=OPERATIONS, pattern=rule)]})
    allowed = decide(policy, who(roles=("r",)), "subscribe", request, NOON).allowed
    # Compared as the server uses them: under the tenant.
    assert allowed == (matched(request, "t") <= matched(rule, "t"))


@given(patterns, patterns)
@settings(max_examples=300)
def test_a_deny_rule_refuses_exactly_what_it_intersects(rule: str, request: str) -> None:
    policy = Policy(
        {
            "r": [
                Rule(effect="allow", operations=OPERATIONS, pattern="#"),
                Rule(effect="deny", operations=OPERATIONS, pattern=rule),
            ]
        }
    )
    allowed = decide(policy, who(roles=("r",)), "history", request, NOON).allowed
    assert allowed == (not matched(request, "t") & matched(rule, "t"))


# Time windows --------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


WEEKDAYS = frozenset(range(5))
OFFICE = TimeWindow(days=WEEKDAYS, start=8 * 60, end=20 * 60, zone="Europe/Berlin")
NIGHT = TimeWindow(days=frozenset({4}), start=22 * 60, end=6 * 60, zone="Europe/Berlin")
SUNDAY_LATE = TimeWindow(days=frozenset({6}), start=22 * 60, end=2 * 60, zone="UTC")
CHANGE = TimeWindow(days=frozenset({6}), start=2 * 60, end=3 * 60, zone="Europe/Berlin")
EARLY = TimeWindow(days=frozenset({6}), start=60, end=4 * 60, zone="Europe/Berlin")
MONDAY_BERLIN = TimeWindow(days=frozenset({0}), start=0, end=24 * 60, zone="Europe/Berlin")
MONDAY_UTC = TimeWindow(days=frozenset({0}), start=0, end=24 * 60)
SUNDAY_UTC = TimeWindow(days=frozenset({6}), start=0, end=24 * 60)

WINDOW_CASES: list[tuple[str, TimeWindow, float, bool]] = [
    # Monday 2024-06-03, Berlin is UTC+2.
    ("start is inside", OFFICE, utc(2024, 6, 3, 6, 0), True),
    ("a second before start", OFFICE, utc(2024, 6, 3, 5, 59, 59), False),
    ("the last instant", OFFICE, utc(2024, 6, 3, 17, 59, 59) + 0.999, True),
    ("end is outside", OFFICE, utc(2024, 6, 3, 18, 0), False),
    ("a Saturday", OFFICE, utc(2024, 6, 8, 10, 0), False),
    ("a Friday", OFFICE, utc(2024, 6, 7, 10, 0), True),
    # Across midnight: Friday 22:00 to Saturday 06:00, Berlin.
    ("Friday 22:00", NIGHT, utc(2024, 6, 7, 20, 0), True),
    ("Friday 21:59", NIGHT, utc(2024, 6, 7, 19, 59), False),
    ("Saturday 05:59 belongs to Friday", NIGHT, utc(2024, 6, 8, 3, 59), True),
    ("Saturday 06:00", NIGHT, utc(2024, 6, 8, 4, 0), False),
    ("Friday 05:00 belongs to Thursday", NIGHT, utc(2024, 6, 7, 3, 0), False),
    ("Saturday 23:00", NIGHT, utc(2024, 6, 8, 21, 0), False),
    ("Sunday 23:00 UTC", SUNDAY_LATE, utc(2024, 6, 2, 23, 0), True),
    ("Monday 01:59 UTC belongs to Sunday", SUNDAY_LATE, utc(2024, 6, 3, 1, 59), True),
    ("Monday 02:00 UTC", SUNDAY_LATE, utc(2024, 6, 3, 2, 0), False),
    ("Sunday 01:00 UTC belongs to Saturday", SUNDAY_LATE, utc(2024, 6, 2, 1, 0), False),
    # 2024-03-31: Berlin skips from 02:00 CET to 03:00 CEST (01:00 UTC).
    ("02:00-03:00 does not exist: 01:59 CET", CHANGE, utc(2024, 3, 31, 0, 59, 59), False),
    ("02:00-03:00 does not exist: 03:00 CEST", CHANGE, utc(2024, 3, 31, 1, 0), False),
    ("01:00-04:00 on that day: 01:00 CET", EARLY, utc(2024, 3, 31, 0, 0), True),
    ("01:00-04:00 on that day: 03:59 CEST", EARLY, utc(2024, 3, 31, 1, 59), True),
    ("01:00-04:00 on that day: 04:00 CEST", EARLY, utc(2024, 3, 31, 2, 0), False),
    ("00:59 CET", EARLY, utc(2024, 3, 30, 23, 59), False),
    # 2024-10-27: Berlin goes back from 03:00 CEST to 02:00 CET (01:00 UTC).
    ("02:00-03:00 happens twice: first 02:00", CHANGE, utc(2024, 10, 27, 0, 0), True),
    ("... first 02:59", CHANGE, utc(2024, 10, 27, 0, 59), True),
    ("... second 02:00", CHANGE, utc(2024, 10, 27, 1, 0), True),
    ("... second 02:59", CHANGE, utc(2024, 10, 27, 1, 59), True),
    ("... 03:00 CET", CHANGE, utc(2024, 10, 27, 2, 0), False),
    ("... 01:59 CEST", CHANGE, utc(2024, 10, 26, 23, 59), False),
    # The weekday is the zone's: 23:30 UTC on Sunday is 01:30 on Monday in Berlin.
    ("Monday in Berlin", MONDAY_BERLIN, utc(2024, 6, 2, 23, 30), True),
    ("not Monday in UTC", MONDAY_UTC, utc(2024, 6, 2, 23, 30), False),
    ("Sunday in UTC", SUNDAY_UTC, utc(2024, 6, 2, 23, 30), True),
    ("Sunday 23:30 Berlin is Sunday", MONDAY_BERLIN, utc(2024, 6, 2, 21, 30), False),
]


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [case[1:] for case in WINDOW_CASES],
    ids=[case[0] for case in WINDOW_CASES],
)
def test_window_contains(window: TimeWindow, now: float, inside: bool) -> None:
    assert window.contains(now) is inside


def test_office_hours_move_with_summer_time() -> None:
    # 08:00 in Berlin is 07:00 UTC in winter and 06:00 UTC in summer.
    assert not OFFICE.contains(utc(2024, 3, 29, 6, 59))  # Friday, CET
    assert OFFICE.contains(utc(2024, 3, 29, 7, 0))
    assert OFFICE.contains(utc(2024, 4, 1, 6, 0))  # Monday, CEST
    assert not OFFICE.contains(utc(2024, 4, 1, 5, 59))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"days": frozenset()}, "days"),
        ({"days": frozenset({7})}, "days"),
        ({"days": frozenset({-1})}, "days"),
        ({"start": -1}, "start"),
        ({"start": 1440}, "start"),
        ({"end": 1441}, "end"),
        ({"start": 60, "end": 60}, "all day"),
        ({"zone": "Mars/Olympus"}, "unknown time zone"),
        ({"zone": ""}, "time zone"),
    ],
)
def test_bad_windows(fields: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"days": WEEKDAYS, "start": 0, "end": 60, "zone": "UTC"}
    values.update(fields)
    with pytest.raises(ValueError, match=message):
        TimeWindow(**values)


def test_rules_with_windows_apply_inside_them_only() -> None:
    policy = Policy.from_config(
        {
            "editor": [
                {"allow": "*", "topics": "#"},
                {
                    "deny": ["publish"],
                    "topics": "#",
                    "hours": "22:00-06:00",
                    "zone": "Europe/Berlin",
                },
                {
                    "allow": ["presence"],
                    "topics": "x/#",
                    "days": ["mon-fri"],
                    "hours": "08:00-20:00",
                    "zone": "Europe/Berlin",
                },
            ],
            "desk": [
                {
                    "allow": ["presence"],
                    "topics": "#",
                    "days": ["mon-fri"],
                    "hours": "08:00-20:00",
                    "zone": "Europe/Berlin",
                },
            ],
        }
    )
    editor, desk = who(), who(roles=("desk",))
    night = utc(2024, 6, 3, 20, 0)  # 22:00 Berlin
    morning = utc(2024, 6, 3, 3, 59)  # 05:59 Berlin
    assert decide(policy, editor, "publish", "a", NOON).allowed
    assert not decide(policy, editor, "publish", "a", night).allowed
    assert not decide(policy, editor, "publish", "a", morning).allowed
    assert decide(policy, editor, "publish", "a", utc(2024, 6, 3, 4, 0)).allowed
    assert decide(policy, editor, "subscribe", "a", night).allowed  # the deny is for publish
    assert decide(policy, desk, "presence", "a", NOON).allowed
    assert not decide(policy, desk, "presence", "a", utc(2024, 6, 3, 18, 0)).allowed
    assert not decide(policy, desk, "presence", "a", utc(2024, 6, 8, 10, 0)).allowed  # Saturday
    assert policy.windowed_roles() == frozenset({"editor", "desk"})


def test_a_rule_with_several_windows_applies_in_any() -> None:
    rule = Rule(
        effect="allow",
        operations=frozenset({"publish"}),
        pattern="#",
        windows=(MONDAY_UTC, SUNDAY_UTC),
    )
    policy = Policy({"r": [rule]})
    identity = who(roles=("r",))
    assert decide(policy, identity, "publish", "a", utc(2024, 6, 2, 12, 0)).allowed  # Sunday
    assert decide(policy, identity, "publish", "a", utc(2024, 6, 3, 12, 0)).allowed  # Monday
    assert not decide(policy, identity, "publish", "a", utc(2024, 6, 4, 12, 0)).allowed


def test_windowed_roles() -> None:
    assert POLICY.windowed_roles() == frozenset()
    policy = Policy.from_config(
        {"a": [{"allow": "*", "topics": "#"}], "b": [{"allow": "*", "topics": "#", "days": "sun"}]},
        anonymous=[{"allow": "*", "topics": "#", "hours": "01:00-02:00"}],
    )
    assert policy.windowed_roles() == frozenset({"b", ""})


# Policy.from_config --------------------------------------------------------------------


def only_rule(entry: dict[str, Any]) -> Rule:
    (rule,) = Policy.from_config({"r": [entry]}).roles["r"]
    return rule


def test_from_config_parses_the_example() -> None:
    roles = POLICY.roles
    assert set(roles) == {"editor", "viewer", "mobile", "strict", "everything"}
    editor = roles["editor"]
    assert len(editor) == 9  # entry 4 has two topics
    assert editor[0] == Rule(
        effect="allow", operations=frozenset({"subscribe", "history", "presence"}), pattern="docs/#"
    )
    assert editor[2].effect == "deny"
    assert [r.pattern for r in editor[3:5]] == ["users/{sub}/#", "devices/{device}/#"]
    assert editor[3].operations == OPERATIONS
    assert roles["mobile"][0].apps == frozenset({"ios", "android"})
    assert POLICY.anonymous == (
        Rule(effect="allow", operations=frozenset({"subscribe"}), pattern="public/#"),
    )


def test_from_config_windows() -> None:
    rule = only_rule(
        {
            "allow": ["publish"],
            "topics": "docs/{sub}/#",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "hours": "08:00-20:00",
            "zone": "Europe/Berlin",
        }
    )
    assert rule.windows == (OFFICE,)
    assert only_rule({"allow": "*", "topics": "#", "days": ["mon-fri"]}).windows == (
        TimeWindow(days=WEEKDAYS, start=0, end=1440),
    )
    assert only_rule({"allow": "*", "topics": "#", "days": ["fri-mon", "wed"]}).windows[0].days == (
        frozenset({4, 5, 6, 0, 2})
    )
    assert only_rule({"allow": "*", "topics": "#", "days": "Sun"}).windows[0].days == {6}
    night = only_rule({"allow": "*", "topics": "#", "hours": "22:30-6:15"}).windows[0]
    assert (night.days, night.start, night.end, night.zone) == (
        frozenset(range(7)),
        22 * 60 + 30,
        6 * 60 + 15,
        "UTC",
    )
    assert only_rule({"allow": "*", "topics": "#", "hours": "00:00-24:00"}).windows[0].end == 1440
    assert only_rule({"allow": "*", "topics": "#", "zone": "Asia/Tokyo"}).windows == ()


def test_from_config_operations() -> None:
    assert only_rule({"allow": "*", "topics": "#"}).operations == OPERATIONS
    assert only_rule({"allow": ["*"], "topics": "#"}).operations == OPERATIONS
    assert only_rule({"deny": "history", "topics": "#"}).operations == {"history"}
    assert only_rule({"deny": ["publish", "presence"], "topics": "#"}).effect == "deny"


def test_from_config_empty() -> None:
    policy = Policy.from_config({})
    assert policy.roles == {}
    assert policy.anonymous == ()
    assert not decide(policy, who(), "subscribe", "a", NOON).allowed


GOOD: dict[str, Any] = {"allow": ["subscribe"], "topics": "a/#"}

BAD_RULES: list[tuple[str, object, str]] = [
    ("not a table", "allow everything", r"rule 2: a rule must be a table"),
    ("unknown field", {**GOOD, "topic": "x"}, r"rule 2: unknown field\(s\) 'topic'"),
    ("allow and deny", {**GOOD, "deny": ["publish"]}, r"rule 2: 'allow' or 'deny'"),
    ("neither", {"topics": "a"}, r"rule 2: 'allow' or 'deny'"),
    ("no operations", {**GOOD, "allow": []}, r"rule 2: 'allow' must be"),
    ("operations not a list", {**GOOD, "allow": 3}, r"rule 2: 'allow' must be"),
    (
        "unknown operation",
        {**GOOD, "allow": ["read"]},
        r"rule 2: 'allow': unknown operation 'read'",
    ),
    ("unknown deny operation", {"deny": ["write"], "topics": "a"}, r"rule 2: 'deny': unknown"),
    ("no topics", {"allow": ["publish"]}, r"rule 2: 'topics' is missing"),
    ("empty topics", {**GOOD, "topics": []}, r"rule 2: 'topics' must be"),
    ("topics not a list", {**GOOD, "topics": 5}, r"rule 2: 'topics' must be"),
    ("a bad pattern", {**GOOD, "topics": "a/#/b"}, r"rule 2: 'topics': .*'#' may only be"),
    ("an empty segment", {**GOOD, "topics": ["a", "a//b"]}, r"rule 2: 'topics': .*empty segment"),
    ("a pattern not a string", {**GOOD, "topics": [1]}, r"rule 2: 'topics': .*string"),
    (
        "unknown placeholder",
        {**GOOD, "topics": "u/{user}"},
        r"rule 2: 'topics': unknown placeholder \{user\}",
    ),
    ("unbalanced brace", {**GOOD, "topics": "u/{sub"}, r"rule 2: 'topics': unbalanced brace"),
    (
        "a placeholder in a wildcard",
        {**GOOD, "topics": "u/{sub}#"},
        r"rule 2: 'topics': .*wildcard",
    ),
    ("unknown day", {**GOOD, "days": ["funday"]}, r"rule 2: 'days': unknown day 'funday'"),
    ("unknown day in a range", {**GOOD, "days": ["mon-fry"]}, r"rule 2: 'days': unknown day 'fry'"),
    ("no days", {**GOOD, "days": []}, r"rule 2: 'days' must be"),
    ("a day number", {**GOOD, "days": [1]}, r"rule 2: 'days': a day must be a name"),
    ("hours malformed", {**GOOD, "hours": "8-20"}, r"rule 2: 'hours' must look like"),
    ("hours not a string", {**GOOD, "hours": 8}, r"rule 2: 'hours' must look like"),
    ("hour 25", {**GOOD, "hours": "25:00-26:00"}, r"rule 2: 'hours': .*not a time of day"),
    ("minute 60", {**GOOD, "hours": "08:60-09:00"}, r"rule 2: 'hours': .*not a time of day"),
    ("24:00 as a start", {**GOOD, "hours": "24:00-02:00"}, r"rule 2: 'hours': .*not a time of day"),
    ("24:30", {**GOOD, "hours": "20:00-24:30"}, r"rule 2: 'hours': .*not a time of day"),
    ("empty hours", {**GOOD, "hours": "10:00-10:00"}, r"rule 2: 'hours': .*is empty"),
    ("unknown zone", {**GOOD, "zone": "Europe/Atlantis"}, r"rule 2: 'zone': unknown time zone"),
    ("a zone not a name", {**GOOD, "zone": ["UTC"]}, r"rule 2: 'zone': a time zone must be"),
    (
        "a path as a zone",
        {**GOOD, "zone": "../../etc/passwd"},
        r"rule 2: 'zone': unknown time zone",
    ),
    ("empty apps", {**GOOD, "apps": []}, r"rule 2: 'apps' must be"),
    ("apps not a list", {**GOOD, "apps": "web"}, r"rule 2: 'apps' must be"),
    ("an empty app", {**GOOD, "apps": [""]}, r"rule 2: 'apps' must be"),
]


@pytest.mark.parametrize(
    ("entry", "message"), [case[1:] for case in BAD_RULES], ids=[case[0] for case in BAD_RULES]
)
def test_from_config_names_the_bad_field(entry: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^role 'editor' " + message):
        Policy.from_config({"viewer": [GOOD], "editor": [GOOD, entry]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^anonymous " + message):
        Policy.from_config({}, anonymous=[GOOD, entry])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ({"": [GOOD]}, "a role name must be a non-empty string"),
        ({"editor": GOOD}, r"role 'editor': the rules must be a list"),
        ({"editor": "allow all"}, r"role 'editor': the rules must be a list"),
        ([("editor", [GOOD])], "roles must be a table"),
    ],
)
def test_from_config_bad_roles(roles: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.from_config(roles)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"effect": "maybe"}, "effect"),
        ({"operations": frozenset()}, "at least one operation"),
        ({"operations": frozenset({"read"})}, "unknown operation"),
        ({"pattern": "a/#/b"}, "'#' may only be"),
        ({"pattern": "{who}"}, "unknown placeholder"),
        ({"apps": frozenset()}, "apps"),
        ({"windows": ("08:00-09:00",)}, "TimeWindow"),
    ],
)
def test_bad_rules(fields: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {
        "effect": "allow",
        "operations": frozenset({"publish"}),
        "pattern": "a",
    }
    values.update(fields)
    with pytest.raises(ValueError, match=message):
        Rule(**values)


def test_policy_refuses_what_is_not_a_rule() -> None:
    with pytest.raises(ValueError, match="not a Rule"):
        Policy({"r": ["allow all"]})  # type: ignore[list-item]


def test_structs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        OFFICE.start = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        POLICY.roles["editor"][0].pattern = "#"  # type: ignore[misc]
    decision = Decision(True, "x")
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]


def test_from_config_takes_any_sequence_of_mappings() -> None:
    rules: Sequence[Mapping[str, Any]] = (GOOD,)
    policy = Policy.from_config({"r": rules}, anonymous=rules)
    assert len(policy.roles["r"]) == len(policy.anonymous) == 1
