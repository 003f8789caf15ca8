"""Topics and patterns: what is legal, what matches what, and tenant scoping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.topics import (
    MAX_SEGMENTS,
    MAX_TOPIC_LENGTH,
    is_pattern,
    matches,
    scope_pattern,
    scope_topic,
    unscope,
    validate_pattern,
    validate_topic,
)
from hybridbus.errors import ErrorCode, InvalidPattern, InvalidTopic

# Validation ------------------------------------------------------------------

VALID_TOPICS = [
    "acme",
    "acme/docs/doc-42/edits",
    "$audit/acme",
    "a/$b/c$",
    "ünïcode/话题",
    "a.b/c_d/e-f/g:h/@i",
    "/".join(["s"] * MAX_SEGMENTS),
    "a" * MAX_TOPIC_LENGTH,
]
INVALID_TOPICS = [
    "",
    "/",
    "/a",
    "a/",
    "a//b",
    "a/+/b",
    "+",
    "#",
    "a/#",
    "a+",
    "a#b",
    "a b",
    "a\tb",
    "a\nb",
    "a\x00b",
    "a\u3000b",  # ideographic space
    "a\xa0b",  # no-break space
    "/".join(["s"] * (MAX_SEGMENTS + 1)),
    "a" * (MAX_TOPIC_LENGTH + 1),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_valid_topic(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("topic", INVALID_TOPICS)
def test_invalid_topic(topic: str) -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic(topic)
    assert not isinstance(info.value, InvalidPattern)
    assert info.value.code is ErrorCode.INVALID_TOPIC


@pytest.mark.parametrize("value", [None, 7, b"acme", ["acme"], {"a": 1}])
def test_non_string_topic_is_invalid_topic(value: object) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidPattern):
        validate_pattern(value)  # type: ignore[arg-type]


VALID_PATTERNS = [
    *VALID_TOPICS,
    "+",
    "#",
    "a/+",
    "a/#",
    "+/+/+",
    "+/#",
    "a/+/c/#",
    "$audit/#",
]
INVALID_PATTERNS = [
    "",
    "a//b",
    "a/",
    "/#",
    "#/a",  # '#' not last
    "a/#/b",
    "#/#",
    "a+",
    "+a",
    "a/b#",
    "a/#b",
    "++",
    "a b/#",
    "a/\t/+",
    "/".join(["+"] * (MAX_SEGMENTS + 1)),
    "a" * (MAX_TOPIC_LENGTH - 1) + "/#",
]


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_valid_pattern(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", INVALID_PATTERNS)
def test_invalid_pattern(pattern: str) -> None:
    with pytest.raises(InvalidPattern) as info:
        validate_pattern(pattern)
    assert info.value.code is ErrorCode.INVALID_PATTERN


def test_errors_are_cached_neither_way() -> None:
    # The validators are cached; a refused value must be refused every time.
    for _ in range(2):
        with pytest.raises(InvalidTopic):
            validate_topic("a//b")
        assert validate_topic("a/b") == "a/b"


@pytest.mark.parametrize(
    ("text", "expected"), [("a/b", False), ("a/+", True), ("#", True), ("a+", True)]
)
def test_is_pattern(text: str, expected: bool) -> None:
    assert is_pattern(text) is expected


# Matching ----------------------------------------------------------------------

MATCHING = [
    ("a", "a", True),
    ("a", "b", False),
    ("a/b", "a/b", True),
    ("a/b", "a", False),
    ("a", "a/b", False),
    ("+", "a", True),
    ("+", "a/b", False),  # '+' is one segment, never across '/'
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("+/b", "a/b", True),
    ("+/+", "a/b", True),
    ("a/+/c", "a/x/c", True),
    ("a/+/c", "a/x/d", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("a/#", "a", True),  # '#' matches the parent level too
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "b", False),
    ("a/#", "ab", False),
    ("a/b/#", "a", False),
    ("+/#", "a", True),
    ("+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    # '$' topics are not matched by a wildcard in the first segment...
    ("#", "$audit", False),
    ("#", "$audit/a", False),
    ("+", "$audit", False),
    ("+/a", "$audit/a", False),
    ("+/#", "$audit/a", False),
    # ...but are by a literal first segment, and '$' elsewhere is ordinary.
    ("$audit", "$audit", True),
    ("$audit/#", "$audit", True),
    ("$audit/+", "$audit/a", True),
    ("a/+", "a/$b", True),
    ("a/#", "a/$b", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCHING)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    validate_pattern(pattern)
    validate_topic(topic)
    assert matches(pattern, topic) is expected


# Tenant scoping ------------------------------------------------------------------

segments = st.sampled_from(["a", "b", "$s", "acme", "acme2", "x$"])
tenants = st.sampled_from(["acme", "acme2", "a", "b", "t-1"])
topics = st.lists(segments, min_size=1, max_size=5).map("/".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segments | st.just("+"), min_size=1, max_size=5))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


def test_scope_topic_prefixes_the_tenant() -> None:
    assert scope_topic("acme", "docs/42") == "acme/docs/42"
    assert unscope("acme", "acme/docs/42") == "docs/42"


def test_scope_pattern_prefixes_the_tenant() -> None:
    assert scope_pattern("acme", "#") == "acme/#"
    assert scope_pattern("acme", "+/edits") == "acme/+/edits"


@pytest.mark.parametrize("tenant", ["", "a/b", "+", "#", "a+", "$sys"])
def test_bad_tenant_is_refused(tenant: str) -> None:
    with pytest.raises(InvalidTopic):
        scope_topic(tenant, "x")
    with pytest.raises(InvalidTopic):
        scope_pattern(tenant, "x")


@pytest.mark.parametrize("tenant", ["a b", "a\tb", "a\x00"])
def test_tenant_with_whitespace_is_refused(tenant: str) -> None:
    # Caught by the check of the whole scoped name, so the error is of its kind.
    with pytest.raises(InvalidTopic):
        scope_topic(tenant, "x")
    with pytest.raises(InvalidPattern):
        scope_pattern(tenant, "x")


def test_scoping_validates_the_relative_part() -> None:
    with pytest.raises(InvalidTopic):
        scope_topic("acme", "a/+")
    with pytest.raises(InvalidTopic):
        scope_topic("acme", "")
    with pytest.raises(InvalidPattern):
        scope_pattern("acme", "#/a")
    with pytest.raises(InvalidPattern):
        scope_pattern("acme", "")


def test_scoping_enforces_the_limits_on_the_whole() -> None:
    relative = "/".join(["s"] * MAX_SEGMENTS)
    validate_topic(relative)
    with pytest.raises(InvalidTopic):
        scope_topic("acme", relative)
    with pytest.raises(InvalidPattern):
        scope_pattern("acme", relative)


def test_unscope_refuses_another_tenant() -> None:
    with pytest.raises(InvalidTopic):
        unscope("acme", "acme2/docs")
    with pytest.raises(InvalidTopic):
        unscope("acme", "acme")


@given(tenants, patterns(), tenants, topics)
def test_scoped_pattern_never_leaves_its_tenant(
    tenant: str, pattern: str, other: str, relative: str
) -> None:
    scoped = scope_pattern(tenant, pattern)
    topic = scope_topic(other, relative)
    if other != tenant:
        assert not matches(scoped, topic)
    else:
        # Inside the tenant, scoping changes nothing about what matches.
        assert matches(scoped, topic) == matches(pattern, relative) or (
            # ...except that a '$' first segment is no longer first.
            pattern.split("/")[0] in ("+", "#") and relative.startswith("$")
        )


@given(tenants, patterns(), st.lists(segments, min_size=1, max_size=6).map("/".join))
def test_scoped_pattern_matches_only_topics_under_its_tenant(
    tenant: str, pattern: str, absolute: str
) -> None:
    # Any absolute topic at all, including '$' ones and other tenants.
    if matches(scope_pattern(tenant, pattern), absolute):
        assert absolute.split("/")[0] == tenant
        assert matches(pattern, unscope(tenant, absolute)) or (
            pattern.split("/")[0] in ("+", "#") and unscope(tenant, absolute).startswith("$")
        )


@given(tenants, topics)
def test_scope_topic_round_trips(tenant: str, relative: str) -> None:
    assert unscope(tenant, scope_topic(tenant, relative)) == relative
