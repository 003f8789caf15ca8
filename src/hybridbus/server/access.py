"""The access model built from the configuration: policy, limits, authenticator, API keys.

Owns: turning `ServerConfig`'s access settings into the objects that enforce
them (`Policy` and `Limits` for the hub's `Guard`, the connection
`Authenticator`, the signing key `hybridbus token` uses) and the HTTP API
keys: `ApiKeys` identifies a presented key by its SHA-256 hash (keys are
random, 256-bit: a fast hash is right for them, a password hash is not), and
`new_api_key` makes one. Must not enforce anything itself.

An API key is `hb_` + 43 URL-safe base64 characters; the configuration holds
only `sha256:<hex of the key's UTF-8 bytes>`. A tenant key acts inside its
tenant with its `roles` (none: every operation there); an admin key acts
everywhere (absolute topics) and can read `$audit/...`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from hybridbus.core.identity import OPERATIONS, Grant, Identity
from hybridbus.core.permissions import Policy
from hybridbus.core.topics import scope_topic
from hybridbus.errors import InvalidInput, InvalidTopic
from hybridbus.hub.guard import Limits
from hybridbus.server.auth import AnonymousAuthenticator, Authenticator
from hybridbus.server.config import ServerConfig
from hybridbus.server.keys import KeyRing, KeySpec
from hybridbus.server.tokens import JwtAuthenticator, TokenVerifier

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeys",
    "authenticator_of",
    "hash_api_key",
    "keys_of",
    "limits_of",
    "new_api_key",
    "policy_of",
]

API_KEY_PREFIX: Final = "hb_"


def policy_of(config: ServerConfig) -> Policy:
    """The rules of `config.roles` (the role "anonymous" is the anonymous clients')."""
    roles = {name: rules for name, rules in config.roles.items() if name != "anonymous"}
    try:
        return Policy.from_config(roles, anonymous=config.roles.get("anonymous", ()))
    except ValueError as exc:
        raise InvalidInput(f"bad setting roles: {exc}") from exc


def limits_of(config: ServerConfig) -> Limits:
    """The publish rates, the audit threshold and the revocation bounds of `config`.

    A revocation lasts at most the longest token lifetime plus the leeway: no
    token the server accepts outlives that (`server.tokens.TokenVerifier`).
    """
    horizon = config.max_token_lifetime + config.jwt_leeway
    if not math.isfinite(horizon):
        raise InvalidInput("bad setting jwt_leeway: must be a finite number of seconds")
    return Limits(
        connection_rate=config.publish_rate,
        connection_burst=config.publish_burst,
        tenant_rate=config.tenant_publish_rate,
        tenant_burst=config.tenant_publish_burst,
        audit_denials=config.audit_denials,
        revocation_horizon=horizon,
        revoke_rate=config.revoke_rate,
        revoke_burst=config.revoke_burst,
        max_revocations=config.max_revocations_per_tenant,
    )


def keys_of(config: ServerConfig) -> list[KeySpec]:
    """The JWT keys `config` names: `jwt_keys`, then `jwt_secret` as an HS256 key."""
    keys: list[KeySpec] = []
    for index, entry in enumerate(config.jwt_keys):
        fields: dict[str, Any] = dict(entry)
        for pem in ("public_key", "private_key"):
            file = fields.pop(f"{pem}_file", None)
            if file is not None:
                try:
                    fields[pem] = Path(file).read_text()
                except OSError as exc:
                    raise InvalidInput(f"bad setting jwt_keys[{index}]: {exc}") from exc
        try:
            keys.append(msgspec.convert(fields, KeySpec))
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidInput(f"bad setting jwt_keys[{index}]: {exc}") from exc
    if config.jwt_secret is not None:
        try:
            keys.append(KeySpec(alg="HS256", secret=config.jwt_secret))
        except ValueError as exc:
            raise InvalidInput(f"bad setting jwt_secret: {exc}") from exc
    return keys


def authenticator_of(config: ServerConfig) -> Authenticator:
    """JWT verification when keys are configured, else anonymous clients only (if any)."""
    keys = keys_of(config)
    jwks = Path(config.jwks_file) if config.jwks_file else None
    if not keys and jwks is None:
        return AnonymousAuthenticator(config.anonymous_tenant)
    try:
        ring = KeyRing(keys, jwks_file=jwks)
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"bad JWT key settings: {exc}") from exc
    verifier = TokenVerifier(
        ring,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        leeway=config.jwt_leeway,
        max_lifetime=config.max_token_lifetime,
    )
    return JwtAuthenticator(verifier, anonymous_tenant=config.anonymous_tenant)


# -- API keys ---------------------------------------------------------------------


def new_api_key() -> tuple[str, str]:
    """A fresh API key and the `sha256:<hex>` to put in the configuration."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_api_key(key: str) -> str:
    """The stored form of `key`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class _Entry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    hash: str
    tenant: str | None = None
    admin: bool = False
    roles: list[str] = msgspec.field(default_factory=list)


class ApiKeys:
    """The configured API keys, by hash: `identify(key)` is who a presented key is."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self._by_hash: dict[str, tuple[str, Identity]] = {}
        for index, raw in enumerate(entries):
            where = f"api_keys[{index}]"
            try:
                entry = msgspec.convert(raw, _Entry)
            except msgspec.ValidationError as exc:
                raise InvalidInput(f"bad setting {where}: {exc}") from exc
            algorithm, _, digest = entry.hash.partition(":")
            if algorithm != "sha256" or len(digest) != 64 or digest.strip("0123456789abcdef"):
                raise InvalidInput(f"bad setting {where}.hash: expected sha256:<64 hex digits>")
            if entry.admin == (entry.tenant is not None):
                raise InvalidInput(f"bad setting {where}: give exactly one of tenant, admin")
            tenant = entry.tenant or "_admin"
            if entry.tenant is not None:
                try:
                    scope_topic(entry.tenant, "x")
                except InvalidTopic as exc:
                    raise InvalidInput(f"bad setting {where}.tenant: {exc}") from exc
            identity = Identity(
                tenant=tenant,
                user=f"key:{entry.name}",
                roles=tuple(entry.roles),
                # A tenant key without roles may do everything inside its tenant.
                grants=() if entry.roles else (Grant("#", OPERATIONS),),
                admin=entry.admin,
            )
            self._by_hash[digest] = (entry.name, identity)

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, key: str) -> tuple[str, Identity] | None:
        """(name, identity) of the configured key `key`, or None."""
        # A lookup by the key's hash: what an attacker could time is the
        # comparison of hashes of its own guesses, which tells it nothing.
        return self._by_hash.get(hashlib.sha256(key.encode()).hexdigest())
