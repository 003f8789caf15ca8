"""State topics over HTTP: read a state document, change it with a JSON merge patch.

Owns: `GET /v1/states/{topic}` (the document, its version in the body and as
the ETag) and `PATCH /v1/states/{topic}` (`application/merge-patch+json`,
RFC 7396; `If-Match: "<version>"` makes it a compare-and-set, answered 412
with code 1640 when the version moved on). Topics are ABSOLUTE, as in the
rest of the HTTP API. Must not keep documents or decide conflicts
(`hub.states`, `core.state_doc`); every route calls the `authorize` hook
(`read` to get, `publish` to patch, whose `charge` counts one publish).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import hdrs, web

from hybridbus.core.event import Event
from hybridbus.core.log import Ack
from hybridbus.core.topics import validate_topic
from hybridbus.errors import InvalidInput, StateConflict
from hybridbus.gateways.httputil import (
    Authorize,
    Charge,
    UnsupportedMediaType,
    allow_all,
    charge_nothing,
    guarded,
    json_response,
    problem,
    read_body,
)
from hybridbus.hub.states import StateTopics

__all__ = ["MERGE_PATCH", "StatesGateway"]

MERGE_PATCH: Final = "application/merge-patch+json"
_MAX_BODY: Final = 1 << 20


def _etag(version: int) -> str:
    return f'"{version}"'


def _if_match(value: str | None) -> int | None:
    """The version an If-Match header names (None: no header, or `*`)."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        version = int(text)
    except ValueError:
        raise InvalidInput(f'If-Match is a version in quotes, like "4", not {value!r}') from None
    if version < 0:
        raise InvalidInput("If-Match names a version of 0 or more")
    return version


class StatesGateway:
    """The state-topic routes (see the module docstring)."""

    def __init__(
        self,
        topics: StateTopics,
        *,
        authorize: Authorize = allow_all,
        charge: Charge = charge_nothing,
        body_timeout: float = 30.0,
    ) -> None:
        self._topics = topics
        self._authorize = authorize
        self._charge = charge
        self._body_timeout = body_timeout

    def routes(self) -> list[web.RouteDef]:
        path = "/v1/states/{topic:[\\s\\S]+}"
        return [
            web.get(path, guarded(self.get), allow_head=False),
            web.patch(path, guarded(self.patch)),
        ]

    async def get(self, request: web.Request) -> web.Response:
        """The document and its version (also the ETag)."""
        topic = validate_topic(request.match_info["topic"])
        await self._authorize(request, "read", topic)
        state = await self._topics.get(topic)
        version, document = state.doc.version, state.doc.value
        response = json_response({"topic": topic, "version": version, "document": document})
        response.headers[hdrs.ETAG] = _etag(version)
        return response

    async def patch(self, request: web.Request) -> web.Response:
        """Merge the body into the document: 200 with the new version, 412 on a lost If-Match."""
        topic = validate_topic(request.match_info["topic"])
        await self._authorize(request, "publish", topic)
        media = (request.headers.get(hdrs.CONTENT_TYPE) or "").split(";")[0].strip().lower()
        if media != MERGE_PATCH:
            raise UnsupportedMediaType(f"a state patch is {MERGE_PATCH}, not {media or 'none'!r}")
        if_version = _if_match(request.headers.get(hdrs.IF_MATCH))
        body = await read_body(request, _MAX_BODY, self._body_timeout)
        try:
            patch: Any = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from exc
        await self._charge(request, 1)
        bus = self._topics.bus

        async def publish(event: Event) -> Ack:
            return await bus.publish(topic, event)

        try:
            applied = await self._topics.patch(topic, patch, publish, if_version=if_version)
        except StateConflict as exc:  # 412, with the version to read the document at
            return problem(exc, version=exc.version)
        response = json_response({"topic": topic, "version": applied.version})
        response.headers[hdrs.ETAG] = _etag(applied.version)
        return response
