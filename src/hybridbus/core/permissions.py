"""Who may do what: the policy, and the pure decision over it.

Owns: `Policy` (the rules per role and for anonymous identities, compiled for
deciding; `Policy.from_config` is the entry for the configuration's plain
dicts), the pattern algebra it needs (`covers`, `intersects`), `Decision` and
`decide`. Must not define or parse rules (`Rule`, `TimeWindow` and the rule
tables of the configuration are `core.rules`), do I/O (except the time-zone
lookups of `zoneinfo`), read a clock (the caller passes `now`), cache
decisions (the server does, per session) or scope topics into a tenant: every
pattern here is relative to the identity's tenant.

Theory of operation. `decide(policy, identity, operation, pattern, now)`:

1. An admin may do everything.
2. The rules considered are those of each of the identity's roles (an unknown
   role contributes none), the policy's anonymous rules if the identity is
   anonymous, and the identity's own grants (each an allow rule for its
   operations on its pattern, taken literally: no placeholders).
3. A rule is in effect if its operations hold `operation`, its apps hold the
   identity's app (or it names none) and one of its time windows holds `now`
   (or it has none).
4. A rule's pattern is filled in from the identity: `{sub}` the user,
   `{tenant}`, `{device}`, `{app}`. A value that is missing, empty or holds
   `/`, `+` or `#` cannot be used (a claim must never inject a wildcard or a
   segment), and the rule fails closed: an allow rule does not apply, a deny
   rule applies with `+` for the whole segment (it denies whatever the value
   might have been).
5. Deny overrides allow, and no rule means no: the request is refused if a
   deny rule in effect *intersects* the requested pattern (some topic is
   matched by both), else allowed if ONE allow rule in effect *covers* it
   (every topic the request can match is matched by the rule), else refused.
   A wildcard subscription is therefore refused, never silently narrowed to
   the allowed part. For a plain topic both tests are `matches(rule, topic)`.

Patterns follow `core.topics`: `+` is one segment, a last `#` zero or more
(`a/#` matches `a`), and a pattern whose first segment is a wildcard does not
match a topic whose first segment starts with `$`. `covers` and `intersects`
keep that `$` rule, like `matches`. `decide` does not apply it: the patterns
it sees are relative, and the server puts the tenant in front of them, so a
relative `$x` is never a topic's first segment (`acme/#` matches
`acme/$x/y`), and a deny rule `+/secret` must refuse `$x/secret` too. Both
compare patterns as if topics could be longer than `MAX_SEGMENTS`, which can
only make a cover rarer and an intersection likelier: safe for both effects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import msgspec

from hybridbus.core.identity import Identity
from hybridbus.core.rules import _PLACEHOLDER, Rule, TimeWindow, _local, parse_rules
from hybridbus.core.topics import validate_pattern
from hybridbus.errors import InvalidPattern

# Bad configuration is a ValueError whatever its kind (the server reports it):
# ruff: noqa: TRY004

__all__ = [
    "Decision",
    "Policy",
    "covers",
    "decide",
    "intersects",
]


# -- the pattern algebra ---------------------------------------------------------------

# A pattern in normal form: its segments before a trailing `#`, and whether it
# had one. `#` alone becomes `+/#` (a topic has at least one segment, and both
# start with a wildcard), so the prefix is never empty.
_Normal = tuple[tuple[str, ...], bool]


def _normal(pattern: str) -> _Normal:
    segments = pattern.split("/")
    if segments[-1] == "#":
        return tuple(segments[:-1]) or ("+",), True
    return tuple(segments), False


def _covers(general: _Normal, specific: _Normal, dollar: bool) -> bool:
    g, g_rest = general
    s, s_rest = specific
    if g_rest:
        if len(s) < len(g):
            return False
    elif s_rest or len(s) != len(g):
        return False
    if dollar and g[0] == "+" and s[0] != "+" and s[0].startswith("$"):
        return False
    return all(x == "+" or x == y for x, y in zip(g, s, strict=False))


def _intersects(a: _Normal, b: _Normal, dollar: bool) -> bool:
    x, x_rest = a
    y, y_rest = b
    if len(x) != len(y) and not (x_rest if len(x) < len(y) else y_rest):
        return False
    if dollar:
        first, other = x[0], y[0]
        if first == "+" and other != "+" and other.startswith("$"):
            return False
        if other == "+" and first != "+" and first.startswith("$"):
            return False
    return all(p == q or p == "+" or q == "+" for p, q in zip(x, y, strict=False))


def covers(general: str, specific: str) -> bool:
    """Does `general` match every topic `specific` can match? (Both assumed valid.)"""
    return _covers(_normal(general), _normal(specific), dollar=True)


def intersects(a: str, b: str) -> bool:
    """Is some topic matched by both `a` and `b`? (Both assumed valid.)"""
    return _intersects(_normal(a), _normal(b), dollar=True)


# -- compiled rules --------------------------------------------------------------------

# A template segment with placeholders: literal text at even indexes, names at
# odd ones (`re.split` with one group), e.g. ("user-", "sub", "") for user-{sub}.
_Template = tuple[str, ...]


def _usable(value: str | None) -> bool:
    """Can a claim value fill a placeholder? Never one that adds a wildcard or a segment."""
    return (
        value is not None
        and value != ""
        and "/" not in value
        and "+" not in value
        and "#" not in value
        and " " not in value
        and value.isprintable()
    )


class _Compiled:
    """A rule ready to decide with: its pattern pre-split, its label for reasons."""

    __slots__ = (
        "allow",
        "apps",
        "head",
        "label",
        "normal",
        "operations",
        "pattern",
        "rest",
        "template",
        "windows",
    )

    def __init__(
        self,
        label: str,
        allow: bool,
        operations: frozenset[str],
        pattern: str,
        windows: tuple[TimeWindow, ...] = (),
        apps: frozenset[str] | None = None,
        literal: bool = False,
    ) -> None:
        self.label = label
        self.allow = allow
        self.operations = operations
        self.pattern = pattern
        self.windows = windows
        self.apps = apps
        self.normal: _Normal | None = None
        self.template: tuple[str | _Template, ...] = ()
        self.rest = False
        if literal or "{" not in pattern:
            self.normal = _normal(pattern)
        else:
            # Placeholders are never in a wildcard segment, so the normal form's
            # prefix is the template's segments before a trailing `#`.
            segments = pattern.split("/")
            self.rest = segments[-1] == "#"
            if self.rest:
                del segments[-1]
            self.template = tuple(tuple(_PLACEHOLDER.split(s)) if "{" in s else s for s in segments)
        # A literal first segment: a request starting with another literal is
        # neither covered nor intersected, whatever the placeholders hold.
        first = pattern.split("/", 1)[0]
        self.head = None if first in ("+", "#") or (not literal and "{" in first) else first

    def fill(self, values: Mapping[str, str | None]) -> _Normal | None:
        """The rule's pattern for these claim values (None: the rule does not apply).

        `values` holds the usable claim values; None for one that cannot be used.
        """
        if self.normal is not None:
            return self.normal
        out: list[str] = []
        for parts in self.template:
            if isinstance(parts, str):
                out.append(parts)
                continue
            pieces: list[str] = []
            for index, part in enumerate(parts):
                value = values[part] if index % 2 else part
                if value is None:
                    break
                pieces.append(value)
            else:
                out.append("".join(pieces))
                continue
            if self.allow:
                return None
            out.append("+")  # fail closed: deny whatever the value might have been
        return tuple(out), self.rest


def _compile(label: str, rule: Rule) -> _Compiled:
    return _Compiled(
        label, rule.effect == "allow", rule.operations, rule.pattern, rule.windows, rule.apps
    )


class Policy:
    """The configured rules: per role, and for anonymous identities.

    Build one from `Rule`s, or from the configuration with `from_config`.
    Reasons name a rule by its 1-based number in its role's list (for
    `from_config`, the number of the configuration entry it came from).
    """

    __slots__ = ("_anonymous", "_roles", "anonymous", "roles")

    roles: Mapping[str, tuple[Rule, ...]]
    anonymous: tuple[Rule, ...]

    def __init__(
        self, roles: Mapping[str, Sequence[Rule]] | None = None, anonymous: Sequence[Rule] = ()
    ) -> None:
        numbered = {
            name: [(index, rule) for index, rule in enumerate(rules, 1)]
            for name, rules in (roles or {}).items()
        }
        self._setup(numbered, list(enumerate(anonymous, 1)))

    def _setup(
        self,
        roles: Mapping[str, Sequence[tuple[int, Rule]]],
        anonymous: Sequence[tuple[int, Rule]],
    ) -> None:
        for name, rules in roles.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"a role name must be a non-empty string, not {name!r}")
            for _, rule in rules:
                if not isinstance(rule, Rule):
                    raise ValueError(f"role {name!r} holds {rule!r}, not a Rule")
        self.roles = MappingProxyType(
            {name: tuple(rule for _, rule in rules) for name, rules in roles.items()}
        )
        self.anonymous = tuple(rule for _, rule in anonymous)
        self._roles = {
            name: tuple(_compile(f"role {name!r} rule {i}", rule) for i, rule in rules)
            for name, rules in roles.items()
        }
        self._anonymous = tuple(_compile(f"anonymous rule {i}", rule) for i, rule in anonymous)

    @classmethod
    def from_config(
        cls,
        roles: Mapping[str, Sequence[Mapping[str, Any]]],
        anonymous: Sequence[Mapping[str, Any]] = (),
    ) -> Policy:
        """Parse the configuration's rules (plain dicts, as from TOML).

        A rule is `{allow = [...] | "*", topics = "pattern" | [...]}` (or
        `deny`), optionally limited with `days` (`["mon-fri", "sun"]`),
        `hours` (`"08:00-20:00"`; `24:00` may end), `zone` (an IANA name,
        default UTC) and `apps`. Raises `ValueError` naming the role, the
        rule's number and the field.
        """
        if not isinstance(roles, Mapping):
            raise ValueError(f"roles must be a table of role name to rules, not {roles!r}")
        parsed: dict[str, list[tuple[int, Rule]]] = {}
        for name, entries in roles.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"a role name must be a non-empty string, not {name!r}")
            parsed[name] = list(parse_rules(f"role {name!r}", entries))
        policy = cls.__new__(cls)
        policy._setup(parsed, list(parse_rules("anonymous", anonymous)))
        return policy

    def windowed_roles(self) -> frozenset[str]:
        """The roles with a rule limited to time windows ("" stands for the anonymous rules).

        A decision for an identity with none of them cannot change with the time.
        """
        names = {name for name, rules in self.roles.items() if any(r.windows for r in rules)}
        if any(r.windows for r in self.anonymous):
            names.add("")
        return frozenset(names)

    def _rules(self, identity: Identity) -> Iterator[_Compiled]:
        roles = self._roles
        for role in identity.roles:
            yield from roles.get(role, ())
        if identity.anonymous:
            yield from self._anonymous
        for index, grant in enumerate(identity.grants, 1):
            try:
                validate_pattern(grant.pattern)
            except InvalidPattern:
                continue  # a malformed grant allows nothing
            yield _Compiled(f"grant {index}", True, grant.operations, grant.pattern, literal=True)

    def __repr__(self) -> str:
        return f"Policy(roles={self.roles!r}, anonymous={self.anonymous!r})"


# -- the decision ----------------------------------------------------------------------


class Decision(msgspec.Struct, frozen=True):
    """Whether an operation is allowed, and which rule said so (or that none did)."""

    allowed: bool
    reason: str


def decide(
    policy: Policy, identity: Identity, operation: str, pattern: str, now: float
) -> Decision:
    """May `identity` do `operation` on the (tenant-relative) `pattern` at Unix time `now`?

    See the module docstring for the rules. Raises `InvalidPattern` if
    `pattern` is not a valid pattern.
    """
    if identity.admin:
        return Decision(True, "admin")
    validate_pattern(pattern)
    request = _normal(pattern)
    head = request[0][0]
    claims = {
        "sub": identity.user,
        "tenant": identity.tenant,
        "device": identity.device,
        "app": identity.app,
    }
    values = {name: value if _usable(value) else None for name, value in claims.items()}
    local: dict[str, tuple[int, int]] = {}  # the zone's (weekday, minute) at `now`
    allowed_by: _Compiled | None = None
    partly: _Compiled | None = None
    for rule in policy._rules(identity):
        if operation not in rule.operations:
            continue
        if rule.apps is not None and identity.app not in rule.apps:
            continue
        if rule.allow and allowed_by is not None:
            continue  # allowed already: only a deny can change the answer now
        if rule.head is not None and rule.head != head and head != "+":
            continue
        filled = rule.fill(values)
        if filled is None:
            continue
        if not rule.allow:
            if _intersects(filled, request, dollar=False) and _in_effect(rule, now, local):
                return Decision(False, f"denied by {rule.label} ({rule.pattern})")
        elif _covers(filled, request, dollar=False):
            if _in_effect(rule, now, local):
                allowed_by = rule
        elif (
            partly is None
            and _intersects(filled, request, dollar=False)
            and _in_effect(rule, now, local)
        ):
            partly = rule  # to say why a too-wide pattern is refused
    if allowed_by is not None:
        return Decision(True, f"allowed by {allowed_by.label} ({allowed_by.pattern})")
    if partly is not None:
        return Decision(
            False,
            f"no rule allows {operation} on all of {pattern!r}"
            f" ({partly.label} allows only part of it: {partly.pattern})",
        )
    return Decision(False, f"no rule allows {operation} on {pattern!r}")


def _in_effect(rule: _Compiled, now: float, local: dict[str, tuple[int, int]]) -> bool:
    if not rule.windows:
        return True
    for window in rule.windows:
        at = local.get(window.zone)
        if at is None:
            at = local[window.zone] = _local(now, window.zone)
        if window._holds(*at):
            return True
    return False
