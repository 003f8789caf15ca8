"""Server configuration: one frozen struct, from defaults, a TOML file, the environment, flags.

Owns: every setting of `hybridbus serve`, their defaults, and how the layers
override each other (defaults < TOML file < `HYBRIDBUS_*` environment <
command-line flags). An unknown setting is refused in every layer, a
`HYBRIDBUS_*` variable included (except the `OTHER_VARIABLES`, which others
read). Reads the file it is given, nothing else; never looks at `os.environ`
itself (the caller passes the environment, so tests can too).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from hybridbus.bridges.settings import AnyBridge
from hybridbus.core.cors import ORIGIN_PATTERN
from hybridbus.core.webhook_routes import Endpoint
from hybridbus.core.webhooks_out import Subscription
from hybridbus.engine.base import EngineConfig, RetentionRule
from hybridbus.errors import InvalidInput

__all__ = [
    "ENV_PREFIX",
    "OTHER_VARIABLES",
    "ServerConfig",
    "TracingConfig",
    "engine_config",
    "load_config",
    "tls_problem",
]

ENV_PREFIX: Final = "HYBRIDBUS_"
# The `HYBRIDBUS_*` variables that are not server settings (docs/configuration.md lists
# them): the client commands' --url, --token, --ca, --cert and --key defaults, and the test
# suite's switches.
# Any other `HYBRIDBUS_*` variable must name a setting.
OTHER_VARIABLES: Final = (
    "HYBRIDBUS_URL",
    "HYBRIDBUS_TOKEN",
    "HYBRIDBUS_REQUIRE_SERVICES",
    "HYBRIDBUS_REQUIRE_BROWSER",
    "HYBRIDBUS_CONSOLE_SCREENSHOTS",
    "HYBRIDBUS_SERVICES_DIR",
    "HYBRIDBUS_REDIS_URL",
    "HYBRIDBUS_CA",
    "HYBRIDBUS_CERT",
    "HYBRIDBUS_KEY",
)

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Bytes = Annotated[int, msgspec.Meta(ge=1024)]
OriginPattern = Annotated[str, msgspec.Meta(pattern=ORIGIN_PATTERN)]
MAX_LIFETIME: Final = 10 * 366 * 86400.0  # the most `max_token_lifetime` may be: ten years
# The node registry's URL: empty (follow the engine), "local", or a store's URL.
REGISTRY_PATTERN: Final = r"^(|local|(rediss?(\+cluster)?|etcds?)://\S+)$"


class TracingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[tracing]` table: OpenTelemetry traces of each event (docs/tracing.md)."""

    # Off: opentelemetry is not even imported (the `tracing` extra is needed when on).
    enabled: bool = False
    # The share of new traces recorded (0-1); an event or request that carries a
    # `traceparent` follows its sampled flag instead.
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    service_name: Annotated[str, msgspec.Meta(min_length=1)] = "hybridbus"
    # Where spans are exported with OTLP: "" is the protocol's default (grpc:
    # http://localhost:4317, http: http://localhost:4318/v1/traces). protocol "none":
    # spans are sampled and `traceparent` stamped and carried, but exported nowhere.
    otlp_endpoint: str = ""
    protocol: Literal["grpc", "http", "none"] = "grpc"
    # Sent with every export (an API key of the tracing backend, say).
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # The exporter's queue of finished spans (the SDK's BatchSpanProcessor): past
    # `max_queue_size` spans waiting, new ones are dropped (a sampled fan-out to many
    # subscribers makes a span per delivery); sent `max_export_batch_size` at a time,
    # at the latest `schedule_delay` seconds after the first waits.
    max_queue_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 2048
    max_export_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 512
    schedule_delay: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0

    def __post_init__(self) -> None:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("[tracing] max_export_batch_size must be at most max_queue_size")


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of the server; docs/configuration.md describes each one."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    engine: str = "sqlite://./hybridbus-data"
    # Retention per topic pattern ([[retention]] tables: pattern, max_age, max_per_topic,
    # max_bytes; the first rule matching a topic applies, else the engine URL's limits;
    # docs/configuration.md, "Retention"). Patterns are absolute: "+/logs/#".
    retention: list[RetentionRule] = msgspec.field(default_factory=list)
    # Several processes may share the port (one per core) once the engine is shared.
    reuse_port: bool = False
    # The gRPC API (docs/grpc.md) on `host`:<grpc_port>; unset: off, 0: a free port.
    grpc_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    # `hybridbus serve --workers N`: N processes on one port (SO_REUSEPORT), one node each;
    # only with a shared engine (docs/scale-out.md, "Many nodes").
    workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    # -- the node registry (docs/scale-out.md, "Node registry") --
    # Where nodes register: "" follows the engine (its Redis for a Redis engine, else
    # "local": this node only), "local", "redis://host:port/db?prefix=p" (rediss://,
    # redis+cluster://), or "etcd://host:port[,host:port...][/key/prefix/]" (etcds://: https).
    registry: Annotated[str, msgspec.Meta(pattern=REGISTRY_PATTERN)] = ""
    # Seconds a node's entry lives without a heartbeat (sent every third of it).
    registry_ttl: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    # This node's id in the registry (default: <hostname>-<pid>, and -w<i> for worker i).
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] | None = None
    # Seconds a node's lease on a consumer group lives unrenewed (renewed every third of
    # it): one node coordinates each group on a shared engine (docs/groups.md, "Many nodes").
    group_lease_ttl: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    # -- TLS (docs/security.md, "TLS") --
    # PEM files: the certificate chain and its private key (both or neither; unencrypted
    # key) serve HTTPS/WSS on `port` and TLS on `grpc_port`. With tls_client_ca too, every
    # client must present a certificate signed by it (mutual TLS). The files are checked
    # every tls_reload_interval seconds (0: never) and a changed pair is served to new
    # handshakes without a restart; a broken one is refused (logged), the old one stays.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_reload_interval: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 5.0
    # Seconds an HTTP connection has to send a request's line and headers (from being
    # accepted, or from the end of its previous response), and a request body.
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 30.0
    # Connections still waiting for their request headers; past it the oldest is closed.
    max_pending_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
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
    # -- browsers (docs/security.md, "Browsers: CORS and Origin") --
    # Origins whose pages may call the HTTP API and SSE (CORS): "https://app.example.com",
    # "http://localhost:*" (any port), "https://*.example.com" (subdomains), "*" (any).
    cors_origins: list[OriginPattern] = msgspec.field(default_factory=list)
    # Refuse (403) a WebSocket upgrade whose Origin is not in cors_origins (none: allowed).
    ws_check_origin: bool = False
    # Publish rates in events/s (0: unlimited), per connection and per tenant; bursts.
    publish_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    publish_burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    tenant_publish_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    tenant_publish_burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    max_subscriptions: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # -- sessions (docs/protocol.md, "Sessions") --
    # Seconds a dropped connection's session waits for its client to reconnect and
    # continue it (presence shows it "degraded" meanwhile); 0: no sessions. Per tenant:
    # [tenant_session_grace] acme = 60.0. Degraded sessions past the bound end early.
    session_grace: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 30.0
    tenant_session_grace: dict[str, Annotated[float, msgspec.Meta(ge=0, le=86400)]] = (
        msgspec.field(default_factory=dict)
    )
    max_degraded_sessions: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_connections_per_user: Annotated[int, msgspec.Meta(ge=0)] = 100  # 0: unlimited
    # Refusals in one tenant within 10 s before a `denials` audit event.
    audit_denials: Annotated[int, msgspec.Meta(ge=0)] = 20
    # The longest a token may live (`exp` - `iat`, and `exp` - now); a revocation
    # lasts at most this + jwt_leeway (a user's exactly that long).
    max_token_lifetime: Annotated[float, msgspec.Meta(gt=0, le=MAX_LIFETIME)] = 86400.0
    # Live revocations a tenant's callers may hold in their tenant (admins are not counted out).
    max_revocations_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # POST /v1/revocations by a tenant's callers, per tenant: revocations/s (0: unlimited), burst.
    revoke_rate: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    revoke_burst: Annotated[float, msgspec.Meta(ge=0)] = 100.0
    # Inbound webhook endpoints ([[webhooks]] tables, docs/webhooks.md): fixed by this file;
    # more are made over the HTTP API. Failed checks of one endpoint within 10 s before an
    # audit event.
    webhooks: list[Endpoint] = msgspec.field(default_factory=list)
    webhook_audit_failures: Annotated[int, msgspec.Meta(ge=0)] = 20
    # Outbound webhooks ([[outbound_webhooks]] tables, docs/webhooks.md "Outbound"): fixed by
    # this file; more are made over the HTTP API. Private targets (loopback, link-local,
    # private, ... addresses: SSRF) are refused unless webhook_allow_private is true.
    outbound_webhooks: list[Subscription] = msgspec.field(default_factory=list)
    webhook_allow_private: bool = False
    # Bridges ([[bridges]] tables, one per bridge: `kind` mqtt|postgres|..., `direction`
    # in|out; docs/bridges.md): started with `hybridbus serve`, or alone by
    # `hybridbus bridge CONFIG`.
    bridges: list[AnyBridge] = msgspec.field(default_factory=list)
    # -- Yjs documents (docs/collaboration.md, "Documents") --
    # A room's snapshot is written after this many updates, or this many seconds after the
    # first update since the last one; a room without clients unloads after yjs_idle_unload.
    yjs_compact_every: Annotated[int, msgspec.Meta(ge=1)] = 500
    yjs_compact_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    yjs_idle_unload: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Bytes of one client's awareness state (its JSON); a larger one closes the socket 4400.
    yjs_max_awareness_bytes: Annotated[int, msgspec.Meta(ge=64)] = 64 << 10
    # -- awareness and state topics (docs/collaboration.md) --
    # Awareness updates per second per client to each watcher (always the newest), keys in
    # one client's state, bytes of one value (JSON).
    awareness_rate: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 20.0
    awareness_max_keys: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    awareness_max_bytes: Annotated[int, msgspec.Meta(ge=16)] = 4096
    # Bytes of one state document (JSON); versions between snapshots; accepted patches a
    # late Lamport-ordered patch may still go before; seconds an unwatched document stays loaded.
    state_max_bytes: Annotated[int, msgspec.Meta(ge=16, le=1 << 20)] = 256 << 10
    state_snapshot_every: Annotated[int, msgspec.Meta(ge=1)] = 100
    state_window: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 64
    state_idle_unload: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Seconds to flush outboxes and close connections on SIGTERM/SIGINT.
    shutdown_timeout: Seconds = 10.0
    # OpenTelemetry traces ([tracing] table; docs/tracing.md): off by default.
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    log_level: str = "info"
    log_format: str = "json"


_FIELDS: Final = frozenset(ServerConfig.__struct_fields__)


def engine_config(config: ServerConfig) -> EngineConfig:
    """The engine settings of the config file (the engine URL's query parameters win)."""
    return EngineConfig(retention=tuple(config.retention))


def tls_problem(config: ServerConfig) -> str | None:
    """What is wrong with the TLS settings taken together (None: nothing).

    Checked once every layer is merged: the certificate may come from the file
    and its key from the environment.
    """
    if (config.tls_cert is None) != (config.tls_key is None):
        missing = "tls_key" if config.tls_key is None else "tls_cert"
        return f"{missing} is not set: TLS needs both tls_cert and tls_key"
    if config.tls_client_ca is not None and config.tls_cert is None:
        return "tls_client_ca (mutual TLS) needs tls_cert and tls_key"
    return None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in OTHER_VARIABLES:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            # A misspelt variable is refused, as an unknown TOML key is, not ignored.
            raise InvalidInput(
                f"unknown setting {name!r} in the environment ({key}); the "
                f"{ENV_PREFIX}* variables that are not settings are {', '.join(OTHER_VARIABLES)}"
            )
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
    config = msgspec.convert(merged, ServerConfig, strict=False)
    problem = tls_problem(config)
    if problem is not None:
        raise InvalidInput(problem)
    return config
