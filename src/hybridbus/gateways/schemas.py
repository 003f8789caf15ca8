"""The schema registry over HTTP: list, show, register and test event types' JSON Schemas.

Owns: the routes under `/v1/schemas` (docs/schemas.md, docs/http.md), their
JSON bodies and answers, and who may do what with them. Must not hold any
registry logic (`hub.schemas`) nor decide permissions itself (the guard does).

    GET  /v1/schemas                      the types with schemas, their mode and latest
    GET  /v1/schemas/{type}               one type: mode and its versions
    POST /v1/schemas/{type}               register a version  {"schema": {...}}   (manage)
    GET  /v1/schemas/{type}/{version}     one version with its schema (a number or latest)
    PUT  /v1/schemas/{type}/mode          set the compatibility mode  {"mode": "full"} (manage)
    POST /v1/schemas/{type}/test          check sample data, publish nothing
                                          {"data": ...} or {"event": {CloudEvent}}

Who. Schemas belong to a tenant: `{type}` is a type of the caller's tenant;
an admin names it `<tenant>/<type>`, percent-encoded (`acme%2Fcom.acme.order`).
Reading and testing need only a caller the server accepts (a tenant's
publishers must know the shape it wants); registering a version and setting
a mode need the operation `manage` on the tenant-relative pattern
`$schemas/<type>` — a rule `{allow = ["manage"], topics = "$schemas/#"}`
grants it for every type, and so does any rule allowing `manage` on `#`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from hybridbus.core.event import event_from_dict
from hybridbus.core.schemas import SchemaVersion, check_type_name
from hybridbus.gateways.httputil import BadParameter, guarded, json_response, read_body
from hybridbus.hub.guard import Guard, Principal
from hybridbus.hub.schemas import Schemas, TypeInfo

__all__ = ["SchemasConfig", "SchemasGateway"]

PrincipalOf = Callable[[web.Request], Awaitable[Principal]]
_Body = TypeVar("_Body")
_PREFIX: Final = "/v1/schemas"


class SchemasConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the schema routes (bytes, seconds)."""

    max_body_size: int = 1 << 20  # a request body: a schema, or sample data
    body_timeout: float = 30.0  # to receive it


class _RegisterBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema: dict[str, Any] | bool


class _ModeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: str


class _TestBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data: Any = msgspec.UNSET
    event: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    version: int | str | None = None


class SchemasGateway:
    """The schema routes over one bus's `Schemas` (see the module docstring)."""

    def __init__(
        self,
        schemas: Schemas,
        guard: Guard,
        principal: PrincipalOf,
        *,
        config: SchemasConfig | None = None,
    ) -> None:
        self._schemas = schemas
        self._guard = guard
        self._principal = principal
        self._config = config or SchemasConfig()

    def routes(self) -> list[web.RouteDef]:
        """Every schema route; each answers errors as problem+json."""
        one = _PREFIX + "/{type}"
        return [
            web.get(_PREFIX, guarded(self.list), allow_head=False),
            web.get(one, guarded(self.show), allow_head=False),
            web.post(one, guarded(self.register)),
            web.put(one + "/mode", guarded(self.mode)),
            web.post(one + "/test", guarded(self.test)),
            web.get(one + "/{version}", guarded(self.version), allow_head=False),
        ]

    # -- helpers -----------------------------------------------------------------------

    async def _body(self, request: web.Request, kind: type[_Body]) -> _Body:
        config = self._config
        raw = await read_body(request, config.max_body_size, config.body_timeout)
        try:
            return msgspec.json.decode(raw.strip() or b"{}", type=kind)
        except msgspec.ValidationError as exc:
            raise BadParameter(f"bad body: {exc}", "body") from None
        except (msgspec.DecodeError, RecursionError):
            raise BadParameter("the body must be a JSON object", "body") from None

    @staticmethod
    def _named(principal: Principal, request: web.Request) -> tuple[str, str]:
        """(tenant, type) of the request's `{type}` for `principal`."""
        name = request.match_info["type"]
        if principal.identity.admin:
            tenant, sep, type = name.partition("/")
            if not sep or not tenant:
                raise BadParameter(
                    f"an admin names a type '<tenant>/<type>', not {name!r:.140}", "type"
                )
            return tenant, type
        return principal.tenant, name

    def _manage(self, principal: Principal, type: str) -> None:
        """Raise `Forbidden` unless `principal` may manage the schemas of `type`."""
        self._guard.check(principal, "manage", f"$schemas/{check_type_name(type)}")

    @staticmethod
    def _type_json(principal: Principal, info: TypeInfo) -> dict[str, Any]:
        name = f"{info.tenant}/{info.type}" if principal.identity.admin else info.type
        return {
            "name": name,
            "tenant": info.tenant,
            "type": info.type,
            "mode": info.mode,
            "latest": info.versions,
            "uri": info.uri,
        }

    @staticmethod
    def _version_json(tenant: str, version: SchemaVersion) -> dict[str, Any]:
        return {
            "tenant": tenant,
            "type": version.type,
            "version": version.version,
            "uri": version.uri,
            "registered": version.registered,
            "schema": version.schema,
        }

    # -- the routes ----------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        """The caller's tenant's types with schemas (an admin's: every tenant's)."""
        principal = await self._principal(request)
        tenant = None if principal.identity.admin else principal.tenant
        infos = self._schemas.types(tenant)
        return json_response({"schemas": [self._type_json(principal, i) for i in infos]})

    async def show(self, request: web.Request) -> web.Response:
        """One type: its mode, and its versions oldest first (without their schemas)."""
        principal = await self._principal(request)
        tenant, type = self._named(principal, request)
        body = self._type_json(principal, self._schemas.info(tenant, type))
        body["versions"] = [
            {"version": v.version, "uri": v.uri, "registered": v.registered}
            for v in self._schemas.versions(tenant, type)
        ]
        return json_response(body)

    async def version(self, request: web.Request) -> web.Response:
        """One version of a type, with its schema; `latest` names the latest."""
        principal = await self._principal(request)
        tenant, type = self._named(principal, request)
        found = self._schemas.get(tenant, type, request.match_info["version"])
        return json_response(self._version_json(tenant, found))

    async def register(self, request: web.Request) -> web.Response:
        """Register `schema` as the type's next version: 201, or 200 if it is registered."""
        principal = await self._principal(request)
        tenant, type = self._named(principal, request)
        self._manage(principal, type)
        asked = await self._body(request, _RegisterBody)
        found, created = await self._schemas.register(tenant, type, asked.schema)
        response = json_response(self._version_json(tenant, found), 201 if created else 200)
        response.headers["Location"] = f"{request.rel_url.raw_path}/{found.version}"
        return response

    async def mode(self, request: web.Request) -> web.Response:
        """Set the type's compatibility mode: backward, forward, full or none."""
        principal = await self._principal(request)
        tenant, type = self._named(principal, request)
        self._manage(principal, type)
        asked = await self._body(request, _ModeBody)
        info = await self._schemas.set_mode(tenant, type, asked.mode)
        return json_response(self._type_json(principal, info))

    async def test(self, request: web.Request) -> web.Response:
        """Check `data` (or an `event`'s data) against the type's schema; publish nothing."""
        principal = await self._principal(request)
        tenant, type = self._named(principal, request)
        asked = await self._body(request, _TestBody)
        if (asked.data is msgspec.UNSET) == (asked.event is msgspec.UNSET):
            raise BadParameter("give either data or event (a CloudEvent)", "body")
        version = asked.version
        if isinstance(asked.event, dict):
            event = event_from_dict(asked.event, require_specversion=False)
            data: Any = event.data
            if version is None and event.dataschema is not None:
                for known in self._schemas.versions(tenant, type):
                    if known.uri == event.dataschema:
                        version = known.version
        else:
            data = asked.data
        result = self._schemas.test(tenant, type, data, version)
        return json_response(result)
