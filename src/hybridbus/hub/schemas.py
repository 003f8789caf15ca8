"""The schema registry of a bus: JSON Schemas per tenant and event type, and checking events.

Owns: every tenant's registered schemas (versions 1, 2, ... of each event
`type`, and each type's compatibility mode), compiled once into validators
(`jsonschema_rs`, Draft 2020-12, never fetching anything: a `$ref` resolves
inside the schema or the schema is refused), registering a version (the
mode's check against the latest: `core.schemas`), storing them in the
engine's group store under `$schemas/<tenant>` (the state: each type's mode
and count; entries `<type>/<version>`) and loading them at start (and again
when another node announces a change: `hub.changes`), and
`check`: what `Bus.prepare` asks of every event on every way in. Must not
know principals, HTTP or the wire protocol (the gateways speak for callers).

Checking an event. An event whose tenant (its topic's first segment) has a
schema for its `type` must have `data` the schema accepts, else
`SchemaViolation` names the failing place (`data.items[2].qty`). The version
checked is the one the event's `dataschema` names, if it names a version of
its type, else the latest; an accepted event without `dataschema` gets that
version's URI. Data that is absent is checked as JSON `null`; binary data
(`data_base64`) is refused (a schema describes JSON). Events of types without
a schema, and every event while no tenant has a schema, pass untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import jsonschema_rs
import msgspec

from hybridbus.core.event import MAX_DEPTH, Event, nests_too_deep
from hybridbus.core.schemas import (
    Mode,
    SchemaVersion,
    TypeState,
    canonical_schema,
    check_compatible,
    check_mode,
    check_type_name,
    check_version,
    data_path,
    schema_uri,
)
from hybridbus.engine.base import Clock, Engine, GroupWrite, StoredGroup, system_clock
from hybridbus.errors import (
    EngineCorrupt,
    InvalidSchema,
    InvalidTopic,
    SchemaViolation,
    UnknownSchema,
)
from hybridbus.hub.changes import Changes, named

__all__ = ["STORE_PREFIX", "Schemas", "TestResult", "TypeInfo", "compile_schema"]

log = logging.getLogger("hybridbus.schemas")

STORE_PREFIX: Final = "$schemas/"  # + tenant: a registry's name in the group store
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
_MESSAGE: Final = 500  # characters of a validator's message kept in a refusal
_DEEPEST: Final = 2 * MAX_DEPTH  # levels of objects and arrays a schema may nest


class TypeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A type of a tenant that has schemas (or a mode set): what the API lists."""

    tenant: str
    type: str
    mode: Mode
    versions: int  # the latest version's number (0: none registered yet)
    uri: str | None  # the latest version's


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What checking sample data against a type's schema found (`Schemas.test`)."""

    valid: bool
    version: int
    uri: str
    path: str | None = None  # where it failed: `data.items[2].qty`
    error: str | None = None


class _State(msgspec.Struct, kw_only=True):
    """A tenant's stored state (`GroupWrite.state`): each type's mode and version count."""

    types: dict[str, TypeState] = msgspec.field(default_factory=dict)


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A stored version (an entry `<type>/<version>`); the schema as JSON text."""

    type: str
    version: int
    uri: str
    schema: bytes
    registered: float


class _Compiled:
    """A version and its validator."""

    __slots__ = ("validator", "version")

    def __init__(self, version: SchemaVersion, validator: jsonschema_rs.Validator) -> None:
        self.version = version
        self.validator = validator


class _Type:
    """A type's mode and versions, in memory."""

    __slots__ = ("by_uri", "latest", "state", "versions")

    def __init__(self, state: TypeState) -> None:
        self.state = state
        self.versions: dict[int, _Compiled] = {}
        self.by_uri: dict[str, _Compiled] = {}
        self.latest: _Compiled | None = None

    def add(self, compiled: _Compiled) -> None:
        self.versions[compiled.version.version] = compiled
        self.by_uri[compiled.version.uri] = compiled
        if self.latest is None or compiled.version.version > self.latest.version.version:
            self.latest = compiled


def compile_schema(schema: Any) -> jsonschema_rs.Validator:
    """A Draft 2020-12 validator for `schema`; `InvalidSchema` (naming where) if it is none."""
    if not isinstance(schema, dict | bool):
        raise InvalidSchema(f"a schema is a JSON object or a boolean, not {type(schema).__name__}")
    if nests_too_deep(schema, _DEEPEST):  # the validator's stack would not hold it
        raise InvalidSchema(f"a schema nests objects and arrays at most {_DEEPEST} levels deep")
    if isinstance(schema, dict):
        declared = schema.get("$schema", _DRAFT)
        if not isinstance(declared, str) or declared.rstrip("#") != _DRAFT:
            raise InvalidSchema(f"only JSON Schema Draft 2020-12 ({_DRAFT}), not {declared!r:.100}")
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(p) for p in exc.instance_path)
        raise InvalidSchema(f"not a valid JSON Schema at #/{where}: {exc.message:.300}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidSchema(f"not a valid JSON Schema: {str(exc).splitlines()[0]:.300}") from None
    try:
        return jsonschema_rs.Draft202012Validator(schema, offline=True, validate_formats=False)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "retriev" in first.lower():  # a `$ref` outside the schema: nothing is ever fetched
            first += " (every $ref must resolve inside the schema)"
        raise InvalidSchema(f"not a usable JSON Schema: {first:.400}") from None


def _check_tenant(tenant: str) -> str:
    if not tenant or "/" in tenant or "+" in tenant or "#" in tenant or tenant.startswith("$"):
        raise InvalidTopic(
            f"tenant {tenant!r:.140} must be one literal segment not starting with '$'"
        )
    return tenant


class Schemas:
    """The schema registry of one bus (see the module docstring)."""

    def __init__(
        self, engine: Engine, clock: Clock = system_clock, changes: Changes | None = None
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._changes = changes
        if changes is not None:
            changes.on(STORE_PREFIX, self.reload)
        self._types: dict[tuple[str, str], _Type] = {}
        self._lock = asyncio.Lock()
        # True once any tenant has a schema: until then `check` is never called.
        self.active = False

    async def start(self) -> None:
        """Load every tenant's stored schemas and compile them."""
        for stored in await self.engine.groups():
            if stored.group.startswith(STORE_PREFIX):
                try:
                    self._load(stored)
                except (msgspec.DecodeError, msgspec.ValidationError, InvalidSchema) as exc:
                    raise EngineCorrupt(f"{stored.group!r} cannot be read: {exc}") from exc

    async def reload(self, name: str) -> None:
        """Load the store `name` (or every one under it) again: another node changed it."""
        stored = [found for found in await self.engine.groups() if named(found.group, name)]
        async with self._lock:
            tenants = {found.group[len(STORE_PREFIX) :] for found in stored}
            if name.endswith("/"):
                tenants.update(tenant for tenant, _ in self._types)
            else:
                tenants.add(name[len(STORE_PREFIX) :])
            for key in [key for key in self._types if key[0] in tenants]:
                del self._types[key]
            for found in stored:
                try:
                    self._load(found)
                except (msgspec.DecodeError, msgspec.ValidationError, InvalidSchema) as exc:
                    log.error("%r cannot be read, left out: %s", found.group, exc)  # noqa: TRY400
            self.active = any(t.latest is not None for t in self._types.values())

    def _load(self, stored: StoredGroup) -> None:
        tenant = stored.group[len(STORE_PREFIX) :]
        state = msgspec.msgpack.decode(stored.state, type=_State)
        for name, type_state in state.types.items():
            self._types[tenant, name] = _Type(type_state)
        for value in stored.entries.values():
            entry = msgspec.msgpack.decode(value, type=_Stored)
            known = self._types.setdefault((tenant, entry.type), _Type(TypeState()))
            known.add(self._compiled(entry, msgspec.json.decode(entry.schema)))
        self.active = any(t.latest is not None for t in self._types.values())

    @staticmethod
    def _compiled(entry: _Stored, schema: Any) -> _Compiled:
        version = SchemaVersion(
            type=entry.type,
            version=entry.version,
            uri=entry.uri,
            schema=msgspec.Raw(entry.schema),
            registered=entry.registered,
        )
        return _Compiled(version, compile_schema(schema))

    # -- checking events -----------------------------------------------------------

    def check(self, tenant: str, event: Event) -> Event:
        """`event` if its type has no schema in `tenant`; else checked, with `dataschema` set.

        Raises `SchemaViolation` naming the failing path (module docstring).
        `event` is one `Bus.prepare` checked, its data no deeper than
        `MAX_DEPTH` (far deeper data would exhaust the validator's stack).
        """
        known = self._types.get((tenant, event.type))
        if known is None or known.latest is None:
            return event
        chosen = known.latest
        if event.dataschema is not None:
            chosen = known.by_uri.get(event.dataschema, chosen)
        failure = self._failure(chosen, event.data)
        if failure is not None:
            path, message = failure
            uri = chosen.version.uri
            raise SchemaViolation(
                f"{path}: {message} (schema {uri}, version {chosen.version.version} of "
                f"{event.type!r})",
                path,
                uri,
            )
        if event.dataschema is None:
            return msgspec.structs.replace(event, dataschema=chosen.version.uri)
        return event

    @staticmethod
    def _failure(compiled: _Compiled, data: Any) -> tuple[str, str] | None:
        """Where and why `data` fails the version's schema; None if it passes."""
        if isinstance(data, bytes | bytearray | memoryview):
            return "data", "binary data (data_base64) cannot match a JSON Schema"
        validator = compiled.validator
        try:
            if validator.is_valid(data):
                return None
            validator.validate(data)
        except jsonschema_rs.ValidationError as exc:
            return data_path(exc.instance_path), exc.message[:_MESSAGE]
        except (ValueError, TypeError, OverflowError) as exc:
            return "data", f"not JSON the schema can check: {str(exc)[:_MESSAGE]}"
        return None  # pragma: no cover - is_valid and validate disagree

    def test(
        self, tenant: str, type: str, data: Any, version: int | str | None = None
    ) -> TestResult:
        """Check `data` against version `version` (default: the latest) of `type`; no publish."""
        known = self._known(tenant, type)
        compiled = self._version(known, type, "latest" if version is None else version)
        if nests_too_deep(data):  # as `prepare` refuses it; the validator's stack would not hold
            failure: tuple[str, str] | None = (
                "data",
                f"nests arrays and objects more than {MAX_DEPTH} levels deep",
            )
        else:
            failure = self._failure(compiled, data)
        uri, number = compiled.version.uri, compiled.version.version
        if failure is None:
            return TestResult(valid=True, version=number, uri=uri)
        return TestResult(valid=False, version=number, uri=uri, path=failure[0], error=failure[1])

    # -- reading ---------------------------------------------------------------------

    def _known(self, tenant: str, type: str) -> _Type:
        known = self._types.get((tenant, type))
        if known is None:
            raise UnknownSchema(f"no schema for type {type!r:.200} in tenant {tenant!r}")
        return known

    @staticmethod
    def _version(known: _Type, type: str, version: int | str) -> _Compiled:
        latest = known.latest.version.version if known.latest is not None else 0
        number = check_version(version, latest)
        compiled = known.versions.get(number)
        if compiled is None:
            raise UnknownSchema(f"type {type!r:.200} has no version {version!r:.20}")
        return compiled

    def info(self, tenant: str, type: str) -> TypeInfo:
        """The type's mode and latest version; `UnknownSchema` if it has neither."""
        return self._info(tenant, type, self._known(tenant, type))

    @staticmethod
    def _info(tenant: str, type: str, known: _Type) -> TypeInfo:
        latest = known.latest
        return TypeInfo(
            tenant=tenant,
            type=type,
            mode=known.state.mode,
            versions=latest.version.version if latest is not None else 0,
            uri=latest.version.uri if latest is not None else None,
        )

    def types(self, tenant: str | None) -> list[TypeInfo]:
        """The types with schemas (or a mode) of `tenant` (None: of every tenant), by name."""
        return [
            self._info(t, name, known)
            for (t, name), known in sorted(self._types.items())
            if tenant is None or t == tenant
        ]

    def versions(self, tenant: str, type: str) -> list[SchemaVersion]:
        """Every version of `type`, oldest first."""
        known = self._known(tenant, type)
        return [known.versions[n].version for n in sorted(known.versions)]

    def get(self, tenant: str, type: str, version: int | str) -> SchemaVersion:
        """Version `version` (a number, or "latest") of `type`."""
        return self._version(self._known(tenant, type), type, version).version

    # -- changing ---------------------------------------------------------------------

    async def register(self, tenant: str, type: str, schema: Any) -> tuple[SchemaVersion, bool]:
        """Register `schema` as the next version of `type`: (the version, whether it is new).

        A schema equal to a registered version of the type (same JSON, keys in
        any order) registers nothing and returns that version. Raises
        `InvalidSchema`, `SchemaIncompatible` (the type's mode refuses it),
        `EngineUnavailable`. Durable when it returns.
        """
        _check_tenant(tenant)
        check_type_name(type)
        validator = compile_schema(schema)
        text = canonical_schema(schema)
        async with self._lock:
            known = self._types.get((tenant, type))
            state = known.state if known is not None else TypeState()
            if known is not None:
                for compiled in known.versions.values():
                    if canonical_schema(msgspec.json.decode(compiled.version.schema)) == text:
                        return compiled.version, False
            latest = known.latest if known is not None else None
            number = (latest.version.version if latest is not None else 0) + 1
            uri = schema_uri(tenant, type, number, schema)
            if known is not None and latest is not None:
                check_compatible(
                    type,
                    latest.version.version,
                    msgspec.json.decode(latest.version.schema),
                    schema,
                    state.mode,
                )
                taken = known.by_uri.get(uri)
                if taken is not None:
                    raise InvalidSchema(
                        f"$id {uri!r:.200} is version {taken.version.version}'s already: "
                        "give each version its own $id"
                    )
            raw = msgspec.json.encode(schema)
            entry = _Stored(
                type=type, version=number, uri=uri, schema=raw, registered=self._clock()
            )
            new_state = TypeState(mode=state.mode, versions=number)
            await self._write(tenant, {type: new_state}, [(f"{type}/{number}", entry)])
            compiled = _Compiled(
                SchemaVersion(
                    type=type,
                    version=number,
                    uri=uri,
                    schema=msgspec.Raw(raw),
                    registered=entry.registered,
                ),
                validator,
            )
            if known is None:
                known = self._types[tenant, type] = _Type(new_state)
            known.state = new_state
            known.add(compiled)
            self.active = True
            return compiled.version, True

    async def set_mode(self, tenant: str, type: str, mode: str) -> TypeInfo:
        """Set `type`'s compatibility mode (before or after its first version). Durable."""
        _check_tenant(tenant)
        check_type_name(type)
        checked = check_mode(mode)
        async with self._lock:
            known = self._types.get((tenant, type))
            count = known.state.versions if known is not None else 0
            new_state = TypeState(mode=checked, versions=count)
            await self._write(tenant, {type: new_state}, [])
            if known is None:
                known = self._types[tenant, type] = _Type(new_state)
            known.state = new_state
            return self._info(tenant, type, known)

    async def _write(
        self, tenant: str, changed: dict[str, TypeState], put: Sequence[tuple[str, _Stored]]
    ) -> None:
        """Store the tenant's state with `changed` applied, and the entries `put`."""
        types = {
            name: known.state for (t, name), known in self._types.items() if t == tenant
        } | changed
        state = msgspec.msgpack.encode(_State(types=types))
        entries = [(key, msgspec.msgpack.encode(value)) for key, value in put]
        await self.engine.write_groups(
            [GroupWrite(group=STORE_PREFIX + tenant, state=state, put=entries)]
        )
        if self._changes is not None:
            await self._changes.announce(STORE_PREFIX + tenant)
