"""Schemas for event types, the pure part: names, versions, modes, compatibility, paths.

Owns: what a schema registry entry is (`SchemaVersion`, one registered
version of one event type's JSON Schema, and `TypeState`, a type's versions
and compatibility mode), the rules for type names, versions and modes, the
schema's URI (what accepted events get as `dataschema`), the compatibility
check of a new version against the latest (`check_compatible`, after
Confluent's rules: `core.schema_diff`), and naming a place in an event's
data as a path (`data.items[2].qty`). Must not compile or run validators,
store anything or know tenants' principals: `hub.schemas` does.

Modes (per tenant and type; default `backward`), checked against the latest
version only (Confluent's non-transitive modes):

    backward   the new version accepts every event the latest accepted
               (consumers upgrade first: add optional fields, drop fields)
    forward    the latest accepts every event the new version accepts
               (producers upgrade first: add fields, drop optional ones)
    full       both
    none       no check
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal, get_args

import msgspec

from hybridbus.core.schema_diff import Difference, differences
from hybridbus.errors import InvalidSchema, SchemaIncompatible

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "Mode",
    "SchemaVersion",
    "TypeState",
    "canonical_schema",
    "check_compatible",
    "check_mode",
    "check_type_name",
    "check_version",
    "data_path",
    "incompatibilities",
    "schema_uri",
]

Mode = Literal["backward", "forward", "full", "none"]
MODES: Final[tuple[str, ...]] = get_args(Mode)
DEFAULT_MODE: Final[Mode] = "backward"
URI_PREFIX: Final = "hybridbus:schemas/"

# A type name with a schema is one topic-like segment: no `/`, `+`, `#`, spaces.
_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,199}")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN: Final = 5  # differences a refusal lists


class SchemaVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One registered version of an event type's schema (as stored, and as the API shows it)."""

    type: str
    version: int
    uri: str
    schema: msgspec.Raw  # the JSON Schema, as registered (JSON text)
    registered: float  # Unix time


class TypeState(msgspec.Struct, kw_only=True):
    """A type's compatibility mode and how many versions it has (the latest is the highest)."""

    mode: Mode = DEFAULT_MODE
    versions: int = 0


def check_type_name(name: object) -> str:
    """`name` if it may have a schema (1-200 of `A-Za-z0-9._:-`, a letter or digit first)."""
    if not isinstance(name, str) or not _TYPE.fullmatch(name):
        raise InvalidSchema(
            f"an event type with a schema is 1-200 of A-Z a-z 0-9 . _ : - "
            f"(a letter or digit first), not {name!r:.140}"
        )
    return name


def check_mode(mode: object) -> Mode:
    """`mode` if it is one of `MODES`."""
    if mode not in MODES:
        raise InvalidSchema(f"mode is one of {', '.join(MODES)}, not {mode!r:.40}")
    return mode  # type: ignore[return-value]  # checked just above


def check_version(version: object, latest: int) -> int:
    """The version number `version` names: a number >= 1, or "latest" (`latest`)."""
    if version == "latest":
        return latest
    if isinstance(version, str) and version.isdigit() and len(version) < 10:
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidSchema(f"a version is a number from 1, or 'latest', not {version!r:.40}")
    return version


def schema_uri(tenant: str, type: str, version: int, schema: Any) -> str:
    """What accepted events get as `dataschema`: the schema's `$id`, else a hybridbus URI."""
    declared = schema.get("$id") if isinstance(schema, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    return f"{URI_PREFIX}{tenant}/{type}/{version}"


def canonical_schema(schema: Any) -> bytes:
    """`schema` as JSON with sorted keys: equal schemas, equal bytes."""
    return msgspec.json.encode(schema, order="sorted")


def incompatibilities(previous: Any, new: Any, mode: Mode) -> list[tuple[str, Difference]]:
    """The incompatible differences of `new` after `previous` under `mode`, with their direction.

    The direction is "backward" (the new version would refuse an event the
    previous one accepted) or "forward" (the previous would refuse one of
    the new's).
    """
    found: list[tuple[str, Difference]] = []
    if mode in ("backward", "full"):
        found += [("backward", d) for d in differences(previous, new) if not d.compatible]
    if mode in ("forward", "full"):
        found += [("forward", d) for d in differences(new, previous) if not d.compatible]
    return found


def check_compatible(type: str, latest: int, previous: Any, new: Any, mode: Mode) -> None:
    """Raise `SchemaIncompatible` naming the first path if `new` may not follow `previous`."""
    found = incompatibilities(previous, new, mode)
    if not found:
        return
    first = found[0][1]
    shown = "; ".join(f"{d.path} {d.kind} ({way})" for way, d in found[:_SHOWN])
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    raise SchemaIncompatible(
        f"this schema is not {mode} compatible with version {latest} of {type!r}: {shown}{more}",
        first.path,
        tuple(d.kind for _, d in found if d.path == first.path),
    )


def data_path(parts: Sequence[str | int]) -> str:
    """A place in an event's data as a path: `data`, `data.items[2].qty`, `data["a b"]`."""
    out = ["data"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _NAME.fullmatch(part):
            out.append(f".{part}")
        else:
            out.append(f"[{msgspec.json.encode(part).decode()}]")
    return "".join(out)
