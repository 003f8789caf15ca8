"""JWT connection tokens: keys, verification, key rotation, and minting.

Owns: `KeySpec` (one configured key), `KeyRing` (the verification keys: the
configured ones plus a JWKS file that is re-read when it changes),
`TokenVerifier` (a token -> its `Identity`, or a typed `Unauthorized`),
`JwtAuthenticator` (the connection `Authenticator` of a server with keys),
`mint` (signing, for `hybridbus token` and tests) and `parse_duration`.
Must not read the configuration (`server.access` builds these objects from
`ServerConfig`) nor decide what an identity may do (the hub's `Guard`).

Theory of operation. Verification is one fixed pipeline; each step refuses
with a typed error whose message names the check that failed, never a
secret:

    1. shape: ASCII, at most 16 KiB, three parts, a JSON header   TokenInvalid
    2. `alg: none`, in any spelling                                TokenInvalid
    3. the key: by the header's `kid`; without a `kid`, the one
       configured key that has none                                UnknownKey
    4. the header's `alg` must be the key's: the algorithm is fixed
       by the key, never by the token (so an HS256 token "signed"
       with an RSA public key is refused before any HMAC is made)  TokenInvalid
    5. the signature (PyJWT, allowed that one algorithm only)      TokenInvalid
    6. `exp` (required) against the injected clock and leeway      TokenExpired
       `nbf` (optional)                                            TokenInvalid
    7. `iss`, `aud` when configured; `sub`, `tenantid` required;
       claim types; the `topics` grants                            TokenInvalid

Keys never come from the token: `jku`, `jwk`, `x5u`, `x5c` headers are ignored.
The JWKS file is stat'ed at most once per `check_interval` (1 s) on verify and
re-read when its mtime, size or inode changes; a file that cannot be used keeps
the previous keys (logged on `hybridbus.server`), so a half-written rotation
never locks clients out.

Claims -> `Identity`: `sub` user, `tenantid` tenant, `roles` (list, or one
string), `device`, `sid` session, `jti` token_id, `appid` app, `iat` issued,
`exp` expires, `topics` grants (a list of patterns with the default
operations, or `{pattern: [operations]}`), and `admin` (true: an operator with
absolute topics and every operation; mint admin tokens only for operators).
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import jwt
import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from jwt.algorithms import get_default_algorithms
from jwt.types import Options

from hybridbus.core.identity import OPERATIONS, Grant, Identity
from hybridbus.core.topics import scope_topic, validate_pattern
from hybridbus.errors import (
    InvalidPattern,
    InvalidTopic,
    TokenExpired,
    TokenInvalid,
    Unauthorized,
    UnknownKey,
)

# A bad key or JWKS file is a ValueError whatever its kind (the server reports it):
# ruff: noqa: TRY004

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "Algorithm",
    "JwtAuthenticator",
    "KeyRing",
    "KeySpec",
    "TokenVerifier",
    "mint",
    "parse_duration",
]

log = logging.getLogger("hybridbus.server")

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGORITHMS: Final[frozenset[str]] = frozenset({"HS256", "RS256", "ES256", "EdDSA"})
MAX_TOKEN_LENGTH: Final = 16 * 1024
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: at least the hash's size
MIN_RSA_BITS: Final = 2048

_PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_PRIVATE_TYPES: Final = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
# PyJWT checks nothing time-related against its own clock: we do, against ours.
_SIGNATURE_ONLY: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_aud": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


# -- keys -------------------------------------------------------------------------


class KeySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One key: an HS256 `secret`, or a PEM `public_key` (and, to mint, `private_key`).

    Checked on construction (also through `msgspec.convert`): a misconfigured
    key raises `ValueError` naming the problem. `repr` never shows key material.
    """

    kid: str | None = None
    alg: Algorithm
    secret: str | None = None
    public_key: str | None = None
    private_key: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def __repr__(self) -> str:
        return f"KeySpec(kid={self.kid!r}, alg={self.alg!r})"

    def check(self) -> None:
        """Raise `ValueError` unless this key can verify (and mint, if it has a private key)."""
        _verification_key(self)
        if self.private_key is not None:
            _signing_key(self)


def _where(spec: KeySpec) -> str:
    return f"key {spec.kid!r}" if spec.kid is not None else f"the {spec.alg} key without a kid"


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"an EC key on {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "an Ed448 key"
    return f"a {type(key).__name__}"


def _check_secret(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{where}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, "
            f"this one has {len(secret)}"
        )
    try:  # PyJWT refuses key-shaped HMAC secrets (PEM, SSH, JWK): the key-confusion guard
        get_default_algorithms()["HS256"].prepare_key(secret)
    except jwt.InvalidKeyError:
        raise ValueError(f"{where}: an HS256 secret must not be a PEM, SSH or JWK key") from None
    return secret


def _check_public(alg: str, key: object, where: str) -> _PublicKey:
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{where}: RS256 needs an RSA key of at least {MIN_RSA_BITS} bits")
        return key
    if (
        alg == "ES256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
        return key
    wanted = {"RS256": "an RSA key", "ES256": "a P-256 EC key", "EdDSA": "an Ed25519 key"}
    raise ValueError(f"{where}: {alg} needs {wanted.get(alg, 'a key')}, not {_describe(key)}")


def _load_public(pem: str, where: str) -> PublicKeyTypes:
    try:
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{where}: public_key is not a PEM public key") from exc


def _load_private(pem: str, where: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # No chaining: a parser's message could quote the key.
        raise ValueError(f"{where}: private_key is not an unencrypted PEM private key") from None


def _verification_key(spec: KeySpec) -> bytes | _PublicKey:
    """What PyJWT verifies `spec`'s tokens with; `ValueError` if `spec` is misconfigured."""
    where = _where(spec)
    if spec.alg not in ALGORITHMS:
        raise ValueError(f"{where}: algorithm {spec.alg!r} is not one of {sorted(ALGORITHMS)}")
    if spec.kid is not None and not spec.kid:
        raise ValueError("a key's kid must not be empty (leave it out instead)")
    if spec.alg == "HS256":
        if spec.public_key is not None or spec.private_key is not None:
            raise ValueError(f"{where}: HS256 takes a secret, not a public or private key")
        if spec.secret is None:
            raise ValueError(f"{where}: HS256 needs a secret")
        return _check_secret(spec.secret.encode(), where)
    if spec.secret is not None:
        raise ValueError(f"{where}: {spec.alg} takes a PEM public_key, not a secret")
    public = None if spec.public_key is None else _load_public(spec.public_key, where)
    if spec.private_key is not None:
        derived_public = _load_private(spec.private_key, where).public_key()
        if public is None:
            public = derived_public
        elif _spki(public) != _spki(derived_public):
            raise ValueError(f"{where}: public_key is not the public half of private_key")
    if public is None:
        raise ValueError(f"{where}: {spec.alg} needs a public_key (PEM)")
    return _check_public(spec.alg, public, where)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signing_key(spec: KeySpec) -> bytes | _PrivateKey:
    """What `mint` signs with; `ValueError` if `spec` has no (usable) signing material."""
    where = _where(spec)
    if spec.alg == "HS256" and spec.secret is not None:
        return _check_secret(spec.secret.encode(), where)
    if spec.private_key is None:
        raise ValueError(f"{where} cannot sign: it has no secret or private_key")
    private = _load_private(spec.private_key, where)
    if not isinstance(private, _PRIVATE_TYPES):
        raise ValueError(f"{where}: {spec.alg} cannot sign with {_describe(private)}")
    _check_public(spec.alg, private.public_key(), where)
    return private


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    alg: str
    material: bytes | _PublicKey = field(repr=False)


def _jwk_alg(entry: Mapping[str, Any], where: str) -> str | None:
    """The JWK's algorithm; None for a key of an algorithm we do not take (skipped)."""
    alg = entry.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            raise ValueError(f"{where}: alg must be a string")
        return alg if alg in ALGORITHMS else None
    # Only these two key types fix one algorithm; RSA and oct keys serve several.
    kty, crv = entry.get("kty"), entry.get("crv")
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    raise ValueError(f"{where}: needs an alg (kty {kty!r} does not fix one)")


def _read_jwks(path: Path, taken: Mapping[str | None, _Key]) -> dict[str, _Key]:
    """The usable keys of the JWKS file `path`; `ValueError` if it cannot be used."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read JWKS file {path}: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"JWKS file {path} is not JSON") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"JWKS file {path}: expected an object with a list of keys")
    found: dict[str, _Key] = {}
    for index, entry in enumerate(entries):
        where = f"JWKS file {path}, keys[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not an object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key: not ours to use
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where}: needs a kid")
        where = f"{where} (kid {kid!r})"
        alg = _jwk_alg(entry, where)
        if alg is None:
            log.warning("%s: algorithm %r is not supported; key skipped", where, entry.get("alg"))
            continue
        try:
            material = jwt.PyJWK(entry, algorithm=alg).key
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not a valid {alg} key") from exc
        if isinstance(material, bytes):
            key = _Key(kid, alg, _check_secret(material, where))
        elif isinstance(material, _PRIVATE_TYPES):
            raise ValueError(f"{where}: a private key; publish only public keys")
        else:
            key = _Key(kid, alg, _check_public(alg, material, where))
        if kid in found or kid in taken:
            raise ValueError(f"{where}: another key has this kid")
        found[kid] = key
    if not found:
        raise ValueError(f"JWKS file {path} has no usable keys")
    return found


_Stamp: TypeAlias = tuple[int, int, int]
_MISSING: Final[_Stamp] = (-1, -1, -1)


class KeyRing:
    """The verification keys: `keys` (configured) and those of `jwks_file` (rotating).

    `select(kid)` is the key a token's header names. Raises `ValueError` on
    a misconfiguration: two keys with one kid, more than one key without a kid
    (a token without a kid could not choose), no key at all, a JWKS file that
    cannot be used at start.
    """

    def __init__(
        self,
        keys: Sequence[KeySpec],
        jwks_file: Path | None = None,
        *,
        check_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static: dict[str | None, _Key] = {}
        for spec in keys:
            if spec.kid in self._static:
                raise ValueError(
                    f"two keys have the kid {spec.kid!r}"
                    if spec.kid is not None
                    else "more than one key has no kid; give each a kid"
                )
            self._static[spec.kid] = _Key(spec.kid, spec.alg, _verification_key(spec))
        self._path = jwks_file
        self._jwks: dict[str, _Key] = {}
        self._stamp: _Stamp | None = None
        self._interval = check_interval
        self._monotonic = monotonic
        self._checked = monotonic()
        if jwks_file is not None:
            try:
                self._stamp = self._stat()
            except OSError as exc:
                raise ValueError(f"cannot read JWKS file {jwks_file}: {exc.strerror}") from exc
            self._jwks = _read_jwks(jwks_file, self._static)
        if not self._static and not self._jwks:
            raise ValueError("no verification keys: configure at least one key or a JWKS file")

    @property
    def kids(self) -> frozenset[str | None]:
        """The kids of every key now in the ring (None: the key without a kid)."""
        return frozenset(self._static) | frozenset(self._jwks)

    def select(self, kid: str | None) -> _Key:
        """The key for a token whose header names `kid` (None: no kid); else `UnknownKey`."""
        if self._path is not None and self._monotonic() - self._checked >= self._interval:
            self.reload()
        if kid is None:
            key = self._static.get(None)
            if key is None:
                raise UnknownKey("the token names no key (kid) and no key without a kid exists")
            return key
        key = self._static.get(kid) or self._jwks.get(kid)
        if key is None:
            raise UnknownKey(f"no key has the token's kid {kid[:64]!r}")
        return key

    def reload(self) -> bool:
        """Re-read the JWKS file if it changed; True if its keys were replaced."""
        self._checked = self._monotonic()
        if self._path is None:
            return False
        try:
            stamp = self._stat()
        except OSError as exc:
            if self._stamp != _MISSING:
                log.warning(
                    "JWKS file %s cannot be read (%s); keeping the previous keys",
                    self._path,
                    exc.strerror,
                )
                self._stamp = _MISSING
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a bad file is reported once, not on every check
        try:
            keys = _read_jwks(self._path, self._static)
        except ValueError as exc:
            log.warning("%s; keeping the previous keys", exc)
            return False
        self._jwks = keys
        log.info("JWKS file %s loaded: kids %s", self._path, sorted(keys))
        return True

    def _stat(self) -> _Stamp:
        assert self._path is not None
        stat = self._path.stat()
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


# -- verification -----------------------------------------------------------------


def _header(token: object) -> dict[str, Any]:
    if not isinstance(token, str):
        raise TokenInvalid("a token must be a string")
    if not token:
        raise TokenInvalid("the token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    if not token.isascii() or token.count(".") != 2:
        raise TokenInvalid("the token is not three dot-separated base64url parts")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("the token's header is not base64url-encoded JSON") from exc


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"claim {name} must be a number (Unix seconds)")
    try:
        seconds = float(value)
    except OverflowError:
        raise TokenInvalid(f"claim {name} is out of range") from None
    if not math.isfinite(seconds):
        raise TokenInvalid(f"claim {name} is out of range")
    return seconds


def _string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TokenInvalid(f"claim {name} must be a non-empty string")
    return value


def _roles(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    roles = [value] if isinstance(value, str) else value
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise TokenInvalid("claim roles must be a string or a list of non-empty strings")
    return tuple(roles)


def _pattern(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise TokenInvalid("claim topics: a pattern must be a string")
    try:
        return validate_pattern(pattern)
    except InvalidPattern as exc:
        raise TokenInvalid(f"claim topics: {exc}") from exc


def _operations(operations: object) -> frozenset[str]:
    if (
        not isinstance(operations, list)
        or not operations
        or not all(isinstance(op, str) and op in OPERATIONS for op in operations)
    ):
        raise TokenInvalid(
            "claim topics: the operations of a pattern must be a non-empty list of "
            f"{sorted(OPERATIONS)}"
        )
    return frozenset(operations)


def _grants(value: object) -> tuple[Grant, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(Grant(_pattern(pattern)) for pattern in value)
    if isinstance(value, dict):
        return tuple(Grant(_pattern(p), _operations(ops)) for p, ops in value.items())
    raise TokenInvalid("claim topics must be a list of patterns or {pattern: [operations]}")


def _identity(claims: Mapping[str, Any]) -> Identity:
    """The identity `claims` describe (no time, issuer or audience checks here)."""
    user = _string(claims, "sub")
    tenant = _string(claims, "tenantid")
    if user is None:
        raise TokenInvalid("claim sub is required")
    if tenant is None:
        raise TokenInvalid("claim tenantid is required")
    try:
        scope_topic(tenant, "x")  # the same check every scoped topic gets
    except InvalidTopic:
        raise TokenInvalid(
            "claim tenantid is not a valid tenant (one segment, no / + #, not starting with $)"
        ) from None
    admin = claims.get("admin", False)
    if not isinstance(admin, bool):
        raise TokenInvalid("claim admin must be true or false")
    return Identity(
        tenant=tenant,
        user=user,
        device=_string(claims, "device"),
        session=_string(claims, "sid"),
        token_id=_string(claims, "jti"),
        roles=_roles(claims.get("roles")),
        grants=_grants(claims.get("topics")),
        app=_string(claims, "appid"),
        admin=admin,
        issued=_time(claims, "iat"),
        expires=_time(claims, "exp"),
    )


class TokenVerifier:
    """Turns a token into the `Identity` it proves, or raises an `Unauthorized` subclass.

    `clock` (Unix seconds) is what `exp` and `nbf` are checked against, with
    `leeway` seconds of tolerance for clock skew. `iat` is only type-checked:
    an issuer whose clock runs a little ahead stamps fresh tokens with an
    `iat` in our future, and refusing them would gain nothing. `issuer` and
    `audience`, when set, must be the token's `iss` and among its `aud`; when
    unset, those claims are not looked at.
    """

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError("leeway must be a number of seconds >= 0")
        self.ring = ring
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock

    def verify(self, token: str, *, device: str | None = None) -> Identity:
        """The identity `token` proves.

        `device` is the one the connect names: the token's `device` claim wins;
        a different one in both is refused (`Unauthorized`).
        """
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenInvalid("the token's header names no algorithm (alg)")
        if alg.lower() == "none":
            raise TokenInvalid("unsigned tokens (alg none) are refused")
        if header.get("b64", True) is not True:
            raise TokenInvalid("unencoded payloads (b64 false) are refused")
        key = self.ring.select(header.get("kid"))  # PyJWT made sure a kid is a string
        if alg != key.alg:
            raise TokenInvalid(f"algorithm {alg[:16]!r} is not the key's ({key.alg})")
        try:
            claims = jwt.decode(token, key.material, algorithms=[key.alg], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError as exc:
            raise TokenInvalid("the signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid("the token's payload is not a base64url JSON object") from exc
        self._check_times(claims)
        self._check_issuer_audience(claims)
        identity = _identity(claims)
        if device is not None and identity.device is None:
            return msgspec.structs.replace(identity, device=device)
        if device is not None and identity.device != device:
            raise Unauthorized("the connect names another device than the token")
        return identity

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock(), self._leeway
        expires = _time(claims, "exp")
        if expires is None:
            raise TokenInvalid("claim exp is required")
        if now >= expires + leeway:
            raise TokenExpired(f"the token expired {now - expires:.0f} s ago (exp)")
        not_before = _time(claims, "nbf")
        if not_before is not None and now + leeway < not_before:
            raise TokenInvalid(f"the token is not valid before {not_before:.0f} (nbf)")

    def _check_issuer_audience(self, claims: Mapping[str, Any]) -> None:
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise TokenInvalid("the token's issuer (iss) is not the configured issuer")
        if self._audience is None:
            return
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise TokenInvalid("the token's audience (aud) does not include this server")


class JwtAuthenticator:
    """The `Authenticator` of a server with JWT keys (see `server.auth`).

    No token: an anonymous identity in `anonymous_tenant` if one is set, else
    `Unauthorized`. A token: whatever `verifier` makes of it.
    """

    def __init__(self, verifier: TokenVerifier, *, anonymous_tenant: str | None = None) -> None:
        if anonymous_tenant is not None:
            try:
                scope_topic(anonymous_tenant, "x")
            except InvalidTopic as exc:
                raise ValueError(
                    f"anonymous tenant {anonymous_tenant!r} is not a valid tenant"
                ) from exc
        self.verifier = verifier
        self.anonymous_tenant = anonymous_tenant

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        if token is None:
            if self.anonymous_tenant is None:
                raise Unauthorized("a token is required: anonymous connections are not allowed")
            return Identity(tenant=self.anonymous_tenant, device=device, anonymous=True)
        # Synchronous: signature checks take microseconds, and the JWKS file is
        # stat'ed at most once a second (a small read when it changed).
        return self.verifier.verify(token, device=device)


# -- minting ----------------------------------------------------------------------


def mint(
    key: KeySpec,
    *,
    sub: str,
    tenant: str,
    roles: Sequence[str] = (),
    ttl: float = 3600,
    device: str | None = None,
    sid: str | None = None,
    app: str | None = None,
    topics: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    admin: bool = False,
    issuer: str | None = None,
    audience: str | Sequence[str] | None = None,
    jti: str | None = None,
    now: float | None = None,
) -> str:
    """A token for `sub` in `tenant`, valid `ttl` seconds from `now`, signed with `key`.

    `iat` is `now` (default: the time) in whole seconds, `exp` is `iat` +
    `ceil(ttl)`, `jti` a random id unless given; the header names `key.kid`.
    Raises `ValueError` if `key` cannot sign or a claim would be refused on
    verify. `admin=True` makes an operator token: mint those only for operators.
    """
    signing = _signing_key(key)
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "tenantid": tenant,
        "iat": issued,
        "exp": issued + math.ceil(ttl),
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
    }
    optional: dict[str, Any] = {
        "roles": [roles] if isinstance(roles, str) else list(roles),
        "device": device,
        "sid": sid,
        "appid": app,
        "iss": issuer,
        "aud": audience if isinstance(audience, str | None) else list(audience),
        "admin": admin or None,
    }
    if topics is not None:
        optional["topics"] = (
            {pattern: list(ops) for pattern, ops in topics.items()}
            if isinstance(topics, Mapping)
            else list(topics)
        )
    claims.update((name, value) for name, value in optional.items() if value not in (None, []))
    try:
        _identity(claims)  # what verify would refuse, refused now
    except TokenInvalid as exc:
        raise ValueError(str(exc)) from None
    headers = {"kid": key.kid} if key.kid is not None else None
    return jwt.encode(claims, signing, algorithm=key.alg, headers=headers)


_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of a duration: `90` or `45s`, `30m`, `1h`, `2d` (`ValueError` otherwise)."""
    match = _DURATION.fullmatch(text.strip())
    seconds = float(match[1]) * _UNITS[match[2]] if match else 0.0
    if seconds <= 0:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90, 45s, 30m, 1h, 2d)")
    return seconds
