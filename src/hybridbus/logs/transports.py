"""Transports: how a batch of log events reaches the bus — WebSocket, gRPC, HTTP, a file.

Owns: the `Transport` interface, `Rejected` (the server refused events for
good), and the four built-in transports, chosen by URL scheme
(`hybridbus.logs.plugins.transport`): `ws://` / `wss://` (the Python client,
one `publish` frame per batch), `grpc://` / `grpcs://` (one client-streaming
`Ingest` call per batch), `http://` / `https://` (`POST
/v1/topics/{tenant}/{topic}/events`, the CloudEvents batch format) and
`file:///path` (formatted lines appended to a file). Must not queue, retry
or decide what to ship: the `Shipper` does.

The secure schemes (`wss://`, `grpcs://`, `https://`) verify the server's
certificate against the system's CAs, or `ca=` (a PEM file of CA
certificates, or an `ssl.SSLContext`: `hybridbus.client.tls`).

A transport's `send(topic, events)` gets a tenant-relative topic
(`logs/<service>/<instance>`): the WebSocket client's topics are relative to
its token's tenant; HTTP and gRPC topics are absolute, so those transports
put their tenant in front (given as `tenant=`, `?tenant=` in the URL, or
read from the token's `tenantid` claim). `send` returns once every event is
appended, raises `Rejected` when the server refused some for good (the
others are appended), and raises anything else when it could not tell (the
Shipper sends the batch again: the server dedupes by `source` + `id`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from hybridbus.core.codecs import encode_json, encode_json_batch
from hybridbus.core.event import Event
from hybridbus.core.logs import record_from_data
from hybridbus.errors import InvalidInput, RemoteError
from hybridbus.logs.formatters import Formatter, JsonFormatter

if TYPE_CHECKING:  # (hybridbus.client loads aiohttp: each transport loads what it uses)
    from hybridbus.client.tls import Ca

__all__ = [
    "FileTransport",
    "GrpcTransport",
    "HttpTransport",
    "Rejected",
    "Transport",
    "TransportError",
    "WebSocketTransport",
]

# Events per HTTP request: the server's batch limit (docs/http.md §8).
HTTP_BATCH: Final = 1000
# Bytes of JSON per WebSocket frame, and per event: below the server's max_frame_size (1 MiB).
WS_FRAME_BYTES: Final = 256 << 10
WS_EVENT_BYTES: Final = 1_000_000
# Bytes of one Ingest message at most: the bus's event limit (1 MiB).
GRPC_EVENT_BYTES: Final = 1 << 20


class Rejected(Exception):
    """The server refused events for good; sending them again would fail again.

    `refused` are the indexes of those events in the batch (all of them when
    the whole batch was refused); every other event of the batch was appended.
    """

    def __init__(self, message: str, refused: list[int]) -> None:
        super().__init__(message)
        self.refused = refused


class TransportError(Exception):
    """Sending failed in a way that may pass (the server is away, busy, restarting)."""


@runtime_checkable
class Transport(Protocol):
    """Carries batches of `log` events to the bus (module docstring)."""

    async def open(self) -> None: ...

    async def send(self, topic: str, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


def _tenant_of_token(token: str | None) -> str | None:
    """The `tenantid` claim of a JWT, read without checking it (the server checks)."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    tenant = claims.get("tenantid") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) and tenant else None


def _tenant(url: str, tenant: str | None, token: str | None) -> str:
    found = tenant or parse_qs(urlsplit(url).query).get("tenant", [None])[-1]
    found = found or _tenant_of_token(token)
    if not found:
        raise InvalidInput(
            f"{urlsplit(url).scheme} log transport needs the tenant (its topics are absolute): "
            "pass tenant=..., add ?tenant=... to the URL, or use a JWT with a tenantid claim"
        )
    return found


# -- WebSocket ------------------------------------------------------------------------------


class WebSocketTransport:
    """Publishes each batch in one frame through `hybridbus.client` (it reconnects by itself)."""

    def __init__(self, url: str, *, token: str | None = None, ca: Ca | None = None) -> None:
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            url = urlunsplit(parts._replace(path="/v1/ws"))
        self.url = url
        self.token = token
        self.ca = ca
        self._client: Any = None

    async def open(self) -> None:
        from hybridbus.client import connect

        self._client = await connect(self.url, token=self.token, ca=self.ca)

    async def send(self, topic: str, events: list[Event]) -> None:
        client = self._client
        if client is None:
            raise TransportError("not open")
        refused: list[int] = []
        reason = ""
        chunk: list[tuple[int, Event]] = []
        size = 0
        for index, event in enumerate(events):
            # A frame over the server's max_frame_size would close the connection,
            # and sending it again would close it again: frames stay well below.
            length = len(encode_json(event))
            if length > WS_EVENT_BYTES:
                refused.append(index)
                reason = f"the event is {length} bytes of JSON, over {WS_EVENT_BYTES}"
                continue
            if chunk and size + length > WS_FRAME_BYTES:
                reason = await self._publish(client, topic, chunk, refused) or reason
                chunk, size = [], 0
            chunk.append((index, event))
            size += length
        if chunk:
            reason = await self._publish(client, topic, chunk, refused) or reason
        if refused:
            raise Rejected(reason, sorted(refused))

    @staticmethod
    async def _publish(
        client: Any, topic: str, chunk: list[tuple[int, Event]], refused: list[int]
    ) -> str:
        """Publish `chunk` in one frame; the indexes the server refused go to `refused`."""
        try:
            await client.publish_many(topic, [event for _, event in chunk])
            return ""
        except RemoteError as exc:
            if exc.retriable:
                raise
            reason = str(exc)
        # Some were refused, the others published: find which, one at a time
        # (those published already come back as duplicates).
        for index, event in chunk:
            try:
                await client.publish(topic, event)
            except RemoteError as one:
                if one.retriable:
                    raise
                refused.append(index)
                reason = str(one)
        return reason

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


# -- HTTP -----------------------------------------------------------------------------------


class HttpTransport:
    """`POST /v1/topics/{tenant}/{topic}/events` in the CloudEvents batch format."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 30.0,
        ca: Ca | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.token = token
        self.tenant = _tenant(url, tenant, token)
        self.timeout = timeout
        from hybridbus.client.tls import client_context

        self._ssl = client_context(ca)  # None: aiohttp verifies with the system's CAs
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        headers = {"Content-Type": "application/cloudevents-batch+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(ssl=True if self._ssl is None else self._ssl),
        )

    async def _post(self, topic: str, events: list[Event]) -> tuple[int, dict[str, Any]]:
        import aiohttp

        if self._session is None:
            raise TransportError("not open")
        url = f"{self.base}/v1/topics/{quote(self.tenant, safe='')}/{topic}/events"
        try:
            # A file-like body: aiohttp warns that large bytes might stall its loop.
            body = io.BytesIO(encode_json_batch(events))
            async with self._session.post(url, data=body) as response:
                if response.status < 300:
                    await response.read()
                    return response.status, {}
                try:
                    problem = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    problem = {}
                return response.status, problem if isinstance(problem, dict) else {}
        except aiohttp.ClientError as exc:
            raise TransportError(f"POST {url}: {exc}") from exc

    async def send(self, topic: str, events: list[Event]) -> None:
        chunks = [
            list(enumerate(events))[start : start + HTTP_BATCH]
            for start in range(0, len(events), HTTP_BATCH)
        ]
        refused: list[int] = []
        reason = ""
        while chunks:
            chunk = chunks.pop(0)
            status, problem = await self._post(topic, [event for _, event in chunk])
            if status < 300:
                continue
            detail = f"{status}: {problem.get('detail') or problem.get('title') or 'refused'}"
            if status == 429 or status >= 500 or problem.get("retriable") is True:
                raise TransportError(detail)
            reason = detail
            index = problem.get("index")
            if isinstance(index, int) and 0 <= index < len(chunk):
                # Nothing of the batch was appended: send it again without that event.
                refused.append(chunk[index][0])
                rest = chunk[:index] + chunk[index + 1 :]
                if rest:
                    chunks.insert(0, rest)
            elif status == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]
            else:
                refused.extend(i for i, _ in chunk)
        if refused:
            raise Rejected(reason, sorted(refused))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# -- gRPC -----------------------------------------------------------------------------------


class GrpcTransport:
    """One client-streaming `Ingest` call per batch (protos/hybridbus/v1/bus.proto).

    Uses the stubs generated into `hybridbus.gateways.grpc_gen` and the
    CloudEvent conversion of `hybridbus.gateways.grpc_codec` (pure, no
    server): one `.proto`, one conversion, on both sides.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 30.0,
        ca: Ca | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        parts = urlsplit(url)
        if not parts.hostname or parts.port is None:
            raise InvalidInput(f"a gRPC log URL is grpc://host:port, not {url!r}")
        self.target = f"{parts.hostname}:{parts.port}"
        self.secure = parts.scheme == "grpcs"
        from hybridbus.client.tls import ca_pem, client_pem

        self._roots = ca_pem(ca)  # None: grpc verifies with the system's CAs
        # For mutual TLS: the client certificate (chain) and its key, as PEM bytes.
        self._mine = None if cert is None else client_pem(cert, key)
        self.token = token
        self.tenant = _tenant(url, tenant, token)
        self.timeout = timeout
        self._channel: Any = None
        self._stub: Any = None

    async def open(self) -> None:
        import grpc

        from hybridbus.gateways.grpc_codec import generated

        _, bus_grpc, _ = generated()
        if self.secure:
            chain, private = self._mine or (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._roots, private_key=private, certificate_chain=chain
            )
            self._channel = grpc.aio.secure_channel(self.target, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = bus_grpc.BusStub(self._channel)

    async def send(self, topic: str, events: list[Event]) -> None:
        import grpc

        from hybridbus.gateways.grpc_codec import (
            CODE_KEY,
            INDEX_KEY,
            RETRIABLE_KEY,
            cloudevent_of,
            generated,
        )

        if self._stub is None:
            raise TransportError("not open")
        bus, _, _ = generated()
        absolute = f"{self.tenant}/{topic}"
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        refused: list[int] = []
        reason = ""
        todo: list[tuple[int, Any]] = []
        for index, event in enumerate(events):
            request = bus.PublishRequest(topic=absolute, event=cloudevent_of(event))
            # Over the server's message limit gRPC itself refuses the call (no
            # hybridbus code): it would be refused again and again.
            if request.ByteSize() > GRPC_EVENT_BYTES:
                refused.append(index)
                reason = f"the event is {request.ByteSize()} bytes, over {GRPC_EVENT_BYTES}"
            else:
                todo.append((index, request))
        while todo:
            try:
                requests = iter(_batched(bus, absolute, [request for _, request in todo]))
                await self._stub.Ingest(requests, metadata=metadata, timeout=self.timeout)
                break
            except grpc.aio.AioRpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())
                reason = f"{exc.code().name}: {exc.details()}"
                if CODE_KEY not in trailers or trailers.get(RETRIABLE_KEY) != "false":
                    raise TransportError(reason) from exc
                at = str(trailers.get(INDEX_KEY, ""))
                if not at.isdigit() or int(at) >= len(todo):
                    refused.extend(i for i, _ in todo)
                    break
                # The events before it were appended: go on after it.
                refused.append(todo[int(at)][0])
                todo = todo[int(at) + 1 :]
        if refused:
            raise Rejected(reason, sorted(refused))

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


def _batched(bus: Any, topic: str, requests: list[Any]) -> list[Any]:
    """The events of one-event `requests`, packed into few Ingest messages (`events`).

    gRPC costs per message: a message per event cost ~4x the server CPU of a
    WebSocket batch (docs/benchmarks.md §12). Each message stays under
    `GRPC_EVENT_BYTES` (the server refuses larger ones); the server's refusal
    index counts events, so it means the same packed or not.
    """
    out: list[Any] = []
    events: list[Any] = []
    size = 0
    for request in requests:
        grows = request.ByteSize()
        if events and size + grows > GRPC_EVENT_BYTES:
            out.append(bus.PublishRequest(topic=topic, events=events))
            events, size = [], 0
        events.append(request.event)
        size += grows
    if events:
        out.append(bus.PublishRequest(topic=topic, events=events))
    return out


# -- file -----------------------------------------------------------------------------------


class FileTransport:
    """Appends each record, formatted, to a file (`file:///var/log/api.log?format=plain`).

    The format is `formatter=` (a `Formatter`), else the URL's `?format=`
    (a formatter's name), else JSON lines.
    """

    def __init__(self, url: str, *, formatter: Formatter | None = None) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise InvalidInput(f"a file log URL is file:///absolute/path, not {url!r}")
        self.path = Path(unquote(parts.path))
        if formatter is None:
            name = parse_qs(parts.query).get("format", [None])[-1]
            if name is not None:
                from hybridbus.logs.plugins import formatter as by_name

                formatter = by_name(name)
        self.formatter: Formatter = formatter or JsonFormatter()
        self._file: Any = None

    # Plain blocking writes: this runs on the Shipper's own loop in its own thread, where
    # nothing else waits, and a thread pool is refused at interpreter exit, just when
    # `logging.shutdown()` flushes the handlers.
    async def open(self) -> None:
        self._file = self.path.open("ab")

    async def send(self, topic: str, events: list[Event]) -> None:
        if self._file is None:
            raise TransportError("not open")
        _, service, instance = topic.split("/", 2)
        lines = [
            self.formatter.format(record_from_data(event.data), service, instance)
            for event in events
        ]
        self._file.write(b"".join(lines))
        self._file.flush()

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
