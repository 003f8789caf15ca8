"""The Guard over a real bus (memory engine) with an injected clock: the one place access is
enforced — tenant scoping, permissions, time windows, caching, rate limits, revocation, audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support import FakeClock

from hybridbus.core.identity import Grant, Identity
from hybridbus.core.log import Delivery
from hybridbus.core.permissions import Policy
from hybridbus.core.revocation import Revocation
from hybridbus.core.topics import matches, validate_pattern, validate_topic
from hybridbus.engine.base import EngineConfig
from hybridbus.engine.memory import MemoryEngine
from hybridbus.errors import (
    ErrorCode,
    Forbidden,
    InvalidPattern,
    InvalidTopic,
    RateLimited,
    Revoked,
    TooManyRevocations,
)
from hybridbus.hub.bus import Bus
from hybridbus.hub.guard import Guard, Limits, Principal

ROLES: dict[str, list[dict[str, Any]]] = {
    "editor": [
        {"allow": ["subscribe", "history", "presence"], "topics": "docs/#"},
        {"allow": ["publish"], "topics": "docs/+/edits"},
        {"deny": "*", "topics": "docs/secret/#"},
        {"allow": "*", "topics": "users/{sub}/#"},
        {"allow": ["subscribe"], "topics": ["devices/{device}/#", "tenants/{tenant}"]},
        {"allow": ["publish"], "topics": "apps/{app}/in", "apps": ["crm"]},
    ],
    # A deny whose placeholder has no value fails closed: it denies the whole segment.
    "careful": [
        {"allow": ["subscribe"], "topics": "private/#"},
        {"deny": ["subscribe"], "topics": "private/{device}/#"},
    ],
    "shift": [
        {
            "allow": ["publish"],
            "topics": "docs/+/edits",
            "days": ["mon-fri"],
            "hours": "08:00-20:00",
            "zone": "Europe/Berlin",
        }
    ],
    "all": [{"allow": "*", "topics": "#"}],
}
ANONYMOUS = [{"allow": ["subscribe", "history"], "topics": "news/#"}]
POLICY = Policy.from_config(ROLES, anonymous=ANONYMOUS)

ADMIN = Identity(tenant="ops", user="root", admin=True)
ALICE = Identity(tenant="acme", user="alice", device="d1", app="crm", roles=("editor",))
EVERYTHING = {t: Identity(tenant=t, user=f"u-{t}", roles=("all",)) for t in ("acme", "globex")}
BERLIN = ZoneInfo("Europe/Berlin")
_ids = itertools.count(1)


def ev(id: str | None = None) -> dict[str, Any]:
    return {"id": id or f"e{next(_ids)}", "source": "/test", "type": "test.event"}


class Hub:
    """A started bus over a memory engine, sharing one fake clock with its guards."""

    def __init__(self, clock: FakeClock, engine: MemoryEngine | None = None) -> None:
        self.clock = clock
        self.engine = engine or MemoryEngine(EngineConfig(sweep_interval=0), clock)
        self.bus = Bus(self.engine, clock=clock)

    def guard(self, policy: Policy = POLICY, limits: Limits | None = None) -> Guard:
        return Guard(self.bus, policy, limits, clock=self.clock)

    async def audits(self, tenant: str, kind: str) -> list[Delivery]:
        await settle()
        return (await self.bus.history(f"$audit/{tenant}/{kind}")).deliveries


@contextlib.asynccontextmanager
async def running(clock: FakeClock) -> AsyncIterator[Hub]:
    hub = Hub(clock)
    await hub.bus.start()
    try:
        yield hub
    finally:
        await hub.bus.close()


@pytest.fixture
async def hub(clock: FakeClock) -> AsyncIterator[Hub]:
    async with running(clock) as started:
        yield started


async def settle() -> None:
    """Let the guard's background audit appends run (the memory engine never suspends)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- 1. tenant isolation ------------------------------------------------------------------

_literal = st.one_of(
    st.sampled_from(["acme", "globex", "$x", "$audit", "..", ".", "docs", "ü"]),
    st.text(st.characters(categories=("L", "N")), min_size=1, max_size=6),
)
_patterns = st.tuples(st.lists(st.one_of(_literal, st.just("+")), max_size=4), st.booleans()).map(
    lambda parts: "/".join([*parts[0], "#"] if parts[1] or not parts[0] else parts[0])
)
_topics = st.lists(_literal, min_size=1, max_size=5).map("/".join)


async def _isolation(patterns: list[str], topics: list[str]) -> None:
    async with running(FakeClock()) as hub:
        guard = hub.guard()
        a, b = (guard.admit(EVERYTHING[t]) for t in ("acme", "globex"))
        admin = guard.admit(ADMIN)
        async with contextlib.AsyncExitStack() as stack:
            subs = []
            for pattern in patterns:
                absolute = a.pattern(pattern)
                assert absolute == f"acme/{pattern}" and a.relative(absolute) == pattern
                assert not matches(absolute, "$audit/acme/revoke")
                assert not any(matches(absolute, f"globex/{t}") for t in topics)
                subs.append(
                    (absolute, await stack.enter_async_context(guard.subscribe(a, pattern)))
                )
            theirs = await stack.enter_async_context(guard.subscribe(b, "#"))
            for n, topic in enumerate(topics):
                await guard.publish(b, topic, ev(f"b{n}"))
                await guard.publish(a, topic, ev(f"a{n}"))
                await guard.publish(admin, f"globex/{topic}", ev(f"admin{n}"))
            for (absolute, sub), pattern in zip(subs, patterns, strict=True):
                # Exactly acme's own events that match: none of globex's, and not vacuous.
                want = [f"a{n}" for n, t in enumerate(topics) if matches(absolute, f"acme/{t}")]
                assert [d.event.id for d in sub.take_nowait()] == want
                history = await guard.history(a, pattern)
                assert [d.event.id for d in history.deliveries] == want
            assert all(d.topic.startswith("globex/") for d in theirs.take_nowait())


@settings(max_examples=60, deadline=None)
@given(
    patterns=st.lists(_patterns, min_size=1, max_size=4),
    topics=st.lists(_topics, min_size=1, max_size=5),
)
def test_a_tenant_never_sees_another_tenants_events(patterns: list[str], topics: list[str]) -> None:
    asyncio.run(_isolation(patterns, topics))


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_patterns, _topics, st.text(max_size=20)))
def test_scoping_either_refuses_or_prefixes_the_tenant(text: str) -> None:
    principal = Guard(Bus(MemoryEngine()), POLICY).admit(EVERYTHING["acme"])
    for scope, validate, error in (
        (principal.pattern, validate_pattern, InvalidPattern),
        (principal.topic, validate_topic, InvalidTopic),
    ):
        try:
            validate(text)
        except error:
            with pytest.raises(error):
                scope(text)
        else:
            assert scope(text) == f"acme/{text}"


@pytest.mark.parametrize(
    "relative", ["", "/", "/globex/x", "x/", "x//y", "a/#/b", "a+", "#a", " x", "x\n", "x\x00"]
)
async def test_malformed_topics_and_patterns_are_refused_not_rescoped(
    hub: Hub, relative: str
) -> None:
    guard = hub.guard()
    principal = guard.admit(EVERYTHING["acme"])
    with pytest.raises(InvalidPattern):
        guard.subscribe(principal, relative)
    with pytest.raises(InvalidPattern):
        await guard.history(principal, relative)
    with pytest.raises(InvalidTopic):
        await guard.publish(principal, relative, ev())
    with pytest.raises(InvalidTopic):
        guard.presence(principal, relative)
    assert (await hub.bus.history("#")).deliveries == []


async def test_dot_segments_are_literal_and_stay_inside_the_tenant(hub: Hub) -> None:
    guard = hub.guard()
    principal = guard.admit(EVERYTHING["acme"])
    ack = await guard.publish(principal, "../globex/x", ev())
    assert ack.topic == "acme/../globex/x"
    assert (await hub.bus.history("globex/#")).deliveries == []


async def test_a_tenant_named_like_a_system_topic_can_scope_nothing(hub: Hub) -> None:
    principal = hub.guard().admit(Identity(tenant="$audit", roles=("all",)))
    with pytest.raises(InvalidTopic):
        principal.pattern("#")
    with pytest.raises(InvalidTopic):
        principal.topic("acme/revoke")


async def test_admins_are_absolute_and_alone_read_the_audit_trail(hub: Hub) -> None:
    guard = hub.guard()
    admin, tenant = guard.admit(ADMIN), guard.admit(EVERYTHING["acme"])
    await guard.publish(admin, "acme/news", ev("by-admin"))
    await settle()  # the admin.publish audit is appended in the background
    assert [d.topic for d in (await guard.history(tenant, "#")).deliveries] == ["acme/news"]
    audit = await guard.history(admin, "$audit/#")
    assert [d.topic for d in audit.deliveries] == ["$audit/acme/admin.publish"]
    # A leading wildcard never reaches `$` topics, even an admin's.
    assert [d.topic for d in (await guard.history(admin, "#")).deliveries] == ["acme/news"]
    assert admin.pattern("$audit/#") == "$audit/#" and admin.relative("acme/x") == "acme/x"


# -- 2. permissions through the guard ---------------------------------------------------------

BOB = Identity(tenant="acme", user="bob", roles=("editor",))  # no device, no app
ERP = Identity(tenant="acme", user="alice", app="erp", roles=("editor",))
SLASHED = Identity(tenant="acme", user="a/b", roles=("editor",))  # a claim injecting a segment
CAREFUL = Identity(tenant="acme", user="c", roles=("careful",))
CAREFUL_D1 = Identity(tenant="acme", user="c", device="d1", roles=("careful",))
GRANTS = (Grant("shared/+/x"), Grant("out/{sub}", frozenset({"publish"})))
GRANTED = Identity(tenant="acme", user="g", grants=GRANTS)
ANON = Identity(tenant="public", anonymous=True)
NAMED = Identity(tenant="public", user="n")  # not anonymous: the anonymous rules are not its
GHOST = Identity(tenant="acme", user="x", roles=("ghost",))

PERMISSIONS = [
    (ALICE, "subscribe", "docs/42/edits", True),
    (ALICE, "subscribe", "docs/#", False),  # the deny docs/secret/# intersects it
    # docs/security.md's worked example says this is allowed; docs/secret/edits is in both.
    (ALICE, "subscribe", "docs/+/edits", False),
    (ALICE, "subscribe", "#", False),
    (ALICE, "history", "docs/42", True),
    (ALICE, "history", "docs/secret/x", False),
    (ALICE, "presence", "docs/42", True),
    (ALICE, "presence", "docs/secret", False),
    (ALICE, "publish", "docs/42/edits", True),
    (ALICE, "publish", "docs/secret/edits", False),
    (ALICE, "publish", "docs/42", False),
    (ALICE, "publish", "users/alice/notes", True),
    (ALICE, "subscribe", "users/alice/#", True),
    (ALICE, "publish", "users/bob/notes", False),
    (ALICE, "subscribe", "users/+/notes", False),
    (ALICE, "subscribe", "devices/d1/#", True),
    (ALICE, "subscribe", "devices/d2/x", False),
    (ALICE, "subscribe", "tenants/acme", True),
    (ALICE, "subscribe", "tenants/globex", False),
    (ALICE, "publish", "apps/crm/in", True),
    (BOB, "subscribe", "devices/d1/x", False),
    (BOB, "publish", "apps/crm/in", False),
    (ERP, "publish", "apps/erp/in", False),
    (SLASHED, "publish", "users/a/b/x", False),
    (CAREFUL, "subscribe", "private/a/b", False),
    (CAREFUL_D1, "subscribe", "private/d2/x", True),
    (CAREFUL_D1, "subscribe", "private/d1/x", False),
    (CAREFUL_D1, "subscribe", "private/#", False),
    (GRANTED, "subscribe", "shared/a/x", True),
    (GRANTED, "history", "shared/a/x", True),
    (GRANTED, "publish", "shared/a/x", False),
    (GRANTED, "subscribe", "shared/#", False),
    (GRANTED, "publish", "out/{sub}", True),  # grants are literal: no placeholders
    (GRANTED, "publish", "out/g", False),
    (ANON, "subscribe", "news/today", True),
    (ANON, "history", "news/#", True),
    (ANON, "publish", "news/today", False),
    (ANON, "presence", "news/today", False),
    (ANON, "subscribe", "docs/1/edits", False),
    (NAMED, "subscribe", "news/today", False),
    (GHOST, "subscribe", "docs/42/edits", False),
    (GHOST, "publish", "docs/42/edits", False),
]


async def attempt(guard: Guard, principal: Principal, operation: str, relative: str) -> None:
    if operation == "subscribe":
        guard.subscribe(principal, relative)
    elif operation == "publish":
        await guard.publish(principal, relative, ev())
    elif operation == "history":
        await guard.history(principal, relative)
    else:
        assert guard.presence(principal, relative) == principal.topic(relative)


@pytest.mark.parametrize(
    ("identity", "operation", "relative", "allowed"),
    PERMISSIONS,
    ids=[f"{i.user}-{op}-{rel}-{'yes' if ok else 'no'}" for i, op, rel, ok in PERMISSIONS],
)
async def test_permissions(
    hub: Hub, identity: Identity, operation: str, relative: str, allowed: bool
) -> None:
    guard = hub.guard()
    principal = guard.admit(identity)
    if allowed:
        await attempt(guard, principal, operation, relative)
    else:
        with pytest.raises(Forbidden) as refused:
            await attempt(guard, principal, operation, relative)
        assert refused.value.code == ErrorCode.FORBIDDEN == 1110 and not refused.value.retriable
    published = [d.topic for d in (await hub.bus.history("#")).deliveries]
    assert published == ([principal.topic(relative)] if allowed and operation == "publish" else [])


# -- 3. time windows, at the right instants ------------------------------------------------

MONDAY, SATURDAY, WINTER_MONDAY = date(2026, 6, 1), date(2026, 6, 6), date(2026, 1, 5)
SHIFT = Identity(tenant="acme", user="s", roles=("shift",))


def berlin(day: date, hour: int, minute: int = 0, second: int = 0) -> float:
    return datetime.combine(day, time(hour, minute, second), BERLIN).timestamp()


@pytest.mark.parametrize(
    ("instant", "allowed"),
    [
        ((MONDAY, 8, 0, 0), True),
        ((MONDAY, 7, 59, 59), False),
        ((MONDAY, 19, 59, 59), True),
        ((MONDAY, 20, 0, 0), False),
        ((MONDAY + timedelta(days=4), 19, 59, 0), True),  # Friday
        ((SATURDAY, 12, 0, 0), False),
        ((SATURDAY + timedelta(days=1), 12, 0, 0), False),
        ((WINTER_MONDAY, 8, 0, 0), True),  # CET, not CEST
        ((WINTER_MONDAY, 7, 59, 59), False),
    ],
)
async def test_time_windows_at_the_edges(
    hub: Hub, instant: tuple[date, int, int, int], allowed: bool
) -> None:
    assert MONDAY.weekday() == WINTER_MONDAY.weekday() == 0 and SATURDAY.weekday() == 5
    hub.clock.now = berlin(*instant)
    guard = hub.guard()
    principal = guard.admit(SHIFT)
    if allowed:
        guard.check(principal, "publish", "docs/1/edits")
    else:
        with pytest.raises(Forbidden):
            guard.check(principal, "publish", "docs/1/edits")


async def test_a_cached_decision_does_not_outlive_its_window(hub: Hub) -> None:
    hub.clock.now = berlin(MONDAY, 19, 59, 59)
    guard = hub.guard()
    principal = guard.admit(SHIFT)
    assert principal.minutely and not guard.admit(ALICE).minutely
    await guard.publish(principal, "docs/1/edits", ev())
    hub.clock.advance(1)  # 20:00:00
    with pytest.raises(Forbidden):
        await guard.publish(principal, "docs/1/edits", ev())
    hub.clock.now = berlin(MONDAY + timedelta(days=1), 7, 59, 59)
    with pytest.raises(Forbidden):
        guard.check(principal, "publish", "docs/1/edits")
    hub.clock.advance(1)  # Tuesday 08:00:00
    guard.check(principal, "publish", "docs/1/edits")


async def test_a_subscription_made_inside_a_window_runs_on_after_it(hub: Hub) -> None:
    hub.clock.now = berlin(MONDAY, 19, 59)
    guard = hub.guard(Policy.from_config({"r": [{**ROLES["shift"][0], "allow": ["subscribe"]}]}))
    principal = guard.admit(Identity(tenant="acme", roles=("r",)))
    async with guard.subscribe(principal, "docs/+/edits") as sub:
        hub.clock.advance(3600)
        await hub.bus.publish("acme/docs/1/edits", ev("late"))
        assert [d.event.id for d in sub.take_nowait()] == ["late"]
    with pytest.raises(Forbidden):
        guard.subscribe(principal, "docs/+/edits")


# -- 4. caching -------------------------------------------------------------------------------


async def test_decisions_are_cached_per_principal_until_a_new_one(hub: Hub) -> None:
    guard = hub.guard()
    before = guard.admit(ALICE)
    guard.check(before, "publish", "docs/1/edits")
    guard.policy = Policy()  # no rules at all: what a refresh would pick up
    guard.check(before, "publish", "docs/1/edits")  # cached for the life of the credentials
    with pytest.raises(Forbidden):
        guard.check(before, "publish", "docs/2/edits")  # not cached: decided now
    refreshed = guard.admit(ALICE)
    with pytest.raises(Forbidden):
        guard.check(refreshed, "publish", "docs/1/edits")
    assert before.decisions and refreshed.decisions is not before.decisions


# -- 5. rate limits ---------------------------------------------------------------------------


async def test_the_connection_bucket_refuses_past_its_burst_then_refills(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(connection_rate=2, connection_burst=3))
    principal = guard.admit(EVERYTHING["acme"])
    for _ in range(3):
        await guard.publish(principal, "a", ev())
    with pytest.raises(RateLimited) as limited:
        await guard.publish(principal, "a", ev())
    error = limited.value
    assert error.code == ErrorCode.RATE_LIMITED == 1121 and error.retriable
    assert error.retry_after == pytest.approx(0.5)
    await guard.publish(guard.admit(EVERYTHING["acme"]), "a", ev())  # its own bucket
    hub.clock.advance(error.retry_after)
    await guard.publish(principal, "a", ev())
    with pytest.raises(RateLimited):
        guard.take(principal)
    assert len((await hub.bus.history("acme/a")).deliveries) == 5


async def test_the_tenant_bucket_is_shared_in_a_tenant_and_only_there(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(tenant_rate=1, tenant_burst=2))
    first, second = guard.admit(EVERYTHING["acme"]), guard.admit(EVERYTHING["acme"])
    other = guard.admit(EVERYTHING["globex"])
    await guard.publish(first, "a", ev())
    await guard.publish(second, "a", ev())
    for principal in (first, second):
        with pytest.raises(RateLimited) as limited:
            await guard.publish(principal, "a", ev())
        assert limited.value.retry_after == pytest.approx(1.0)
    for _ in range(2):
        await guard.publish(other, "a", ev())
    hub.clock.advance(1)
    await guard.publish(second, "a", ev())


async def test_a_connection_over_its_rate_does_not_drain_its_tenant(hub: Hub) -> None:
    guard = hub.guard(
        limits=Limits(connection_rate=1, connection_burst=1, tenant_rate=1, tenant_burst=2)
    )
    greedy, polite = guard.admit(EVERYTHING["acme"]), guard.admit(EVERYTHING["acme"])
    await guard.publish(greedy, "a", ev())
    for _ in range(5):
        with pytest.raises(RateLimited):
            await guard.publish(greedy, "a", ev())
    await guard.publish(polite, "a", ev())


async def test_a_publish_the_tenant_refuses_costs_the_connection_nothing(hub: Hub) -> None:
    guard = hub.guard(
        limits=Limits(connection_rate=1, connection_burst=2, tenant_rate=1, tenant_burst=1)
    )
    first, second = guard.admit(EVERYTHING["acme"]), guard.admit(EVERYTHING["acme"])
    await guard.publish(first, "a", ev())  # the tenant's one token
    for _ in range(3):
        with pytest.raises(RateLimited, match="tenant"):
            await guard.publish(second, "a", ev())
    hub.clock.advance(1)  # one tenant token back; second's own bucket is still full
    await guard.publish(second, "a", ev())
    hub.clock.advance(1)
    await guard.publish(second, "a", ev())  # its second own token: none was lost


# -- 6. revocation ------------------------------------------------------------------------------


def revocation(kind: Any, value: str, clock: FakeClock, tenant: str = "acme") -> Revocation:
    return Revocation(
        kind=kind, tenant=tenant, value=value, until=clock.now + 3600, at=clock.now, reason="r"
    )


def who(tenant: str = "acme", **claims: Any) -> Identity:
    return Identity(tenant=tenant, **claims)


# kind: (value, identities it revokes, identities it leaves alone); `issued` relative to it.
REVOCATIONS = {
    "token": (
        "t1",
        [who(user="u", token_id="t1")],
        [who(user="u", token_id="t2"), who("globex", user="u", token_id="t1")],
    ),
    "session": (
        "s1",
        [who(session="s1", token_id="t9")],
        [who(session="s2"), who("globex", session="s1")],
    ),
    # Every token of the user issued at or before the revocation (no `iat`: before).
    "user": (
        "u",
        [who(user="u", issued=t) for t in (-10.0, 0.0, None)],
        [who(user="u", issued=1.0), who(user="v")],
    ),
}


@pytest.mark.parametrize("kind", sorted(REVOCATIONS))
async def test_revoke_stores_applies_and_survives_a_restart(hub: Hub, kind: str) -> None:
    def at_now(identity: Identity) -> Identity:  # `issued` is relative to the revocation
        if identity.issued is None:
            return identity
        return msgspec.structs.replace(identity, issued=hub.clock.now + identity.issued)

    value, revoked, admitted = REVOCATIONS[kind]
    revoked, admitted = [at_now(i) for i in revoked], [at_now(i) for i in admitted]
    # The horizon of this server is the hour the revocation asks for: it is kept as made.
    guard, seen = hub.guard(limits=Limits(revocation_horizon=3600)), []
    guard.on_revoke(lambda r: 1 / 0)  # a failing listener stops neither the revocation nor others
    guard.on_revoke(seen.append)
    for identity in revoked:
        guard.admit(identity)
    made = revocation(kind, value, hub.clock)
    await guard.revoke(guard.admit(ADMIN), made)
    assert seen == [made] and await hub.engine.revocations() == [made]
    for identity in revoked:
        with pytest.raises(Revoked) as refused:
            guard.admit(identity)
        assert refused.value.code == ErrorCode.REVOKED == 1104
        assert guard.revoked(identity) == made
    for identity in admitted:
        guard.admit(identity)
    # A restart: a new bus and guard over the same engine object refuse them once started.
    await hub.bus.close()
    hub.bus = Bus(hub.engine, clock=hub.clock)
    await hub.bus.start()
    restarted = hub.guard(limits=Limits(revocation_horizon=3600))
    restarted.admit(revoked[0])  # not loaded yet
    await restarted.start()
    for identity in revoked:
        with pytest.raises(Revoked):
            restarted.admit(identity)
    hub.clock.advance(3600)  # `until` passed
    for identity in revoked:
        restarted.admit(identity)
    [audit] = await hub.audits("acme", "revoke")
    assert audit.event.type == "io.hybridbus.audit.revoke"
    assert audit.event.data["value"] == value and audit.event.data["by"]["user"] == "root"


async def test_a_tenant_revokes_only_inside_its_tenant(hub: Hub) -> None:
    guard, seen = hub.guard(), []
    guard.on_revoke(seen.append)
    principal = guard.admit(ALICE)
    with pytest.raises(Forbidden):
        await guard.revoke(principal, revocation("user", "bob", hub.clock, tenant="globex"))
    assert seen == [] and await hub.engine.revocations() == []
    assert await hub.audits("globex", "revoke") == []
    await guard.revoke(principal, revocation("user", "bob", hub.clock))
    with pytest.raises(Revoked):
        guard.admit(BOB)
    [audit] = await hub.audits("acme", "revoke")
    by = {"tenant": "acme", "user": "alice", "session": None, "admin": False}
    assert audit.event.data["by"] == by


# -- 7. audit -----------------------------------------------------------------------------------


async def test_admin_publishes_are_audited_and_tenants_are_not(hub: Hub) -> None:
    guard = hub.guard()
    await guard.publish(guard.admit(EVERYTHING["acme"]), "x", ev())
    await guard.publish(guard.admit(ADMIN), "acme/y", ev())
    [audit] = await hub.audits("acme", "admin.publish")
    event = audit.event
    assert event.type == "io.hybridbus.audit.admin.publish"
    assert event.source.startswith("/hybridbus/")
    assert event.data == {
        "topic": "acme/y",
        "by": {"tenant": "ops", "user": "root", "session": None, "admin": True},
    }


async def test_denials_are_audited_once_per_window_per_tenant(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(audit_denials=3))
    acme, globex = guard.admit(GHOST), guard.admit(Identity(tenant="globex", roles=("ghost",)))

    def refuse(principal: Principal, times: int) -> None:
        for _ in range(times):  # the same (operation, topic): cached refusals count too
            with pytest.raises(Forbidden):
                guard.check(principal, "publish", "docs/1")

    refuse(acme, 2)
    refuse(globex, 3)
    refuse(acme, 1)
    assert await hub.audits("acme", "denials") == []  # 3 is not more than 3: globex's apart
    refuse(acme, 1)
    [first] = await hub.audits("acme", "denials")
    assert first.event.data["count"] == 4
    assert first.event.data["last"]["operation"] == "publish"
    refuse(acme, 10)
    hub.clock.advance(9.5)
    refuse(acme, 10)
    assert len(await hub.audits("acme", "denials")) == 1
    assert await hub.audits("globex", "denials") == []
    hub.clock.advance(0.5)  # ten seconds after the window started: a new one
    refuse(acme, 3)
    assert len(await hub.audits("acme", "denials")) == 1
    refuse(acme, 1)
    assert len(await hub.audits("acme", "denials")) == 2


async def test_key_use_is_audited_at_most_once_a_minute_per_key(hub: Hub) -> None:
    guard = hub.guard()
    principal = guard.admit(Identity(tenant="acme", user="key:billing"))
    for _ in range(3):
        guard.key_used(principal, "billing")
    guard.key_used(principal, "crm")
    hub.clock.advance(59.5)
    guard.key_used(principal, "billing")
    uses = await hub.audits("acme", "key.use")
    assert [d.event.data["key"] for d in uses] == ["billing", "crm"]
    hub.clock.advance(0.5)
    guard.key_used(principal, "billing")
    assert len(await hub.audits("acme", "key.use")) == 3


async def test_dedupe_never_crosses_tenants(hub: Hub) -> None:
    """Another tenant's event with the same source and id neither swallows this one nor leaks
    its topic through the ack; inside a tenant a duplicate is still one."""
    guard = hub.guard()
    acme = guard.admit(EVERYTHING["acme"])
    await guard.publish(guard.admit(EVERYTHING["globex"]), "secret/plans", ev("same"))
    ack = await guard.publish(acme, "mine", ev("same"))
    assert (ack.topic, ack.duplicate) == ("acme/mine", False)
    again = await guard.publish(acme, "other", ev("same"))
    assert (again.topic, again.offset, again.duplicate) == ("acme/mine", 1, True)


# -- 8. bounded revocations and what a listing shows (issue 8, items 5 and 6) -------------------

DAY = 86400.0


async def test_a_revocation_s_until_is_held_to_the_horizon_and_a_user_s_raised_to_it(
    hub: Hub,
) -> None:
    guard = hub.guard(limits=Limits(revocation_horizon=DAY + 30))
    cap = hub.clock.now + DAY + 30
    admin, key = guard.admit(ADMIN), guard.admit(EVERYTHING["acme"])
    flood = msgspec.structs.replace(revocation("token", "t1", hub.clock), until=1e308)
    kept = await guard.revoke(key, flood)
    assert kept.until == cap and guard.revoked(who(token_id="t1")) == kept
    assert await hub.engine.revocations() == [kept]
    # A user revocation lasts the horizon whatever was asked, admin or not: a token of the
    # user issued just before it and living the longest lifetime stays refused to its end.
    user = await guard.revoke(admin, revocation("user", "u", hub.clock))
    assert user.until == cap
    old = who(user="u", issued=hub.clock.now, expires=hub.clock.now + DAY)
    hub.clock.advance(DAY + 29)
    with pytest.raises(Revoked):
        guard.admit(old)


async def test_revocations_by_a_tenant_s_callers_are_rate_limited_per_tenant(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(revoke_rate=1, revoke_burst=2))
    acme, globex = guard.admit(EVERYTHING["acme"]), guard.admit(EVERYTHING["globex"])
    for n in range(2):
        await guard.revoke(acme, revocation("token", f"t{n}", hub.clock))
    with pytest.raises(RateLimited) as limited:
        await guard.revoke(acme, revocation("token", "t2", hub.clock))
    assert limited.value.code == ErrorCode.RATE_LIMITED and limited.value.retriable
    assert 0 < limited.value.retry_after <= 1
    assert guard.revoked(who(token_id="t2")) is None  # refused: nothing stored
    assert len(await hub.engine.revocations()) == 2
    # Another tenant has its own bucket; an admin is never slowed down.
    await guard.revoke(globex, revocation("token", "t0", hub.clock, tenant="globex"))
    for n in range(5):
        await guard.revoke(guard.admit(ADMIN), revocation("token", f"a{n}", hub.clock))
    hub.clock.advance(1)
    await guard.revoke(acme, revocation("token", "t2", hub.clock))


async def test_a_tenant_s_callers_hold_at_most_max_revocations_live(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(max_revocations=3, revocation_horizon=3600))
    acme = guard.admit(EVERYTHING["acme"])
    for n in range(3):
        await guard.revoke(acme, revocation("token", f"t{n}", hub.clock))
    with pytest.raises(TooManyRevocations) as full:
        await guard.revoke(acme, revocation("token", "t3", hub.clock))
    assert full.value.code == ErrorCode.TOO_MANY_REVOCATIONS == 1123
    assert not full.value.retriable and "3" in str(full.value)
    assert len(await hub.engine.revocations()) == 3
    # Revoking a held key again adds nothing: taken. Another tenant has its own count.
    await guard.revoke(acme, revocation("token", "t1", hub.clock))
    globex = guard.admit(EVERYTHING["globex"])
    await guard.revoke(globex, revocation("token", "t3", hub.clock, tenant="globex"))
    # An admin is not held to it (a tenant filling its count must not stop the operator).
    await guard.revoke(guard.admit(ADMIN), revocation("user", "mallory", hub.clock))
    # Room comes back as revocations lapse.
    hub.clock.advance(3600)
    await guard.revoke(acme, revocation("token", "t4", hub.clock))


async def test_start_shortens_revocations_stored_past_the_horizon(hub: Hub) -> None:
    stored = msgspec.structs.replace(revocation("token", "t1", hub.clock), until=1e308)
    await hub.engine.revoke(stored)
    guard = hub.guard(limits=Limits(revocation_horizon=60))
    await guard.start()
    shortened = msgspec.structs.replace(stored, until=hub.clock.now + 60)
    assert guard.revoked(who(token_id="t1")) == shortened
    assert await hub.engine.revocations() == [shortened]
    hub.clock.advance(60)
    guard.admit(who(token_id="t1"))


async def test_visible_is_subscribe_or_history_and_never_a_refusal(hub: Hub) -> None:
    guard = hub.guard(limits=Limits(audit_denials=0))
    alice, nobody = guard.admit(ALICE), guard.admit(Identity(tenant="acme", user="n"))
    shown = {
        topic: guard.visible(alice, topic)
        for topic in ("docs/1", "docs/secret/1", "users/alice/x", "users/bob/x", "devices/d1/a")
    }
    assert shown == {
        "docs/1": True,  # subscribe and history
        "docs/secret/1": False,  # denied
        "users/alice/x": True,
        "users/bob/x": False,
        "devices/d1/a": True,  # subscribe only
    }
    assert not guard.visible(nobody, "docs/1")  # no roles: nothing
    assert guard.visible(guard.admit(ADMIN), "$audit/acme/revoke")
    # Patterns too: whether every topic under one is visible.
    assert guard.visible(alice, "users/alice/#") and not guard.visible(alice, "docs/#")
    # Hidden topics are filtered, not refused: no denial was counted (none audited).
    assert await hub.audits("acme", "denials") == []


async def test_a_revocation_made_on_another_node_applies_here_at_once(hub: Hub) -> None:
    """Two guards over one bus stand for two nodes sharing an engine (Redis): the `revoke`
    audit event carries the revocation to every node; the node that made it applies it once."""
    here, there = hub.guard(), hub.guard()
    await here.start()
    await there.start()
    heard_here: list[Revocation] = []
    heard_there: list[Revocation] = []
    here.on_revoke(heard_here.append)
    there.on_revoke(heard_there.append)
    there.admit(ALICE)
    made = await here.revoke(here.admit(ADMIN), revocation("user", "alice", hub.clock))
    await settle()
    assert heard_here == [made] and heard_there == [made]
    with pytest.raises(Revoked):
        there.admit(ALICE)
    # An audit event without a revocation in it (an admin may publish anything there) is
    # passed over, and the next real one still applies.
    await hub.bus.publish("$audit/acme/revoke", ev())
    await hub.bus.publish("$audit/acme/revoke", {**ev(), "data": {"kind": "nope"}})
    bob = Identity(tenant="acme", user="bob")
    there.admit(bob)
    await here.revoke(here.admit(ADMIN), revocation("user", "bob", hub.clock))
    await settle()
    with pytest.raises(Revoked):
        there.admit(bob)
    assert len(heard_there) == 2 and len(heard_here) == 2
    await here.close()
    await there.close()
