"""Server configuration: one frozen struct, from defaults, a TOML file, the environment, flags.

Owns: every setting of `hybridbus serve`, their defaults, and how the layers
override each other (defaults < TOML file < `HYBRIDBUS_*` environment <
command-line flags). Reads the file it is given, nothing else; never looks at
`os.environ` itself (the caller passes the environment, so tests can too).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from hybridbus.errors import InvalidInput

__all__ = ["ENV_PREFIX", "ServerConfig", "load_config"]

ENV_PREFIX: Final = "HYBRIDBUS_"

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Bytes = Annotated[int, msgspec.Meta(ge=1024)]


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of the server; docs/configuration.md describes each one."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    engine: str = "sqlite://./hybridbus-data"
    # Several processes may share the port (one per core) once the engine is shared.
    reuse_port: bool = False
    ping_interval: Seconds = 25.0
    # Seconds a new connection has to send its connect (and an authenticator has to answer).
    connect_timeout: Seconds = 10.0
    # Commands of one connection awaiting their answer before more are refused (1016).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_frame_size: Bytes = 1 << 20
    # Bytes queued for one connection before it is cut off as a slow consumer.
    max_pending_bytes: Bytes = 8 << 20
    # -- access (docs/security.md) --
    # Anonymous clients (no token) are refused unless a tenant is named for them;
    # they may then do what the rules of the role "anonymous" allow, nothing else.
    anonymous_tenant: str | None = None
    # role -> rules: {allow|deny = [operations] | "*", topics = pattern(s), days, hours, zone, apps}
    roles: dict[str, list[dict[str, Any]]] = msgspec.field(default_factory=dict)
    # An HS256 development secret (>= 32 bytes), e.g. from HYBRIDBUS_JWT_SECRET.
    jwt_secret: str | None = None
    # Verification keys: {kid, alg (HS256|RS256|ES256|EdDSA), secret|public_key|public_key_file}.
    jwt_keys: list[dict[str, str]] = msgspec.field(default_factory=list)
    # A JWKS file (RFC 7517), re-read when it changes: keys rotate without a restart.
    jwks_file: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # HTTP API keys, stored hashed: {name, hash = "sha256:<hex>", tenant | admin = true, roles}.
    api_keys: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # Publish rates in events/s (0: unlimited), per connection and per tenant; bursts.
    publish_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    publish_burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    tenant_publish_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    tenant_publish_burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    max_subscriptions: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_connections_per_user: Annotated[int, msgspec.Meta(ge=0)] = 100  # 0: unlimited
    # Refusals in one tenant within 10 s before a `denials` audit event.
    audit_denials: Annotated[int, msgspec.Meta(ge=0)] = 20
    # Seconds to flush outboxes and close connections on SIGTERM/SIGINT.
    shutdown_timeout: Seconds = 10.0
    log_level: str = "info"
    log_format: str = "json"


_FIELDS: Final = frozenset(ServerConfig.__struct_fields__)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            found[name] = value
    return found


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """The configuration from defaults < `file` (TOML) < `env` < `flags` (None values skipped).

    Raises `InvalidInput` naming the setting and where it came from.
    """
    merged: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        try:
            with file.open("rb") as handle:
                layers.append((str(file), tomllib.load(handle)))
        except OSError as exc:
            raise InvalidInput(f"cannot read the config file {file}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{file} is not valid TOML: {exc}") from exc
    if env is not None:
        layers.append(("the environment", _from_env(env)))
    if flags is not None:
        layers.append(("the command line", {k: v for k, v in flags.items() if v is not None}))
    for origin, values in layers:
        unknown = set(values) - _FIELDS
        if unknown:
            raise InvalidInput(f"unknown setting {sorted(unknown)[0]!r} in {origin}")
        try:
            # Check each layer on its own, so an error names where it came from.
            msgspec.convert({**merged, **values}, ServerConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"bad setting in {origin}: {exc}") from exc
        merged.update(values)
    return msgspec.convert(merged, ServerConfig, strict=False)
