"""Log ingest over HTTP: `POST /v1/logs/{service}/{instance}`, a body of log lines (NDJSON).

Owns: reading the body a line at a time (never whole), a log record per line
(`core.logs.record_from_line`), its `log` event (`core.logs.log_event`) on
`<tenant>/logs/<service>/<instance>`, the event ids that make a retried body
land once (`Idempotency-Key`), appending in batches in line order, and the
answer. Must not decide who may publish (the `authorize` and `charge` hooks
do: the same as `POST /v1/topics/{topic}/events`), nor parse log lines
itself (core.logs does). docs/logs.md "Ingest over HTTP (NDJSON)" is the
reference for clients.

    Content-Type: application/x-ndjson   each line a JSON object (a log record:
                                          message/msg, level, logger, time, ...)
    Content-Type: text/plain             each line plain text, read as `hybridbus log`
                                          reads stdin (a JSON object line too)

The tenant is the caller's (`?tenant=` may name it; an admin, who has none,
must). Empty lines are skipped; lines are numbered from 1 as sent.

Theory of operation. Lines are prepared for the bus (`Bus.prepare`: the
same checks as any publish) as they arrive and appended `max_batch` at a time
(one engine call each, after the caller's publish buckets are charged for
them), so a body of any length holds at most one batch and one line in
memory. The first bad line (NDJSON: not a JSON object; any: not UTF-8, over
the event size) ends the request: the lines before it are appended, none
from it on, and the problem (400 or 413) names it: `line` (its number) and
`accepted` (records appended). Any other refusal on the way (over the
publish rate: 429, over the body limit: 413, too slow: 408) answers the same
`line` (the first line not appended) and `accepted`.

Retries. With `Idempotency-Key: <key>` (1 to 128 printable ASCII characters)
the event of line n has the id `<key>:<n>` and the source
`/logs/<service>/<instance>`, so the same body sent again with the same key
is deduplicated line by line by the bus (within its dedupe window): the
answer counts those lines in `duplicates`, and nothing is appended twice.
Without the key, every line gets a fresh id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

import msgspec
from aiohttp import ClientPayloadError, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from hybridbus.core.log import Ack
from hybridbus.core.logs import LogRecord, log_event, log_topic, record_from_line
from hybridbus.errors import BusError, EventTooLarge, InvalidInput
from hybridbus.gateways.httputil import (
    Authorize,
    BadParameter,
    BodyTimeout,
    BodyTooLarge,
    Charge,
    UnsupportedMediaType,
    allow_all,
    charge_nothing,
    guarded,
    json_response,
    problem,
    query_text,
)
from hybridbus.hub.bus import Bus, Prepared
from hybridbus.hub.guard import Principal
from hybridbus.server.metrics import Metrics

__all__ = ["NDJSON", "LogsConfig", "LogsGateway"]

NDJSON: Final = "application/x-ndjson"
_PLAIN: Final = "text/plain"
_MAX_KEY: Final = 128
_Objects = msgspec.json.Decoder(dict[str, object])

# Who the caller is (for its tenant): `HttpAccess.principal`; None: `?tenant=` is required.
PrincipalOf = Callable[[web.Request], Awaitable[Principal]]


class LogsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the log ingest route (those of the HTTP API: `HttpConfig`)."""

    max_body_size: int = 8 << 20  # a request body, streamed
    max_batch: int = 1000  # lines appended in one engine call at most
    body_timeout: float = 30.0  # to receive the whole body


class _Stop(Exception):
    """The request ends at `line` with `error` (the lines before it appended)."""

    def __init__(self, error: BusError, line: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.line = line


class LogsGateway:
    """Serves `POST /v1/logs/{service}/{instance}` (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        metrics: Metrics,
        config: LogsConfig | None = None,
        *,
        authorize: Authorize = allow_all,
        charge: Charge = charge_nothing,
        principal: PrincipalOf | None = None,
    ) -> None:
        self.bus = bus
        self.config = config or LogsConfig()
        self.charge = charge
        self.published = metrics.publishes.labels(gateway="http")
        self.duplicates = metrics.duplicates.labels(gateway="http")
        self._authorize = authorize
        self._principal = principal

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/logs/{service}/{instance}", guarded(self.ingest))]

    async def _tenant(self, request: web.Request) -> str:
        named = query_text(request, "tenant")
        if named is not None:
            return named
        if self._principal is not None:
            principal = await self._principal(request)
            if not principal.identity.admin:
                return principal.tenant
        raise BadParameter("an admin names the tenant to log in: ?tenant=<tenant>", "tenant")

    async def ingest(self, request: web.Request) -> web.Response:
        """Append a `log` event per line of the body; 201 (200 if every one was a duplicate)."""
        relative = log_topic(request.match_info["service"], request.match_info["instance"])
        media = (request.headers.get(hdrs.CONTENT_TYPE) or "").split(";", 1)[0].strip().lower()
        if media not in (NDJSON, _PLAIN):
            raise UnsupportedMediaType(
                f"a log body is {NDJSON} (a JSON object per line) or {_PLAIN} (a line "
                f"per record), not {media or 'none'!r}"
            )
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (
            0 < len(key) <= _MAX_KEY and key.isascii() and key.isprintable()
        ):
            raise BadParameter(
                f"Idempotency-Key is 1 to {_MAX_KEY} printable ASCII characters", "Idempotency-Key"
            )
        topic = f"{await self._tenant(request)}/{relative}"
        await self._authorize(request, "publish", topic)
        config = self.config
        if request.content_length is not None and request.content_length > config.max_body_size:
            raise BodyTooLarge(config.max_body_size)
        ingest = _Ingest(self, request, topic, relative, key or uuid.uuid4().hex, media)
        try:
            await ingest.run()
        except _Stop as stop:
            return problem(stop.error, line=stop.line, **ingest.answer())
        answer = ingest.answer()
        status = 200 if ingest.acks and ingest.duplicates == len(ingest.acks) else 201
        return json_response(answer, status)


class _Ingest:
    """One request's lines on their way to the bus."""

    def __init__(
        self,
        gateway: LogsGateway,
        request: web.Request,
        topic: str,
        relative: str,
        key: str,
        media: str,
    ) -> None:
        self._gateway = gateway
        self._request = request
        self._topic = topic
        self._source = "/" + relative  # /logs/<service>/<instance>
        self._service = request.match_info["service"]
        self._instance = request.match_info["instance"]
        self._key = key
        self._ndjson = media == NDJSON
        self._batch: list[Prepared] = []
        self.acks: list[Ack] = []
        self.duplicates = 0
        self.pending_from = 1  # the first line not appended yet

    def answer(self) -> dict[str, object]:
        acks = self.acks
        return {
            "accepted": len(acks),
            "duplicates": self.duplicates,
            "first": acks[0].offset if acks else None,
            "last": acks[-1].offset if acks else None,
            "token": str(acks[-1].token) if acks else None,
        }

    async def run(self) -> None:
        """Every line of the body to the bus, in order; `_Stop` at the first that cannot be."""
        most = self._gateway.config.max_batch
        number = 0
        try:
            async with contextlib.aclosing(self._lines()) as lines:
                async for number, line in lines:
                    if not line.strip():
                        continue
                    try:
                        self._batch.append(self._prepare(number, line))
                    except BusError as exc:
                        raise _Stop(exc, number) from None
                    if len(self._batch) >= most:
                        await self._flush(number + 1)
        except _Stop as stop:
            await self._flush(stop.line)  # the lines before it are appended, none after
            raise
        await self._flush(number + 1)

    def _prepare(self, number: int, raw: bytes) -> Prepared:
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"line {number} is not UTF-8 text") from None
        if self._ndjson:
            try:
                _Objects.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                raise InvalidInput(
                    f"line {number} is not a JSON object (an NDJSON log body holds one per line)"
                ) from None
        record: LogRecord = record_from_line(line)
        event = log_event(
            record,
            service=self._service,
            instance=self._instance,
            source=self._source,
            id=f"{self._key}:{number}",
        )
        return self._gateway.bus.prepare(self._topic, event)

    async def _flush(self, next_line: int) -> None:
        """Charge the caller for the batch, append it; `next_line`: the first line after it."""
        batch, self._batch = self._batch, []
        if batch:
            gateway = self._gateway
            try:
                await gateway.charge(self._request, len(batch))  # 429 over the publish rate
                acks = await gateway.bus.append(batch)  # one engine call: all or none
            except BusError as exc:
                raise _Stop(exc, self.pending_from) from None
            self.acks += acks
            duplicates = sum(ack.duplicate for ack in acks)
            self.duplicates += duplicates
            gateway.published.inc(len(acks))
            if duplicates:
                gateway.duplicates.inc(duplicates)
        self.pending_from = next_line

    async def _lines(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """(number, line without its end) of every line of the body, as it arrives."""
        config = self._gateway.config
        longest = self._gateway.bus.config.max_event_size
        # The body must arrive within body_timeout; the time its appends take is not counted.
        within = config.body_timeout
        left = within
        size = number = 0
        rest = b""
        chunks = aiter(self._request.content.iter_chunked(1 << 16))
        try:
            while True:
                started = time.monotonic()
                try:
                    async with asyncio.timeout(left):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    late = BodyTimeout(f"the request body did not arrive within {within:g} s")
                    raise _Stop(late, number + 1) from None
                left -= time.monotonic() - started
                size += len(chunk)
                if size > config.max_body_size:
                    raise _Stop(BodyTooLarge(config.max_body_size), number + 1)
                rest += chunk
                start = 0
                while (end := rest.find(b"\n", start)) >= 0:
                    number += 1
                    yield number, rest[start:end].removesuffix(b"\r")
                    start = end + 1
                rest = rest[start:]
                if len(rest) > longest:  # a line that cannot be an event: no need to read on
                    raise _Stop(EventTooLarge(len(rest), longest), number + 1)
        except (HttpProcessingError, ClientPayloadError, ConnectionError) as exc:
            broken = InvalidInput(f"the request body could not be read: {exc}")
            raise _Stop(broken, number + 1) from exc
        if rest:
            yield number + 1, rest.removesuffix(b"\r")
