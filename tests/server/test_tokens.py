"""JWT connection tokens: every forgery refused with its exact error, claims, minting.

Tokens are real: signed with PyJWT and `cryptography` keys, or crafted byte by
byte where an attack needs a token PyJWT would not make (`alg: none`, an HMAC
made with an RSA public key). No mocks: clocks are injected. The keys themselves
(`KeySpec`, `KeyRing`, JWKS files) are tested in test_keys.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.server.jwt_support import (
    EC_KEY,
    ED_KEY,
    NOW,
    OTHER_SECRET,
    RSA_KEY,
    RSA_KEY_2,
    SECRET,
    claims,
    hs256,
    private_pem,
    public_pem,
    refused,
    verifier,
)

from hybridbus.cli import main as cli_main
from hybridbus.core.identity import Grant, Identity
from hybridbus.errors import (
    ErrorCode,
    TokenExpired,
    TokenInvalid,
    TokenLifetimeExceeded,
    Unauthorized,
    UnknownKey,
)
from hybridbus.server.auth import Authenticator
from hybridbus.server.keys import KeyRing, KeySpec
from hybridbus.server.tokens import (
    MAX_TOKEN_LENGTH,
    JwtAuthenticator,
    TokenVerifier,
    mint,
    parse_duration,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def craft(header: object, claims: object, signature: bytes = b"") -> str:
    """A token assembled by hand, so that it can be anything PyJWT would refuse to make."""
    return f"{b64json(header)}.{b64json(claims)}.{b64(signature)}"


def hmac_token(header: object, claims: object, secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return (
        f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    )


# -- accepted -------------------------------------------------------------------------

ASYMMETRIC = [("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)]


def test_an_hs256_token_verifies() -> None:
    identity = verifier().verify(hs256(claims()))
    assert (identity.user, identity.tenant) == ("alice", "acme")


@pytest.mark.parametrize(("alg", "key"), ASYMMETRIC)
def test_asymmetric_tokens_verify_with_the_public_key(alg: str, key: Any) -> None:
    spec = KeySpec(kid="k", alg=alg, public_key=public_pem(key))  # type: ignore[arg-type]
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "k"})
    assert verifier(spec).verify(token).user == "alice"


def test_claims_map_into_the_identity_field_by_field() -> None:
    token = hs256(
        claims(
            roles=["editor", "viewer"],
            device="laptop",
            sid="session-1",
            jti="token-1",
            appid="web",
            nbf=NOW - 10,
            topics={"chat/#": ["subscribe", "publish"], "docs/+": ["history"]},
        )
    )
    assert verifier().verify(token) == Identity(
        tenant="acme",
        user="alice",
        device="laptop",
        session="session-1",
        token_id="token-1",
        roles=("editor", "viewer"),
        grants=(
            Grant("chat/#", frozenset({"subscribe", "publish"})),
            Grant("docs/+", frozenset({"history"})),
        ),
        app="web",
        admin=False,
        anonymous=False,
        issued=float(NOW),
        expires=float(NOW + 3600),
    )


def test_a_list_of_topics_grants_the_default_operations_and_one_role_may_be_a_string() -> None:
    identity = verifier().verify(hs256(claims(topics=["chat/#", "me"], roles="editor", admin=True)))
    assert identity.grants == (Grant("chat/#"), Grant("me"))
    assert identity.roles == ("editor",)
    assert identity.admin is True


def test_optional_claims_may_be_absent() -> None:
    identity = verifier().verify(hs256(claims(iat=None)))
    assert identity == Identity(tenant="acme", user="alice", expires=float(NOW + 3600))


# -- refused: signatures and algorithms --------------------------------------------------


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    error = refused(verifier(), hs256(claims(), secret=OTHER_SECRET))
    assert type(error) is TokenInvalid
    assert "signature" in str(error)


def test_a_tampered_payload_is_invalid() -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = f"{header}.{b64json(claims(tenantid='globex', admin=True))}.{signature}"
    assert type(refused(verifier(), forged)) is TokenInvalid


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", [None, "k"])
def test_alg_none_is_always_invalid(alg: str, kid: str | None) -> None:
    spec = KeySpec(kid=kid, alg="HS256", secret=SECRET)
    header = {"alg": alg, "typ": "JWT"} | ({"kid": kid} if kid else {})
    for signature in (b"", b"x"):
        error = refused(verifier(spec), craft(header, claims(admin=True), signature))
        assert type(error) is TokenInvalid
        assert "alg none" in str(error)


def test_an_unknown_kid_is_an_unknown_key() -> None:
    spec = KeySpec(kid="current", alg="HS256", secret=SECRET)
    error = refused(verifier(spec), hs256(claims(), kid="retired"))
    assert type(error) is UnknownKey
    assert "retired" in str(error)


def test_a_token_without_a_kid_needs_the_one_key_without_a_kid() -> None:
    with_kid = KeySpec(kid="a", alg="HS256", secret=SECRET)
    assert type(refused(verifier(with_kid), hs256(claims()))) is UnknownKey
    without = KeySpec(alg="HS256", secret=OTHER_SECRET)
    assert verifier(with_kid, without).verify(hs256(claims(), secret=OTHER_SECRET)).user == "alice"


@pytest.mark.parametrize("kid", [None, "rsa"])
def test_hs256_signed_with_the_rsa_public_key_is_refused(kid: str | None) -> None:
    # The classic key confusion: the verifier would use the public PEM as an HMAC secret.
    spec = KeySpec(kid=kid, alg="RS256", public_key=public_pem(RSA_KEY))
    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    forged = hmac_token(header, claims(admin=True), public_pem(RSA_KEY).encode())
    error = refused(verifier(spec), forged)
    assert type(error) is TokenInvalid
    assert "algorithm 'HS256' is not the key's (RS256)" in str(error)


def test_an_rs256_token_against_an_hs256_key_is_refused() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert type(refused(verifier(), token)) is TokenInvalid


@pytest.mark.parametrize(("alg", "key"), ASYMMETRIC)
def test_a_token_signed_with_another_private_key_is_refused(alg: str, key: Any) -> None:
    others = {"RS256": RSA_KEY_2, "ES256": ec.generate_private_key(ec.SECP256R1())}
    other = others.get(alg, ed25519.Ed25519PrivateKey.generate())
    spec = KeySpec(alg=alg, public_key=public_pem(key))  # type: ignore[arg-type]
    assert type(refused(verifier(spec), jwt.encode(claims(), other, algorithm=alg))) is TokenInvalid


def test_an_unencoded_payload_header_is_refused() -> None:
    token = hmac_token({"alg": "HS256", "b64": False, "crit": ["b64"]}, claims(), SECRET.encode())
    assert type(refused(verifier(), token)) is TokenInvalid


# -- refused: times, issuer, audience ----------------------------------------------------


def test_an_expired_token_is_expired_by_the_injected_clock() -> None:
    token = hs256(claims(exp=NOW + 60))
    assert verifier(now=NOW + 59).verify(token).expires == NOW + 60
    for now in (NOW + 60, NOW + 61, NOW + 10**6):
        error = refused(verifier(now=now), token)
        assert type(error) is TokenExpired
        assert "exp" in str(error)


def test_exp_is_required() -> None:
    error = refused(verifier(), hs256(claims(exp=None)))
    assert type(error) is TokenInvalid
    assert "exp" in str(error)


def test_a_token_not_yet_valid_is_invalid_not_expired() -> None:
    error = refused(verifier(), hs256(claims(nbf=NOW + 30)))
    assert type(error) is TokenInvalid
    assert "nbf" in str(error)
    assert verifier(now=NOW + 30).verify(hs256(claims(nbf=NOW + 30))).user == "alice"


def test_iat_is_only_type_checked_an_issuer_clock_may_run_ahead() -> None:
    assert verifier().verify(hs256(claims(iat=NOW + 30))).issued == NOW + 30


def test_leeway_tolerates_skew_both_ways() -> None:
    late = hs256(claims(exp=NOW - 5))
    early = hs256(claims(nbf=NOW + 5, iat=NOW + 5))
    tolerant = verifier(leeway=10)
    assert tolerant.verify(late).user == "alice"
    assert tolerant.verify(early).user == "alice"
    assert type(refused(verifier(leeway=10, now=NOW + 6), late)) is TokenExpired
    assert type(refused(verifier(leeway=4), early)) is TokenInvalid
    with pytest.raises(ValueError, match="leeway"):
        verifier(leeway=-1)


def test_the_issuer_is_checked_when_configured() -> None:
    checked = verifier(issuer="https://id.example")
    assert checked.verify(hs256(claims(iss="https://id.example"))).user == "alice"
    for token in (hs256(claims(iss="https://evil.example")), hs256(claims())):
        error = refused(checked, token)
        assert type(error) is TokenInvalid
        assert "iss" in str(error)
    assert verifier().verify(hs256(claims(iss="anyone"))).user == "alice"  # not configured


def test_the_audience_is_checked_when_configured() -> None:
    checked = verifier(audience="hybridbus")
    assert checked.verify(hs256(claims(aud="hybridbus"))).user == "alice"
    assert checked.verify(hs256(claims(aud=["other", "hybridbus"]))).user == "alice"
    for aud in ("other", ["other"], None, 5, {"hybridbus": 1}):
        error = refused(checked, hs256(claims(aud=aud)))
        assert type(error) is TokenInvalid
        assert "aud" in str(error)


# -- refused: claims ---------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["sub", "tenantid"])
def test_sub_and_tenantid_are_required(missing: str) -> None:
    error = refused(verifier(), hs256(claims(**{missing: None})))
    assert type(error) is TokenInvalid
    assert f"claim {missing} is required" in str(error)


@pytest.mark.parametrize("tenant", ["a/b", "$sys", "+", "#", "a+", "", "two words", "x\n"])
def test_a_bad_tenant_is_invalid(tenant: str) -> None:
    error = refused(verifier(), hs256(claims(tenantid=tenant)))
    assert type(error) is TokenInvalid
    assert "tenantid" in str(error)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": 42},
        {"sub": ""},
        {"tenantid": ["acme"]},
        {"roles": 5},
        {"roles": ["editor", 1]},
        {"roles": {"editor": True}},
        {"admin": "yes"},
        {"admin": 1},
        {"exp": "tomorrow"},
        {"exp": True},
        {"exp": 10**400},
        {"iat": [NOW]},
        {"nbf": "now"},
        {"device": 3},
        {"sid": ""},
        {"jti": ["a"]},
        {"appid": False},
    ],
)
def test_claims_of_the_wrong_type_are_invalid(overrides: dict[str, Any]) -> None:
    assert type(refused(verifier(), hs256(claims(**overrides)))) is TokenInvalid


@pytest.mark.parametrize(
    "topics",
    [
        "chat/#",
        5,
        ["chat/#/more"],
        ["a+"],
        [""],
        [1],
        [["chat/#"]],
        {"chat/#": ["fly"]},
        {"chat/#": []},
        {"chat/#": "publish"},
        {"chat/#": None},
        {"chat/#": ["publish", 1]},
        {"bad/#/x": ["publish"]},
    ],
)
def test_bad_topics_grants_are_invalid(topics: object) -> None:
    error = refused(verifier(), hs256(claims(topics=topics)))
    assert type(error) is TokenInvalid
    assert "topics" in str(error)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "é.é.é",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        f"{b64(b'[1]')}.{b64json(claims())}.",
        f"{b64(b'not json')}.{b64json(claims())}.",
        f"{b64json({'alg': 'HS256', 'kid': 7})}.{b64json(claims())}.",
        f"{b64json({'typ': 'JWT'})}.{b64json(claims())}.",
        "A" * 10_240,
        ".".join(["A" * 4000] * 3),
        "A" * (MAX_TOKEN_LENGTH + 1),
    ],
)
def test_garbage_is_invalid(garbage: str) -> None:
    assert type(refused(verifier(), garbage)) is TokenInvalid


def test_a_validly_signed_payload_that_is_not_an_object_is_invalid() -> None:
    for payload in ([1, 2], "alice", None):
        token = hmac_token({"alg": "HS256"}, payload, SECRET.encode())
        assert type(refused(verifier(), token)) is TokenInvalid


def test_messages_never_quote_the_key() -> None:
    rsa_spec = KeySpec(alg="RS256", public_key=public_pem(RSA_KEY))
    forged = hmac_token({"alg": "HS256"}, claims(), public_pem(RSA_KEY).encode())
    with pytest.raises(TokenInvalid) as info:
        verifier(rsa_spec).verify(forged)
    assert "BEGIN" not in str(info.value)
    assert SECRET not in repr(KeySpec(alg="HS256", secret=SECRET))


# -- the authenticator -------------------------------------------------------------------


async def test_the_authenticator_verifies_tokens_and_lets_the_token_device_win() -> None:
    auth = JwtAuthenticator(verifier())
    assert isinstance(auth, Authenticator)
    with_device = hs256(claims(device="phone"))
    assert (await auth.authenticate(with_device, None)).device == "phone"
    assert (await auth.authenticate(with_device, "phone")).device == "phone"
    assert (await auth.authenticate(hs256(claims()), "laptop")).device == "laptop"
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(with_device, "laptop")
    assert type(info.value) is Unauthorized
    assert "device" in str(info.value)
    with pytest.raises(TokenExpired):
        await JwtAuthenticator(verifier(now=NOW + 7200)).authenticate(with_device, None)


async def test_without_a_token_anonymous_only_if_a_tenant_is_set() -> None:
    with pytest.raises(Unauthorized) as info:
        await JwtAuthenticator(verifier()).authenticate(None, "laptop")
    assert type(info.value) is Unauthorized
    assert "token is required" in str(info.value)
    anonymous = await JwtAuthenticator(verifier(), anonymous_tenant="public").authenticate(
        None, "laptop"
    )
    assert anonymous == Identity(tenant="public", device="laptop", anonymous=True)
    with pytest.raises(ValueError, match="tenant"):
        JwtAuthenticator(verifier(), anonymous_tenant="$sys")


# -- minting -----------------------------------------------------------------------------

SPECS = [
    KeySpec(alg="HS256", secret=SECRET),
    KeySpec(kid="rsa", alg="RS256", private_key=private_pem(RSA_KEY)),
    KeySpec(kid="ec", alg="ES256", private_key=private_pem(EC_KEY), public_key=public_pem(EC_KEY)),
    KeySpec(kid="ed", alg="EdDSA", private_key=private_pem(ED_KEY)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.alg)
def test_minted_tokens_verify_with_every_algorithm(spec: KeySpec) -> None:
    token = mint(
        spec,
        sub="alice",
        tenant="acme",
        roles=["editor"],
        ttl=90,
        device="laptop",
        sid="s1",
        app="web",
        topics={"chat/#": ["publish", "subscribe"]},
        issuer="dev",
        audience=["hybridbus", "other"],
        jti="t1",
        now=NOW + 0.5,
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == spec.alg
    assert header.get("kid") == spec.kid
    verify = TokenVerifier(KeyRing(SPECS), issuer="dev", audience="hybridbus", clock=lambda: NOW)
    assert verify.verify(token) == Identity(
        tenant="acme",
        user="alice",
        device="laptop",
        session="s1",
        token_id="t1",
        roles=("editor",),
        grants=(Grant("chat/#", frozenset({"publish", "subscribe"})),),
        app="web",
        issued=float(NOW),
        expires=float(NOW + 90),
    )


def test_mint_defaults_a_random_jti_one_hour_and_admin_only_when_asked() -> None:
    spec = SPECS[0]
    first = verifier().verify(mint(spec, sub="op", tenant="ops", now=NOW, admin=True))
    second = verifier().verify(mint(spec, sub="op", tenant="ops", now=NOW, roles="editor"))
    assert first.token_id and second.token_id and first.token_id != second.token_id
    assert first.expires == NOW + 3600 and first.admin is True and first.roles == ()
    assert second.admin is False and second.roles == ("editor",)
    payload = jwt.decode(mint(spec, sub="a", tenant="b"), SECRET, algorithms=["HS256"])
    assert set(payload) == {"sub", "tenantid", "iat", "exp", "jti"}


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (KeySpec(alg="RS256", public_key=public_pem(RSA_KEY)), {}, "cannot sign"),
        (SPECS[0], {"tenant": "a/b"}, "tenantid"),
        (SPECS[0], {"sub": ""}, "sub"),
        (SPECS[0], {"topics": ["a/#/b"]}, "topics"),
        (SPECS[0], {"topics": {"a/#": ["fly"]}}, "topics"),
        (SPECS[0], {"ttl": 0}, "ttl"),
        (SPECS[0], {"ttl": float("inf")}, "ttl"),
    ],
)
def test_mint_refuses_what_verify_would(
    spec: KeySpec, options: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"sub": "alice", "tenant": "acme"} | options
    with pytest.raises(ValueError, match=message):
        mint(spec, **arguments)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("45s", 45),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("1.5h", 5400),
        (" 7s ", 7),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "1x", "-5", "0", "0s", "1h30m", "1 h", "٣", "inf", "nan"]
)
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# -- properties --------------------------------------------------------------------------

PROPERTY_VERIFIER = verifier(KeySpec(alg="HS256", secret=SECRET))


def only_unauthorized(token: str) -> None:
    try:
        PROPERTY_VERIFIER.verify(token)
    except Unauthorized:
        pass


@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))))
def test_arbitrary_text_is_refused_with_an_unauthorized(token: str) -> None:
    only_unauthorized(token)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_arbitrary_base64_parts_are_refused_with_an_unauthorized(parts: list[bytes]) -> None:
    only_unauthorized(".".join(b64(part) for part in parts))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(
    [
        "sub",
        "tenantid",
        "exp",
        "nbf",
        "iat",
        "roles",
        "topics",
        "admin",
        "device",
        "sid",
        "jti",
        "appid",
        "aud",
        "iss",
    ]
)


@settings(max_examples=300)
@given(
    st.dictionaries(st.one_of(CLAIM_NAMES, st.text(max_size=8)), JSON, max_size=6),
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), JSON, max_size=3),
)
def test_signed_tokens_with_arbitrary_claims_and_headers_never_raise_anything_else(
    overrides: dict[str, Any], header: dict[str, Any]
) -> None:
    payload = claims() | overrides
    only_unauthorized(hmac_token({"alg": "HS256"} | header, payload, SECRET.encode()))
    only_unauthorized(hmac_token({"alg": "HS256"}, payload, SECRET.encode()))


# -- the longest lifetime (issue 8, item 6) ----------------------------------------------

DAY = 86400


def test_a_token_living_longer_than_max_lifetime_is_refused_with_its_own_code() -> None:
    limited = verifier(max_lifetime=DAY)
    assert limited.verify(hs256(claims(exp=NOW + DAY))).expires == NOW + DAY  # exactly: taken
    error = refused(limited, hs256(claims(exp=NOW + DAY + 1)))
    assert type(error) is TokenLifetimeExceeded and error.code == ErrorCode.TOKEN_LIFETIME_EXCEEDED
    assert isinstance(error, TokenInvalid)  # a kind of invalid token: close 4501, HTTP 401
    assert "max_token_lifetime" in str(error)
    # The year-long token of the issue, seen a month into its life, too.
    year = hs256(claims(iat=NOW - 30 * DAY, exp=NOW + 335 * DAY))
    assert type(refused(limited, year)) is TokenLifetimeExceeded
    # Without a maximum, any lifetime.
    assert verifier().verify(year).user == "alice"


def test_with_a_max_lifetime_iat_is_required() -> None:
    error = refused(verifier(max_lifetime=DAY), hs256(claims(iat=None)))
    assert type(error) is TokenInvalid and "iat" in str(error)


def test_an_iat_in_the_future_cannot_stretch_a_token_past_the_maximum_from_now() -> None:
    # exp - iat is one hour, but the token would be good for a year from now.
    stretched = hs256(claims(iat=NOW + 365 * DAY, exp=NOW + 365 * DAY + 3600))
    assert type(refused(verifier(max_lifetime=DAY), stretched)) is TokenLifetimeExceeded
    # An issuer clock a little ahead is what the leeway is for.
    ahead = hs256(claims(iat=NOW + 5, exp=NOW + 5 + DAY))
    assert type(refused(verifier(max_lifetime=DAY), ahead)) is TokenLifetimeExceeded
    assert verifier(max_lifetime=DAY, leeway=10).verify(ahead).issued == NOW + 5


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_max_lifetime_must_be_a_positive_finite_number(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lifetime"):
        verifier(max_lifetime=bad)


def test_mint_refuses_a_ttl_over_the_maximum_it_is_given() -> None:
    spec = SPECS[0]
    token = mint(spec, sub="a", tenant="acme", ttl=DAY, now=NOW, max_lifetime=DAY)
    assert verifier(max_lifetime=DAY).verify(token).expires == NOW + DAY
    with pytest.raises(ValueError, match="max_token_lifetime"):
        mint(spec, sub="a", tenant="acme", ttl=DAY + 1, now=NOW, max_lifetime=DAY)


def test_the_token_command_mints_only_what_the_server_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hybridbus token --ttl` over the server's max_token_lifetime exits 2 (default 24 h)."""
    monkeypatch.setenv("HYBRIDBUS_JWT_SECRET", SECRET)
    argv = ["token", "--sub", "alice", "--tenant", "acme", "--ttl"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "2d"])
    assert exited.value.code == 2
    assert "max_token_lifetime" in capsys.readouterr().err
    assert cli_main([*argv, "24h"]) == 0
    token = capsys.readouterr().out.strip()
    taken = TokenVerifier(KeyRing([KeySpec(alg="HS256", secret=SECRET)]), max_lifetime=DAY)
    assert taken.verify(token).user == "alice"
    # A server configured for longer tokens: the command follows its --config.
    config = tmp_path / "hybridbus.toml"
    config.write_text(f"max_token_lifetime = {7 * DAY}\n")
    assert cli_main([*argv, "2d", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count(".") == 2
