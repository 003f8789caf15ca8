"""Topic names and subscription patterns: validation, matching, tenant scoping.

Owns: what a legal topic and pattern look like, the naive matcher (the
reference the trie is checked against), and the helpers that put a tenant in
front of a client's relative topic so that no pattern can leave its tenant.
Must not do I/O.

A topic is `/`-separated non-empty segments, e.g. `acme/docs/doc-42/edits`;
the first segment is the tenant. A pattern is a topic in which a segment may be
`+` (exactly one segment) or, as the last segment only, `#` (zero or more
segments, MQTT style: `a/#` matches `a` too). As in MQTT, a pattern whose first
segment is a wildcard does not match topics whose first segment starts with
`$` (system topics such as `$audit/...`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from hybridbus.errors import InvalidPattern, InvalidTopic

__all__ = [
    "MAX_SEGMENTS",
    "MAX_TOPIC_LENGTH",
    "is_pattern",
    "matches",
    "scope_pattern",
    "scope_topic",
    "tenant_of",
    "unscope",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_LENGTH: Final = 1024
MAX_SEGMENTS: Final = 32
_WILDCARDS: Final = frozenset("+#")


def _check_common(text: object, kind: str, error: type[InvalidTopic | InvalidPattern]) -> str:
    if not isinstance(text, str):
        raise error(f"a {kind} must be a string, not {type(text).__name__}")
    if not text:
        raise error(f"a {kind} must not be empty")
    if len(text) > MAX_TOPIC_LENGTH:
        raise error(f"{kind} is {len(text)} characters, over the limit of {MAX_TOPIC_LENGTH}")
    if not text.isprintable() or " " in text:
        raise error(f"{kind} {text!r} contains whitespace or control characters")
    return text


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a legal topic name, else raise `InvalidTopic`."""
    if not isinstance(topic, str):  # before the cache, which fails on unhashable values
        raise InvalidTopic(f"a topic must be a string, not {type(topic).__name__}")
    return _validate_topic(topic)


@lru_cache(maxsize=65536)
def _validate_topic(topic: str) -> str:
    _check_common(topic, "topic", InvalidTopic)
    segments = topic.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidTopic(f"topic {topic!r} has over {MAX_SEGMENTS} segments")
    for segment in segments:
        if not segment:
            raise InvalidTopic(f"topic {topic!r} has an empty segment")
        if _WILDCARDS.intersection(segment):
            raise InvalidTopic(f"topic {topic!r} contains a wildcard; only patterns may")
    return topic


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is a legal pattern (or topic), else raise `InvalidPattern`."""
    if not isinstance(pattern, str):  # before the cache, which fails on unhashable values
        raise InvalidPattern(f"a pattern must be a string, not {type(pattern).__name__}")
    return _validate_pattern(pattern)


@lru_cache(maxsize=65536)
def _validate_pattern(pattern: str) -> str:
    _check_common(pattern, "pattern", InvalidPattern)
    segments = pattern.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidPattern(f"pattern {pattern!r} has over {MAX_SEGMENTS} segments")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            raise InvalidPattern(f"pattern {pattern!r} has an empty segment")
        if segment in ("+", "#"):
            if segment == "#" and index != last:
                raise InvalidPattern(f"pattern {pattern!r}: '#' may only be the last segment")
        elif _WILDCARDS.intersection(segment):
            raise InvalidPattern(
                f"pattern {pattern!r}: a wildcard must be a whole segment ('a/+/c', not 'a+')"
            )
    return pattern


def is_pattern(text: str) -> bool:
    """True if `text` contains a wildcard segment (it is not a plain topic)."""
    return "+" in text or "#" in text


def matches(pattern: str, topic: str) -> bool:
    """The reference matcher: does `pattern` match `topic`? (Both assumed valid.)"""
    p = pattern.split("/")
    t = topic.split("/")
    if p[0] in ("+", "#") and t[0].startswith("$"):
        return False
    for index, segment in enumerate(p):
        if segment == "#":
            return True
        if index >= len(t):
            return False
        if segment != "+" and segment != t[index]:
            return False
    return len(p) == len(t)


def _check_tenant(tenant: str) -> None:
    if not tenant or "/" in tenant or _WILDCARDS.intersection(tenant) or tenant.startswith("$"):
        raise InvalidTopic(f"tenant {tenant!r} must be one literal segment not starting with '$'")


def tenant_of(topic: str) -> str:
    """The first segment of an absolute topic: its tenant (or its `$` system root)."""
    return topic.partition("/")[0]


def scope_topic(tenant: str, topic: str) -> str:
    """The absolute topic of a client's relative `topic` inside `tenant`."""
    _check_tenant(tenant)
    validate_topic(topic)
    return validate_topic(f"{tenant}/{topic}")


def scope_pattern(tenant: str, pattern: str) -> str:
    """The absolute pattern of a client's relative `pattern` inside `tenant`.

    The tenant becomes a literal first segment, so the result can only match
    topics of that tenant, whatever wildcards `pattern` holds.
    """
    _check_tenant(tenant)
    validate_pattern(pattern)
    return validate_pattern(f"{tenant}/{pattern}")


def unscope(tenant: str, topic: str) -> str:
    """The relative form of an absolute `topic` of `tenant` (inverse of `scope_topic`)."""
    prefix = f"{tenant}/"
    if not topic.startswith(prefix):
        raise InvalidTopic(f"topic {topic!r} is not inside tenant {tenant!r}")
    return topic[len(prefix) :]
