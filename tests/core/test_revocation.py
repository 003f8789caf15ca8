"""Revocation and RevocationSet: which identities a revocation names, until when, and merging."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.identity import Identity
from hybridbus.core.revocation import Revocation, RevocationKind, RevocationSet

NOW = 1_800_000_000.0


def revocation(
    kind: RevocationKind,
    value: str,
    *,
    tenant: str = "acme",
    until: float = NOW + 3600,
    at: float = NOW,
    reason: str = "",
) -> Revocation:
    return Revocation(kind=kind, tenant=tenant, value=value, until=until, at=at, reason=reason)


def alice(**fields: object) -> Identity:
    """Alice of acme, session s1, token t1, issued a minute before NOW."""
    values: dict[str, object] = {
        "tenant": "acme",
        "user": "alice",
        "session": "s1",
        "token_id": "t1",
        "issued": NOW - 60,
        "expires": NOW + 3600,
    }
    values.update(fields)
    return Identity(**values)  # type: ignore[arg-type]


def test_an_empty_set_revokes_nothing() -> None:
    revocations = RevocationSet()
    assert len(revocations) == 0
    assert revocations.revoked(alice(), NOW) is None


def test_a_token_revocation_names_one_jti() -> None:
    revocations = RevocationSet()
    revoked = revocation("token", "t1", reason="leaked")
    revocations.add(revoked)
    assert revocations.revoked(alice(), NOW) == revoked
    assert revocations.revoked(alice(token_id="t2"), NOW) is None
    assert revocations.revoked(alice(token_id=None), NOW) is None
    # A session or user of the same name is not a token.
    assert revocations.revoked(alice(token_id="x", session="t1", user="t1"), NOW) is None


def test_a_session_revocation_names_every_token_of_the_sid() -> None:
    revocations = RevocationSet([revocation("session", "s1")])
    assert revocations.revoked(alice(token_id="t1"), NOW) is not None
    assert revocations.revoked(alice(token_id="t9", issued=NOW + 10), NOW + 20) is not None
    assert revocations.revoked(alice(session="s2"), NOW) is None
    assert revocations.revoked(alice(session=None), NOW) is None


def test_a_user_revocation_names_tokens_issued_at_or_before_it() -> None:
    revocations = RevocationSet([revocation("user", "alice", at=NOW)])
    assert revocations.revoked(alice(issued=NOW - 60), NOW + 1) is not None
    assert revocations.revoked(alice(issued=NOW), NOW + 1) is not None  # at: still revoked
    # Signing in again after the revocation gives a token that works.
    assert revocations.revoked(alice(issued=NOW + 0.001), NOW + 1) is None
    assert revocations.revoked(alice(issued=NOW + 30, token_id="t2"), NOW + 31) is None
    # A token that does not say when it was issued cannot prove it is newer.
    assert revocations.revoked(alice(issued=None), NOW + 1) is not None
    assert revocations.revoked(alice(user="bob"), NOW + 1) is None
    assert revocations.revoked(alice(user=None), NOW + 1) is None


def test_other_tenants_are_not_affected() -> None:
    revocations = RevocationSet(
        [revocation("token", "t1"), revocation("session", "s1"), revocation("user", "alice")]
    )
    assert revocations.revoked(alice(), NOW) is not None
    assert revocations.revoked(alice(tenant="globex"), NOW) is None


def test_a_revocation_applies_only_while_until_is_in_the_future() -> None:
    revocations = RevocationSet(
        [
            revocation("token", "t1", until=NOW + 10),
            revocation("session", "old", until=NOW - 1),
        ]
    )
    assert revocations.revoked(alice(), NOW + 9.9) is not None
    assert revocations.revoked(alice(), NOW + 10) is None  # until is not "after"
    assert revocations.revoked(alice(token_id="x", session="old"), NOW) is None
    assert len(revocations) == 2  # expired ones are kept until pruned


def test_the_first_applying_kind_is_returned_token_session_user() -> None:
    token = revocation("token", "t1")
    session = revocation("session", "s1")
    user = revocation("user", "alice")
    revocations = RevocationSet([user, session, token])
    assert revocations.revoked(alice(), NOW) == token
    assert revocations.revoked(alice(token_id="t2"), NOW) == session
    assert revocations.revoked(alice(token_id="t2", session="s2"), NOW) == user
    # An expired token revocation does not hide a live session revocation.
    expired = RevocationSet([revocation("token", "t1", until=NOW), session])
    assert expired.revoked(alice(), NOW) == session


def test_prune_forgets_the_expired_ones() -> None:
    revocations = RevocationSet(
        [
            revocation("token", "a", until=NOW + 1),
            revocation("token", "b", until=NOW + 2),
            revocation("session", "c", until=NOW + 3),
        ]
    )
    assert revocations.prune(NOW) == 0
    assert revocations.prune(NOW + 2) == 2  # until <= now
    assert len(revocations) == 1
    assert revocations.get("token", "acme", "a") is None
    assert revocations.get("session", "acme", "c") is not None
    assert revocations.prune(NOW + 2) == 0
    assert revocations.prune(NOW + 100) == 1
    assert len(revocations) == 0


def test_adding_a_key_again_keeps_the_later_until_and_at() -> None:
    revocations = RevocationSet()
    first = revocation("user", "alice", until=NOW + 100, at=NOW, reason="first")
    assert revocations.add(first) == first
    # Revoked again later, for less long: the later at, the longer until.
    kept = revocations.add(
        revocation("user", "alice", until=NOW + 50, at=NOW + 20, reason="second")
    )
    assert (kept.until, kept.at, kept.reason) == (NOW + 100, NOW + 20, "second")
    # An older revocation arriving late widens until but keeps the later at and its reason.
    kept = revocations.add(revocation("user", "alice", until=NOW + 200, at=NOW + 5, reason="old"))
    assert (kept.until, kept.at, kept.reason) == (NOW + 200, NOW + 20, "second")
    assert len(revocations) == 1
    assert list(revocations) == [kept]
    # Tokens issued before the later at are revoked, until the later until.
    assert revocations.revoked(alice(issued=NOW + 10), NOW + 150) == kept
    assert revocations.revoked(alice(issued=NOW + 21), NOW + 150) is None


def test_a_merged_until_is_pruned_at_the_later_time_only() -> None:
    revocations = RevocationSet([revocation("token", "t1", until=NOW + 10)])
    revocations.add(revocation("token", "t1", until=NOW + 20))
    assert revocations.prune(NOW + 15) == 0  # the first until's heap entry is stale
    assert revocations.revoked(alice(), NOW + 15) is not None
    assert revocations.prune(NOW + 20) == 1
    assert revocations.revoked(alice(), NOW + 15) is None
    # A key pruned then revoked anew is tracked again.
    revocations.add(revocation("token", "t1", until=NOW + 40))
    assert revocations.prune(NOW + 39) == 0
    assert revocations.prune(NOW + 40) == 1


def test_extend_clear_and_keys() -> None:
    revocations = RevocationSet()
    revocations.extend(revocation("token", f"t{i}") for i in range(100))
    revocations.extend([revocation("token", "t5", at=NOW + 1)])
    assert len(revocations) == 100
    assert revocation("token", "t5").key == ("token", "acme", "t5")
    revocations.clear()
    assert len(revocations) == 0
    assert revocations.prune(NOW + 1e9) == 0


def test_merge_refuses_another_key_and_bad_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        revocation("token", "a").merge(revocation("token", "b"))
    with pytest.raises(ValueError, match="kind"):
        Revocation(kind="device", tenant="acme", value="d", until=NOW, at=NOW)  # type: ignore[arg-type]


def test_it_round_trips_through_msgpack_and_json() -> None:
    original = revocation("session", "s1", reason="logout")
    for encode, decode in [
        (msgspec.msgpack.encode, msgspec.msgpack.Decoder(Revocation).decode),
        (msgspec.json.encode, msgspec.json.Decoder(Revocation).decode),
    ]:
        assert decode(encode(original)) == original
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"kind":"device","tenant":"a","value":"v","until":1,"at":1}', type=Revocation
        )


_kinds = st.sampled_from(["token", "session", "user"])
_values = st.sampled_from(["a", "b", "c"])
_times = st.integers(min_value=0, max_value=20).map(float)


def naive_revoked(added: list[Revocation], identity: Identity, now: float) -> bool:
    """Whether any key naming `identity` is live, by scanning every add (merging by hand)."""
    for kind, value in [
        ("token", identity.token_id),
        ("session", identity.session),
        ("user", identity.user),
    ]:
        same = [r for r in added if r.key == (kind, identity.tenant, value)]
        if not same or max(r.until for r in same) <= now:
            continue
        at = max(r.at for r in same)
        if kind != "user" or identity.issued is None or identity.issued <= at:
            return True
    return False


@given(
    st.lists(
        st.tuples(_kinds, st.sampled_from(["acme", "globex"]), _values, _times, _times),
        max_size=40,
    ),
    st.lists(_times, min_size=1, max_size=10),
    st.one_of(st.none(), _times),
)
def test_matches_a_naive_model(
    adds: list[tuple[RevocationKind, str, str, float, float]],
    checks: list[float],
    issued: float | None,
) -> None:
    revocations = RevocationSet()
    added = [
        revocation(kind, value, tenant=tenant, until=until, at=at)
        for kind, tenant, value, until, at in adds
    ]
    revocations.extend(added)
    for now in sorted(checks):
        for tenant in ("acme", "globex"):
            for value in ("a", "b", "c"):
                identity = Identity(
                    tenant=tenant, user=value, session=value, token_id=value, issued=issued
                )
                expected = naive_revoked(added, identity, now)
                assert (revocations.revoked(identity, now) is not None) == expected
        revocations.prune(now)
        live = {r.key for r in added if r.until > now}
        assert {r.key for r in revocations} == live
        assert len(revocations) == len(live)


# -- bounds (issue 8, item 6) ----------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_until_and_at_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        revocation("token", "t1", until=bad)
    with pytest.raises(ValueError, match="finite"):
        revocation("token", "t1", at=bad)
    # Converted from builtins too (msgspec reports the ValueError as a validation error).
    fields = {"kind": "token", "tenant": "acme", "value": "t1", "until": bad, "at": NOW}
    with pytest.raises(msgspec.ValidationError, match="finite"):
        msgspec.convert(fields, Revocation)


def test_bounded_caps_until_at_the_horizon_and_raises_a_user_s_to_it() -> None:
    horizon = 86400.0 + 30
    cap = NOW + horizon
    # The attack of the issue: until = 1e308 is lowered to the horizon.
    assert revocation("token", "t1", until=1e308).bounded(NOW, horizon).until == cap
    assert revocation("session", "s1", until=cap + 1).bounded(NOW, horizon).until == cap
    # A shorter one is kept as asked, everything else too.
    short = revocation("token", "t1", until=NOW + 60, reason="r")
    assert short.bounded(NOW, horizon) == short
    # A user revocation must outlive every token issued up to it: exactly the horizon.
    for until in (NOW + 1, NOW + 60, 1e308):
        kept = revocation("user", "alice", until=until).bounded(NOW, horizon)
        assert kept.until == cap and kept.at == NOW
    with pytest.raises(ValueError, match="horizon"):
        short.bounded(NOW, float("inf"))


def test_the_set_counts_live_revocations_per_tenant() -> None:
    revocations = RevocationSet()
    assert revocations.count("acme") == 0
    revocations.add(revocation("token", "t1", until=NOW + 10))
    revocations.add(revocation("token", "t1", until=NOW + 20))  # the same key: merged
    revocations.add(revocation("user", "t1"))
    revocations.add(revocation("token", "t1", tenant="globex"))
    assert (revocations.count("acme"), revocations.count("globex")) == (2, 1)
    assert revocations.prune(NOW + 20) == 1
    assert (revocations.count("acme"), revocations.count("globex")) == (1, 1)
    revocations.clear()
    assert revocations.count("acme") == revocations.count("globex") == 0


def test_shorten_lowers_the_untils_past_a_bound_and_prunes_by_the_new_one() -> None:
    far = revocation("token", "t1", until=1e308, reason="flood")
    near = revocation("session", "s1", until=NOW + 10)
    revocations = RevocationSet([far, near])
    assert revocations.shorten(NOW + 100) == [msgspec.structs.replace(far, until=NOW + 100)]
    assert revocations.get("token", "acme", "t1") == msgspec.structs.replace(far, until=NOW + 100)
    assert revocations.get("session", "acme", "s1") == near
    assert revocations.shorten(NOW + 100) == []
    # The stale heap entry of 1e308 does not keep it: it goes at its new until.
    assert revocations.prune(NOW + 100) == 2
    assert len(revocations) == 0 and revocations.count("acme") == 0
