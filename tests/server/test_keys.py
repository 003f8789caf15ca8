"""Keys and JWKS files: every misconfigured key refused by name, rotation without a restart.

Keys are real `cryptography` keys; tokens are signed with PyJWT and checked by a
`TokenVerifier`, so each key is seen doing its job. No mocks: clocks are injected.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
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

from hybridbus.errors import TokenInvalid, UnknownKey
from hybridbus.server.keys import KeyRing, KeySpec
from hybridbus.server.tokens import TokenVerifier, mint

# -- keys --------------------------------------------------------------------------------


def test_two_keys_with_different_kids_are_both_valid() -> None:
    old = KeySpec(kid="2024", alg="HS256", secret=SECRET)
    new = KeySpec(kid="2025", alg="ES256", public_key=public_pem(EC_KEY))
    both = verifier(old, new)
    assert both.verify(hs256(claims(sub="a"), kid="2024")).user == "a"
    token = jwt.encode(claims(sub="b"), EC_KEY, algorithm="ES256", headers={"kid": "2025"})
    assert both.verify(token).user == "b"
    # Each token is checked with its own kid's key and algorithm only.
    wrong = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "2024"})
    assert type(refused(both, wrong)) is TokenInvalid
    assert both.ring.kids == {"2024", "2025"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alg": "HS256"}, "needs a secret"),
        ({"alg": "HS256", "secret": "short"}, "at least 32 bytes"),
        ({"alg": "HS256", "secret": public_pem(RSA_KEY)}, "PEM"),
        ({"alg": "HS256", "secret": SECRET, "public_key": public_pem(RSA_KEY)}, "secret"),
        ({"alg": "RS256"}, "needs a public_key"),
        ({"alg": "RS256", "secret": SECRET}, "not a secret"),
        ({"alg": "RS256", "public_key": "not a pem"}, "not a PEM public key"),
        ({"alg": "RS256", "public_key": public_pem(EC_KEY)}, "needs an RSA key"),
        (
            {
                "alg": "RS256",
                "public_key": public_pem(rsa.generate_private_key(65537, key_size=1024)),
            },
            "2048 bits",
        ),
        (
            {"alg": "ES256", "public_key": public_pem(ec.generate_private_key(ec.SECP384R1()))},
            "P-256",
        ),
        ({"alg": "EdDSA", "public_key": public_pem(ed448.Ed448PrivateKey.generate())}, "Ed25519"),
        ({"alg": "EdDSA", "private_key": "-----BEGIN PRIVATE KEY-----"}, "private_key is not"),
        (
            {
                "alg": "RS256",
                "public_key": public_pem(RSA_KEY),
                "private_key": private_pem(RSA_KEY_2),
            },
            "not the public half",
        ),
        ({"kid": "", "alg": "HS256", "secret": SECRET}, "kid"),
    ],
)
def test_misconfigured_keys_are_value_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        KeySpec(**fields)
    assert SECRET not in str(info.value) and "BEGIN" not in str(info.value)
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(fields, KeySpec)  # how the configuration builds them


def test_a_private_key_alone_gives_the_public_key() -> None:
    spec = KeySpec(kid="k", alg="EdDSA", private_key=private_pem(ED_KEY))
    assert verifier(spec).verify(mint(spec, sub="alice", tenant="acme", now=NOW)).user == "alice"


def test_unknown_fields_and_algorithms_are_refused_by_convert() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"alg": "HS256", "secret": SECRET, "secrte": "x"}, KeySpec)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"alg": "HS512", "secret": SECRET}, KeySpec)


def test_ambiguous_or_empty_rings_are_value_errors() -> None:
    a = KeySpec(alg="HS256", secret=SECRET)
    b = KeySpec(alg="HS256", secret=OTHER_SECRET)
    with pytest.raises(ValueError, match="more than one key has no kid"):
        KeyRing([a, b])
    with pytest.raises(ValueError, match="two keys have the kid 'k'"):
        KeyRing(
            [
                KeySpec(kid="k", alg="HS256", secret=SECRET),
                KeySpec(kid="k", alg="HS256", secret=OTHER_SECRET),
            ]
        )
    with pytest.raises(ValueError, match="no verification keys"):
        KeyRing([])


# -- JWKS files and rotation -------------------------------------------------------------


def jwk(kid: str, key: Any, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of `key` (an HS256 secret if `key` is a str)."""
    if isinstance(key, str):
        entry = HMACAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        entry = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        entry = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    entry["kid"] = kid
    if alg is not None:
        entry["alg"] = alg
    return entry


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, keys: list[dict[str, Any]] | str, bump: int = 0) -> None:
    path.write_text(keys if isinstance(keys, str) else json.dumps({"keys": keys}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def signed(kid: str, key: Any, alg: str, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def test_the_jwks_file_rotates_keys_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write(path, [jwk("A", RSA_KEY, "RS256")])
    clock = Monotonic()
    ring = KeyRing([], jwks_file=path, monotonic=clock)
    verify = TokenVerifier(ring, clock=lambda: NOW)
    token_a = signed("A", RSA_KEY, "RS256")
    token_b = signed("B", EC_KEY, "ES256")
    assert verify.verify(token_a).user == "alice"
    assert type(refused(verify, token_b)) is UnknownKey

    write(path, [jwk("A", RSA_KEY, "RS256"), jwk("B", EC_KEY)], bump=1)  # B: alg from crv
    assert type(refused(verify, token_b)) is UnknownKey  # not checked again within a second
    clock.now += 1.0
    assert verify.verify(token_b).user == "alice"
    assert verify.verify(token_a).user == "alice"  # both valid during the rotation

    write(path, [jwk("B", EC_KEY, "ES256")], bump=2)
    clock.now += 1.0
    assert type(refused(verify, token_a)) is UnknownKey
    assert verify.verify(token_b).user == "alice"

    with caplog.at_level(logging.WARNING, logger="hybridbus.server"):
        write(path, '{"keys": [{"kid": "C", "kty"', bump=3)  # a half-written file
        clock.now += 1.0
        assert verify.verify(token_b).user == "alice"  # the last good keys stay
        path.unlink()
        clock.now += 1.0
        assert verify.verify(token_b).user == "alice"
    messages = [r.getMessage() for r in caplog.records if r.name == "hybridbus.server"]
    assert len(messages) == 2
    assert "not JSON" in messages[0] and "keeping the previous keys" in messages[0]
    assert "cannot be read" in messages[1]

    write(path, [jwk("A", RSA_KEY, "RS256")], bump=4)  # back again
    assert ring.reload() is True
    assert ring.kids == {"A"}


def test_a_jwks_file_may_hold_hs256_and_eddsa_keys_beside_configured_ones(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write(
        path, [jwk("hs", SECRET, "HS256"), jwk("ed", ED_KEY), jwk("enc", EC_KEY) | {"use": "enc"}]
    )
    ring = KeyRing([KeySpec(alg="HS256", secret=OTHER_SECRET)], jwks_file=path)
    verify = TokenVerifier(ring, clock=lambda: NOW)
    assert ring.kids == {None, "hs", "ed"}
    assert verify.verify(hs256(claims(), kid="hs")).user == "alice"
    assert verify.verify(signed("ed", ED_KEY, "EdDSA")).user == "alice"
    assert verify.verify(hs256(claims(), secret=OTHER_SECRET)).user == "alice"


def test_jwks_keys_of_other_algorithms_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write(path, [jwk("old", RSA_KEY, "RS384"), jwk("new", RSA_KEY, "RS256")])
    with caplog.at_level(logging.WARNING, logger="hybridbus.server"):
        ring = KeyRing([], jwks_file=path)
    assert ring.kids == {"new"}
    assert "RS384" in caplog.text
    verify = TokenVerifier(ring, clock=lambda: NOW)
    assert type(refused(verify, signed("old", RSA_KEY, "RS384"))) is UnknownKey


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "a list of keys"),
        ('{"keys": {}}', "a list of keys"),
        ('{"keys": []}', "no usable keys"),
        ('{"keys": [1]}', "not an object"),
        (json.dumps({"keys": [jwk("", EC_KEY)]}), "needs a kid"),
        (
            json.dumps({"keys": [{k: v for k, v in jwk("x", EC_KEY).items() if k != "kid"}]}),
            "needs a kid",
        ),
        (json.dumps({"keys": [jwk("r", RSA_KEY)]}), "needs an alg"),  # RSA: RS256? PS256?
        (json.dumps({"keys": [jwk("h", SECRET)]}), "needs an alg"),
        (json.dumps({"keys": [jwk("h", "too short for hs256", "HS256")]}), "32 bytes"),
        (json.dumps({"keys": [{"kid": "h", "alg": "HS256", "kty": "oct"}]}), "not a valid HS256"),
        (json.dumps({"keys": [jwk("e", EC_KEY, "RS256")]}), "not a valid RS256"),
        (
            json.dumps({"keys": [jwk("e", ec.generate_private_key(ec.SECP384R1()), "ES256")]}),
            "P-256",
        ),
        (
            json.dumps(
                {
                    "keys": [
                        RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True) | {"kid": "p", "alg": "RS256"}
                    ]
                }
            ),
            "private key",
        ),
        (json.dumps({"keys": [jwk("d", EC_KEY), jwk("d", ED_KEY)]}), "another key has this kid"),
        (json.dumps({"keys": [jwk("cfg", EC_KEY)]}), "another key has this kid"),
    ],
)
def test_an_unusable_jwks_file_is_refused_at_start(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    configured = KeySpec(kid="cfg", alg="HS256", secret=SECRET)
    with pytest.raises(ValueError, match=message) as info:
        KeyRing([configured], jwks_file=path)
    assert SECRET not in str(info.value)


def test_a_missing_jwks_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read JWKS file"):
        KeyRing([], jwks_file=tmp_path / "absent.json")
