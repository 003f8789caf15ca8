"""The OpenAPI document is true: it lists exactly the routes, and the server answers as it says.

schemathesis generates requests from the document (valid and invalid ones)
against a live server (in a thread of its own, as schemathesis calls it
synchronously) and checks every answer: no 5xx, a documented status, content
type, headers and a body matching its schema.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, settings
from tests.gateways.support import serving

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.core.permissions import Policy
from hybridbus.gateways import openapi
from hybridbus.gateways.access import HttpAccess
from hybridbus.gateways.bridges import BridgesGateway
from hybridbus.gateways.console import ConsoleGateway
from hybridbus.gateways.groups import GroupsGateway
from hybridbus.gateways.http import HttpGateway
from hybridbus.gateways.logs_http import LogsGateway
from hybridbus.gateways.nodes import NodesGateway
from hybridbus.gateways.schemas import SchemasGateway
from hybridbus.gateways.states_http import StatesGateway
from hybridbus.gateways.webhook_endpoints import WebhookAdmin, WebhookEndpoints
from hybridbus.gateways.webhooks import WebhooksGateway
from hybridbus.gateways.webhooks_out import WebhooksOutGateway
from hybridbus.hub.group_guard import GroupGuard
from hybridbus.hub.guard import Guard
from hybridbus.hub.states import StateTopics
from hybridbus.serve import create_app
from hybridbus.server.access import ApiKeys
from hybridbus.server.auth import AnonymousAuthenticator
from hybridbus.server.config import ServerConfig
from hybridbus.server.metrics import Metrics
from hybridbus.server.registry import LocalStore, Registry
from hybridbus.server.webhooks_out import Outbound

pytest.importorskip("schemathesis", reason="schemathesis is a test extra")

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_the_document_lists_exactly_the_registered_routes() -> None:
    async with hybridbus.open("memory://") as bus:
        guard = Guard(bus, Policy())
        access = HttpAccess(guard, ApiKeys([]), AnonymousAuthenticator(None))
        groups = GroupsGateway(GroupGuard(guard), access.principal)
        routes = [*HttpGateway(bus, Metrics()).routes(), *access.routes(), *groups.routes()]
        endpoints = WebhookEndpoints(bus.engine)
        routes += WebhooksGateway(endpoints, guard, Metrics()).routes()
        routes += WebhookAdmin(endpoints, guard, access.principal).routes()
        routes += SchemasGateway(bus.schemas, guard, access.principal).routes()
        routes += WebhooksOutGateway(Outbound(bus), guard, access.principal).routes()
        registry = Registry(LocalStore(), ServerConfig())
        routes += NodesGateway(registry, access.principal).routes()
        routes += BridgesGateway(Bridges(bus, []), guard, access.principal).routes()
        console = ConsoleGateway(Metrics(), access.principal).routes()
        routes += [r for r in console if r.path.startswith("/v1/")]  # not its static files
        routes += LogsGateway(bus, Metrics()).routes()
        routes += StatesGateway(StateTopics(bus)).routes()
    registered = {
        (route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path))
        for route in routes
        if isinstance(route, web.RouteDef)
    }
    assert len(registered) == len(routes)
    assert registered == documented()


def test_every_path_parameter_is_declared() -> None:
    document = openapi.document()
    parameters = document["components"]["parameters"]
    for path, item in document["paths"].items():
        declared = set()
        for parameter in item.get("parameters", []):
            parameter = parameters[parameter["$ref"].rsplit("/", 1)[1]]
            if parameter["in"] == "path":
                declared.add(parameter["name"])
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path


async def test_the_server_serves_the_document() -> None:
    async with (
        hybridbus.open("memory://") as bus,
        serving(bus) as api,
        httpx.AsyncClient(base_url=api.base) as client,
    ):
        response = await client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi.document()
    assert response.json()["openapi"] == "3.1.0"


class LiveServer:
    """The server app (`create_app`: the HTTP API and its access hook), on a memory
    engine, with anonymous callers in tenant "acme" allowed everything there, served by
    an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop = asyncio.Event()
        self.base = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.base = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> str:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(ready))
        return await ready

    async def _serve(self, ready: asyncio.Future[str]) -> None:
        config = ServerConfig(
            engine="memory://",
            port=0,
            anonymous_tenant="acme",
            roles={"anonymous": [{"allow": "*", "topics": "#"}]},
        )
        runner = web.AppRunner(await create_app(config), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ready.set_result(f"http://127.0.0.1:{runner.addresses[0][1]}")
            await self.stop.wait()
        finally:
            await runner.cleanup()

    def __exit__(self, *exc: Any) -> None:
        async def finish() -> None:
            self.stop.set()
            await self._task

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    with LiveServer() as server:
        yield server.base


# Log lines (POST /v1/logs/...): an NDJSON body is text, sent as text/plain is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schema = schemathesis.openapi.from_dict(openapi.document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=60
)


@pytest.mark.slow
@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_answers_as_the_document_says(case: Any, live: str) -> None:
    if case.path == "/v1/sse":
        # A stream does not end: read its head only, then hang up.
        kwargs = case.as_transport_kwargs(base_url=live)
        with requests.request(**kwargs, stream=True, timeout=10) as response:
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/event-stream")
                assert next(response.iter_lines()).startswith(b":")
                return
            case.validate_response(response, checks=CHECKS)
        return
    case.call_and_validate(base_url=live, checks=CHECKS, timeout=10)
