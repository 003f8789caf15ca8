"""JWT connection tokens: verification, the claims an identity is made of, and minting.

Owns: `TokenVerifier` (a token -> its `Identity`, or a typed `Unauthorized`),
the mapping of claims to an `Identity`, `JwtAuthenticator` (the connection
`Authenticator` of a server with keys), `mint` (signing, for `hybridbus token`
and tests) and `parse_duration`. Must not hold or load keys (`KeySpec`,
`KeyRing` and the JWKS file are `server.keys`), read the configuration
(`server.access` builds these objects from `ServerConfig`) nor decide what an
identity may do (the hub's `Guard`).

Theory of operation. Verification is one fixed pipeline; each step refuses
with a typed error whose message names the check that failed, never a
secret:

    1. shape: ASCII, at most 16 KiB, three parts, a JSON header   TokenInvalid
    2. `alg: none`, in any spelling                                TokenInvalid
    3. the key (`KeyRing.select`): by the header's `kid`; without
       a `kid`, the one configured key that has none               UnknownKey
    4. the header's `alg` must be the key's: the algorithm is fixed
       by the key, never by the token (so an HS256 token "signed"
       with an RSA public key is refused before any HMAC is made)  TokenInvalid
    5. the signature (PyJWT, allowed that one algorithm only)      TokenInvalid
    6. `exp` (required) against the injected clock and leeway      TokenExpired
       `nbf` (optional)                                            TokenInvalid
       with a `max_lifetime`: `iat` required                       TokenInvalid
       `exp - iat` and `exp - now` at most the maximum
       (the latter plus the leeway)                         TokenLifetimeExceeded
    7. `iss`, `aud` when configured; `sub`, `tenantid` required;
       claim types; the `topics` grants                            TokenInvalid

Keys never come from the token: `jku`, `jwk`, `x5u`, `x5c` headers are ignored.
How the JWKS file rotates keys is `server.keys`.

Claims -> `Identity`: `sub` user, `tenantid` tenant, `roles` (list, or one
string), `device`, `sid` session, `jti` token_id, `appid` app, `iat` issued,
`exp` expires, `topics` grants (a list of patterns with the default
operations, or `{pattern: [operations]}`), and `admin` (true: an operator with
absolute topics and every operation; mint admin tokens only for operators).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import jwt
import msgspec
from jwt.types import Options

from hybridbus.core.identity import OPERATIONS, Grant, Identity
from hybridbus.core.topics import scope_topic, validate_pattern
from hybridbus.errors import (
    InvalidPattern,
    InvalidTopic,
    TokenExpired,
    TokenInvalid,
    TokenLifetimeExceeded,
    Unauthorized,
)
from hybridbus.server.keys import KeyRing, KeySpec, signing_key

__all__ = [
    "MAX_TOKEN_LENGTH",
    "JwtAuthenticator",
    "TokenVerifier",
    "mint",
    "parse_duration",
]

MAX_TOKEN_LENGTH: Final = 16 * 1024
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
    `leeway` seconds of tolerance for clock skew. An `iat` in our future is
    not refused: an issuer whose clock runs a little ahead stamps fresh tokens
    so. `issuer` and `audience`, when set, must be the token's `iss` and among
    its `aud`; when unset, those claims are not looked at.

    `max_lifetime` (seconds; None: no limit) is the longest a token may live:
    a token then needs an `iat`, and is refused (`TokenLifetimeExceeded`) if
    its `exp` is more than `max_lifetime` after its `iat`, or more than
    `max_lifetime + leeway` after now (so an `iat` set in the future cannot
    stretch it). No token accepted at time t expires after t + max_lifetime +
    leeway: what bounds how long a revocation must last (`core.revocation`).
    """

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
        max_lifetime: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError("leeway must be a number of seconds >= 0")
        if max_lifetime is not None and not (math.isfinite(max_lifetime) and max_lifetime > 0):
            raise ValueError("max_lifetime must be a number of seconds > 0 (or None)")
        self.ring = ring
        self._max_lifetime = max_lifetime
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
        longest = self._max_lifetime
        if longest is None:
            return
        issued = _time(claims, "iat")
        if issued is None:
            raise TokenInvalid("claim iat is required: this server limits token lifetimes")
        if expires - issued > longest:
            raise TokenLifetimeExceeded(
                f"the token lives {expires - issued:.0f} s (exp - iat), over this server's "
                f"max_token_lifetime of {longest:.0f} s"
            )
        if expires - now > longest + leeway:
            raise TokenLifetimeExceeded(
                f"the token expires {expires - now:.0f} s from now, over this server's "
                f"max_token_lifetime of {longest:.0f} s (is its iat in the future?)"
            )

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
    max_lifetime: float | None = None,
) -> str:
    """A token for `sub` in `tenant`, valid `ttl` seconds from `now`, signed with `key`.

    `iat` is `now` (default: the time) in whole seconds, `exp` is `iat` +
    `ceil(ttl)`, `jti` a random id unless given; the header names `key.kid`.
    Raises `ValueError` if `key` cannot sign or a claim would be refused on
    verify, `ttl` included when over `max_lifetime` (the server's
    `max_token_lifetime`). `admin=True` makes an operator token: mint those
    only for operators.
    """
    signing = signing_key(key)
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")
    if max_lifetime is not None and math.ceil(ttl) > max_lifetime:
        raise ValueError(
            f"ttl {ttl:g} s is over the server's max_token_lifetime of {max_lifetime:g} s: "
            "it would refuse the token (raise max_token_lifetime to mint longer ones)"
        )
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
