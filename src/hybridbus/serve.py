"""`hybridbus serve`: the app factory and the process around it.

Owns: wiring one server process — the bus on the configured engine
(`hybridbus.open`, with `app.py` the only places that pick concrete engines),
the metrics, the node, and the aiohttp application with every gateway's
routes — and running it: uvloop when installed, the open-file limit raised,
the listener with its header timeouts (`gateways/listener.py`), `reuse_port`
from the config, SIGTERM/SIGINT -> graceful shutdown -> exit 0, structured
logs. Must not hold protocol, bus or gateway logic.

Shutdown order (aiohttp's runner cleanup): stop listening; remove this
node from the node registry (`server/registry.py`); end the SSE
streams and close every WebSocket connection with 4000 after flushing it
(`on_shutdown`); let HTTP requests finish within `shutdown_timeout`; close
the bus, which commits the engine (`on_cleanup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from hybridbus.app import open as open_bus
from hybridbus.bridges.registry import Bridges
from hybridbus.core.cors import CorsPolicy
from hybridbus.errors import BusError, InvalidInput
from hybridbus.gateways.access import HttpAccess
from hybridbus.gateways.bridges import BridgesGateway
from hybridbus.gateways.console import ConsoleGateway
from hybridbus.gateways.cors import install_cors
from hybridbus.gateways.groups import GroupsConfig, GroupsGateway
from hybridbus.gateways.health import HealthGateway
from hybridbus.gateways.http import HttpConfig, HttpGateway
from hybridbus.gateways.listener import ListenerConfig, ListenerSite, raise_nofile_limit
from hybridbus.gateways.logs_http import LogsConfig, LogsGateway
from hybridbus.gateways.nodes import NodesGateway
from hybridbus.gateways.schemas import SchemasConfig, SchemasGateway
from hybridbus.gateways.sse import SseConfig
from hybridbus.gateways.states_http import StatesGateway
from hybridbus.gateways.webhook_endpoints import WebhookAdmin, WebhookEndpoints
from hybridbus.gateways.webhooks import WebhooksConfig, WebhooksGateway
from hybridbus.gateways.webhooks_out import WebhooksOutGateway
from hybridbus.gateways.websocket import WebSocketGateway
from hybridbus.gateways.yjs import YjsGateway
from hybridbus.server.access import ApiKeys
from hybridbus.server.auth import Authenticator
from hybridbus.server.awareness_relay import TopicAwarenessRelay
from hybridbus.server.config import ServerConfig, engine_config
from hybridbus.server.groups import locator
from hybridbus.server.limits_redis import RedisLimits
from hybridbus.server.logs import configure_logging
from hybridbus.server.metrics import Metrics
from hybridbus.server.node import SERVER_VERSION, Node
from hybridbus.server.presence_redis import RedisPresence
from hybridbus.server.redis_shared import shared_redis
from hybridbus.server.registry import Registry, registry_of
from hybridbus.server.rooms import RoomsConfig
from hybridbus.server.rooms_node import Rooms
from hybridbus.server.rooms_relay import AwarenessRelay
from hybridbus.server.tls import ServerTls, server_tls
from hybridbus.server.tracing_start import trace
from hybridbus.server.webhooks_out import Outbound

__all__ = [
    "GRPC_PORT_KEY",
    "METRICS_KEY",
    "NODE_KEY",
    "REGISTRY_KEY",
    "ROOMS_KEY",
    "TLS_KEY",
    "create_app",
    "run",
    "serve",
]

log = logging.getLogger("hybridbus.serve")

NODE_KEY: Final = web.AppKey("hybridbus.node", Node)
METRICS_KEY: Final = web.AppKey("hybridbus.metrics", Metrics)
REGISTRY_KEY: Final = web.AppKey("hybridbus.registry", Registry)
GRPC_PORT_KEY: Final = web.AppKey("hybridbus.grpc_port", int)  # set when gRPC is on
ROOMS_KEY: Final = web.AppKey("hybridbus.rooms", Rooms)  # the Yjs rooms
# The app's certificate (set when tls_cert is): the app watches it; the listener serves it.
TLS_KEY: Final = web.AppKey("hybridbus.tls", ServerTls)


async def create_app(
    config: ServerConfig, *, authenticator: Authenticator | None = None
) -> web.Application:
    """The application of one server process, its bus open and its node started.

    Run it with an aiohttp runner; the runner's cleanup shuts the node down
    and closes the bus.
    """
    cors = CorsPolicy(config.cors_origins)  # a bad pattern fails before the engine opens
    tls = server_tls(config)  # so does a bad certificate (server/tls.py)
    # The node registry (server/registry.py): this node's entry under a heartbeat lease.
    registry = registry_of(config, lambda: node.connections, SERVER_VERSION)
    bus = await open_bus(config.engine, engine=engine_config(config))
    # [tracing] (docs/tracing.md): off, OpenTelemetry is not imported
    close_tracing = trace(bus, config.tracing, node=registry.id, engine=config.engine.split(":")[0])
    # One node coordinates each consumer group on a shared engine (docs/groups.md).
    coordination = bus.groups.coordination
    coordination.node, coordination.ttl = registry.id, config.group_lease_ttl
    coordination.locate = locator(registry)
    metrics = Metrics()
    metrics.watch_groups(bus.groups)
    node = Node(bus, config, metrics, authenticator)
    # Presence and the tenant publish rate across nodes, in the Redis they share (if any).
    shared = shared_redis(config)
    presence = limits = None
    topic_awareness = None  # awareness on plain topics across nodes (docs/collaboration.md)
    if shared is not None:
        presence = RedisPresence(node.presence, shared, node=registry.id, ttl=config.registry_ttl,
                                 sessions=node.sessions)  # fmt: skip
        topic_awareness = TopicAwarenessRelay(shared, node=registry.id, ttl=config.registry_ttl)
        tenants = node.guard.limits
        if tenants.tenant_rate > 0:
            burst = tenants.tenant_burst or tenants.tenant_rate
            limits = RedisLimits(shared, rate=tenants.tenant_rate, burst=burst)
            node.guard.share_tenant_limits(limits)
    outbound = Outbound(  # outbound webhooks: a consumer group and a sender each
        bus,
        config.outbound_webhooks,
        allow_private=config.webhook_allow_private,
        on_attempt=metrics.webhook_attempt,
    )
    bridges = Bridges(bus, config.bridges)  # [[bridges]]: MQTT, PostgreSQL, ... (docs/bridges.md)
    bridges.expose(metrics.registry)
    close_grpc: Callable[[], Awaitable[None]] | None = None
    try:
        await node.start()
        await registry.start()  # registers in the background: never waits for the store
        if presence is not None:
            await presence.start()  # in the background too, as are the limits' leases
        if limits is not None:
            await limits.start()
        if topic_awareness is not None:
            node.awareness.relay = topic_awareness
            topic_awareness.follow(node.awareness)  # in the background too
        access = HttpAccess(node.guard, ApiKeys(config.api_keys), node.authenticator)
        http = HttpGateway(
            bus,
            metrics,
            node.clients,
            config=HttpConfig(
                body_timeout=config.body_timeout,
                sse=SseConfig(max_pending_bytes=config.max_pending_bytes),
            ),
            authorize=access.authorize,
            charge=access.charge,
            hold=access.holding(node.hold),  # SSE streams count and end like connections
            visibility=access.visibility,  # a topic listing shows what the caller may read
        )
        groups = GroupsGateway(  # consumer groups over HTTP: pull, settle, manage
            node.groups,
            access.principal,
            config=GroupsConfig(body_timeout=config.body_timeout),
            hold=access.holding(node.hold),  # a waiting fetch counts and ends like a stream
        )
        await outbound.start()
        await bridges.start()
        endpoints = WebhookEndpoints(bus.engine, config.webhooks, bus.changes)  # inbound webhooks
        await endpoints.start()
        webhooks = WebhooksGateway(
            endpoints,
            node.guard,
            metrics,
            WebhooksConfig(
                body_timeout=config.body_timeout, audit_failures=config.webhook_audit_failures
            ),
        )
        app = web.Application()
        app[NODE_KEY] = node
        app[METRICS_KEY] = metrics
        app[REGISTRY_KEY] = registry
        if tls is not None:  # the listeners' certificate, reloaded when its files change
            app[TLS_KEY] = tls
            tls.start()
        if config.grpc_port is not None:  # the gRPC API on its own port (docs/grpc.md)
            app[GRPC_PORT_KEY], close_grpc = await _start_grpc(config, node, access, metrics, tls)
        install_cors(app, cors)  # preflights and grants under /v1/
        app.add_routes(WebSocketGateway(node).routes())
        relay = None  # Yjs awareness across nodes, through the Redis they share (if any)
        if shared is not None:
            relay = AwarenessRelay(shared, node=registry.id, ttl=config.registry_ttl)
        rooms = app[ROOMS_KEY] = Rooms(bus, _rooms_config(config), relay)
        yjs = YjsGateway(node, access, rooms)  # Yjs documents (docs/collaboration.md)
        app.add_routes(yjs.routes())
        app.add_routes(http.routes())
        app.add_routes(  # log lines over HTTP (NDJSON): the same hooks as a publish
            LogsGateway(
                bus,
                metrics,
                LogsConfig(body_timeout=config.body_timeout),
                authorize=access.authorize,
                charge=access.charge,
                principal=access.principal,
            ).routes()
        )
        app.add_routes(groups.routes())
        app.add_routes(  # state documents over HTTP (docs/collaboration.md): hooks as a publish
            StatesGateway(
                node.states.topics,
                authorize=access.authorize,
                charge=access.charge,
                body_timeout=config.body_timeout,
            ).routes()
        )
        schemas = SchemasGateway(  # the event types' JSON Schemas (docs/schemas.md)
            bus.schemas,
            node.guard,
            access.principal,
            config=SchemasConfig(body_timeout=config.body_timeout),
        )
        app.add_routes(schemas.routes())
        app.add_routes(access.routes())
        app.add_routes(webhooks.routes())
        app.add_routes(WebhookAdmin(endpoints, node.guard, access.principal).routes())
        app.add_routes(
            WebhooksOutGateway(
                outbound, node.guard, access.principal, body_timeout=config.body_timeout
            ).routes()
        )
        app.add_routes(HealthGateway(node, metrics).routes())
        app.add_routes(NodesGateway(registry, access.principal).routes())
        app.add_routes(BridgesGateway(bridges, node.guard, access.principal).routes())
        app.add_routes(ConsoleGateway(metrics, access.principal).routes())  # /console
    except BaseException:
        if tls is not None:
            await tls.close()
        if close_grpc is not None:
            await close_grpc()
        await registry.close()
        if presence is not None:
            await presence.close()
        if limits is not None:
            await limits.close()
        if topic_awareness is not None:
            await topic_awareness.close()
        await bridges.close()
        await outbound.close()
        await node.shutdown()
        if close_tracing is not None:
            await close_tracing()
        raise

    async def close_connections(app: web.Application) -> None:
        await registry.close()  # deregistered at once: no one is sent here any more
        if presence is not None:
            await presence.close()  # this node's members leave every node's view at once
        http.close()  # ends the SSE streams
        if close_grpc is not None:
            await close_grpc()  # ends the gRPC streams, stops its server
        groups.close()  # ends the waiting fetches
        await yjs.close()  # Yjs sockets (4498), then every room's last snapshot
        await node.close_connections()
        if topic_awareness is not None:
            await topic_awareness.close()  # the removals just made, then `gone`
        await webhooks.close()  # the audit events of failed checks being appended

    async def shutdown(app: web.Application) -> None:
        if tls is not None:
            await tls.close()  # stop watching the certificate's files
        await bridges.close()  # before the bus closes: what is unconfirmed comes again
        await outbound.close()  # the senders, before the bus closes
        await node.shutdown()
        if close_tracing is not None:
            await close_tracing()  # the spans left are exported
        if limits is not None:
            await limits.close()

    app.on_shutdown.append(close_connections)
    app.on_cleanup.append(shutdown)
    return app


def _rooms_config(config: ServerConfig) -> RoomsConfig:
    return RoomsConfig(
        compact_every=config.yjs_compact_every,
        compact_interval=config.yjs_compact_interval,
        idle_unload=config.yjs_idle_unload,
        max_awareness_bytes=config.yjs_max_awareness_bytes,
    )


async def _start_grpc(
    config: ServerConfig, node: Node, access: HttpAccess, metrics: Metrics, tls: ServerTls | None
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Start the gRPC gateway; its port and its close. Loaded only when `grpc_port` is set."""
    try:
        from hybridbus.gateways.grpc_bus import GrpcConfig, GrpcGateway
    except ImportError as exc:  # the `grpc` extra is not installed
        raise InvalidInput(
            f"grpc_port is set but gRPC cannot load ({exc}): pip install -e '.[grpc]'"
        ) from exc
    gateway = GrpcGateway(
        node.bus,
        node.guard,
        access,  # the same principals, rules and tenant scoping as HTTP
        node.hold,  # streams count and end like connections
        metrics,
        GrpcConfig(
            host=config.host,
            port=config.grpc_port or 0,
            reuse_port=config.reuse_port,
            max_pending_bytes=config.max_pending_bytes,
        ),
        tls,  # TLS, mutual TLS and reloads as the HTTP listener's
    )
    return await gateway.start(), gateway.close


async def serve(
    config: ServerConfig,
    *,
    authenticator: Authenticator | None = None,
    stop: asyncio.Event | None = None,
    listening: Callable[[list[Any]], None] | None = None,
) -> None:
    """Serve until `stop` is set (default: until SIGTERM or SIGINT), then shut down."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    app = await create_app(config, authenticator=authenticator)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=config.shutdown_timeout
    )
    await runner.setup()
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        # Header timeouts and a cap on connections waiting for theirs (slowloris).
        tls = app.get(TLS_KEY)  # HTTPS and WSS with it, the newest after a reload
        site = ListenerSite(runner, ListenerConfig.of(config), tls=tls)
        await site.start()
        addresses = [list(address[:2]) for address in runner.addresses]
        log.info(
            "listening",
            extra={
                "addresses": addresses,
                "engine": config.engine,
                "pid": os.getpid(),
                "tls": tls is not None,
            },
        )
        app[REGISTRY_KEY].listening(runner.addresses)
        if listening is not None:
            listening(addresses)
        for number in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(number, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        for number in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(number)
        await runner.cleanup()
    log.info("stopped")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# The cyclic collector's thresholds for a server process (CPython's default: 700, 10, 10).
# Measured in the 10,000-connection soak (docs/benchmarks.md): with the default, young
# collections ran every few hundred allocations and older ones scanned every connection's
# objects, stalling the loop for 10-60 ms (p99.9 28 ms); with these and the startup objects
# frozen, p99 and p99.9 halve. Acyclic garbage is freed by reference counting as before.
_GC_THRESHOLDS: Final = (20_000, 20, 50)


def _tune_gc() -> None:
    """Collect cycles less often, and never scan what was made at startup (imports, config)."""
    gc.set_threshold(*_GC_THRESHOLDS)
    gc.freeze()


def run(config: ServerConfig) -> int:
    """Run `hybridbus serve` in this process; the exit status (0 after a clean shutdown).

    Returns 2 for a bad logging setting, 1 when the server cannot start
    (port taken, engine unavailable).
    """
    try:
        configure_logging(config.log_level, config.log_format)
    except ValueError as exc:
        print(f"hybridbus serve: {exc}", file=sys.stderr)
        return 2
    _tune_gc()
    factory = _loop_factory()
    log.info("starting", extra={"loop": "uvloop" if factory else "asyncio"})
    # Every connection is a file: the soft limit (often 1024) would shut clients out early.
    soft_before, soft, hard = raise_nofile_limit()
    log.info("nofile", extra={"soft_before": soft_before, "soft": soft, "hard": hard})
    failure: BaseException | None = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config))
    except (OSError, BusError) as exc:
        failure = exc
    if failure is not None:
        log.error("cannot serve: %s", failure, extra={"error": type(failure).__name__})
        return 1
    return 0
