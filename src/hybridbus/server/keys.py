"""Verification and signing keys: the configured keys and a rotating JWKS file.

Owns: `KeySpec` (one configured key, checked on construction), `KeyRing` (the
verification keys: the configured ones plus a JWKS file that is re-read when it
changes), `signing_key` (what `server.tokens.mint` signs with) and the rules a
key must pass: one of `ALGORITHMS`; an HS256 secret of at least 32 bytes that
is not shaped like a PEM, SSH or JWK key; RSA of at least 2048 bits; ES256 on
P-256; EdDSA on Ed25519. Must not look at tokens (verifying and minting them is
`server.tokens`), read the configuration (`server.access` builds these objects
from `ServerConfig`), nor let key material into a message, a `repr` or a
chained exception.

The JWKS file is stat'ed at most once per `check_interval` (1 s) on `select`
and re-read when its mtime, size or inode changes; a file that cannot be used
keeps the previous keys (logged on `hybridbus.server`), so a half-written
rotation never locks clients out. In the file only signing keys (`use: sig`,
the default) count; each needs a `kid`, and an `alg` unless its curve fixes one
(P-256: ES256, Ed25519: EdDSA). A key of another algorithm is skipped with a
warning; a private key, or a kid taken twice, makes the whole file unusable.
"""

from __future__ import annotations

import json
import logging
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

from hybridbus.errors import UnknownKey

# A bad key or JWKS file is a ValueError whatever its kind (the server reports it):
# ruff: noqa: TRY004

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "KeyRing",
    "KeySpec",
    "signing_key",
]

log = logging.getLogger("hybridbus.server")

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGORITHMS: Final[frozenset[str]] = frozenset({"HS256", "RS256", "ES256", "EdDSA"})
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: at least the hash's size
MIN_RSA_BITS: Final = 2048

_PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_PRIVATE_TYPES: Final = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


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
            signing_key(self)


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


def signing_key(spec: KeySpec) -> bytes | _PrivateKey:
    """What `server.tokens.mint` signs with; `ValueError` if `spec` cannot sign."""
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
