"""Helpers for the gRPC gateway's tests (imported as `tests.gateways.grpc_support`).

`GrpcClient` is a client of the `hybridbus.v1.Bus` service over a real
`grpc.aio` channel, with the stubs generated from protos/ (the Python
toolchain; tests/gateways/test_grpc.py drives grpcurl, the Go one, too).
`refused(exc)` reads what a refusal's status and trailing metadata say.
`grpcurl()` finds the grpcurl binary scripts/install-services.sh builds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tests.servers import Server

from hybridbus.core.codecs import encode_json
from hybridbus.core.event import Event, event_from_dict
from hybridbus.gateways.grpc_codec import cloudevent_of, event_of
from hybridbus.gateways.grpc_gen import bus_pb2, bus_pb2_grpc
from hybridbus.serve import GRPC_PORT_KEY

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def grpc_port(server: Server) -> int:
    return server.app[GRPC_PORT_KEY]


@dataclass
class Refusal:
    """What a refused call said: its status, its hybridbus code, its trailing metadata."""

    status: grpc.StatusCode
    code: int | None
    details: str
    trailers: dict[str, str]


def refused(exc: grpc.aio.AioRpcError) -> Refusal:
    trailers = dict(exc.trailing_metadata() or ())
    code = trailers.get("hybridbus-code")
    return Refusal(exc.code(), int(code) if code else None, exc.details() or "", trailers)


def message(event: dict[str, Any]) -> Any:
    """The CloudEvent message of a CloudEvents dict (built by the codec under test)."""
    return cloudevent_of(event_from_dict(event))


def event(delivery: Any) -> Event:
    return event_of(delivery.event)


def as_json(delivery: Any) -> bytes:
    return encode_json(event(delivery))


@dataclass
class GrpcClient:
    """A `Bus` stub over one channel, presenting `credential` (if any) on every call."""

    channel: grpc.aio.Channel
    stub: Any
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, server: Server, credential: str | None = None
    ) -> AsyncIterator[GrpcClient]:
        metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel:
            yield cls(channel, bus_pb2_grpc.BusStub(channel), metadata)

    async def publish(self, topic: str, event: dict[str, Any]) -> Any:
        request = bus_pb2.PublishRequest(topic=topic, event=message(event))
        return await self.stub.Publish(request, metadata=self.metadata, timeout=10)

    async def history(self, pattern: str, since: str = "", limit: int | None = None) -> Any:
        request = bus_pb2.HistoryRequest(pattern=pattern, since=since, limit=limit)
        return await self.stub.History(request, metadata=self.metadata, timeout=10)

    def subscribe(self, pattern: str, since: str = "") -> Any:
        request = bus_pb2.SubscribeRequest(pattern=pattern, since=since)
        return self.stub.Subscribe(request, metadata=self.metadata)

    def ingest(self, requests: Any) -> Any:
        return self.stub.Ingest(requests, metadata=self.metadata)


def publish_request(topic: str, event: dict[str, Any]) -> Any:
    return bus_pb2.PublishRequest(topic=topic, event=message(event))


def grpcurl() -> str:
    """The grpcurl binary: on PATH, or where scripts/install-services.sh builds it."""
    services = os.environ.get("HYBRIDBUS_SERVICES_DIR") or str(
        Path.home() / ".cache" / "hybridbus" / "services"
    )
    found = shutil.which("grpcurl") or shutil.which("grpcurl", path=f"{services}/bin")
    if found is None:
        message = "grpcurl is not installed: bash scripts/install-services.sh"
        if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return found
