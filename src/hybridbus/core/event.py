"""The event: a CloudEvents 1.0 envelope as a fast, typed, immutable struct.

Owns: the `Event` type, its validation rules (required attributes, extension
naming and types, the specversion), and conversion from a CloudEvents dict.
Codecs (JSON, HTTP binary mode, MessagePack) live in `core.codecs`.
Must not do I/O.

Attributes follow the CloudEvents spec; hybridbus adds the extension
attributes `tenantid`, `appid`, `partitionkey`, `sequence` (non-empty
strings; `sequence` is a String as in the CloudEvents sequence extension),
`expirytime` (a timestamp) and `lamport` (a non-negative integer) as typed
fields. Any other extension goes into `extensions`, keyed by a name of 1-20
characters from a-z and 0-9, with a string, integer (32-bit signed, as the
spec's Integer) or boolean value. `data` nests at most `MAX_DEPTH` arrays and
objects deep (`nests_too_deep` says), so that every codec can encode it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from hybridbus.errors import InvalidEvent

__all__ = [
    "CONTEXT_ATTRIBUTES",
    "EXTENSION_ATTRIBUTES",
    "MAX_DEPTH",
    "Event",
    "ExtensionValue",
    "attribute_of",
    "check_event",
    "check_extension",
    "check_tenantid",
    "event_from_dict",
    "nests_too_deep",
    "validate_extension_name",
]

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
ExtensionValue = str | int | bool

# How deep `data` may nest (arrays and objects): deeper, an event is refused.
MAX_DEPTH: Final = 128
_SPECVERSION: Final = "1.0"
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_EXTENSION_NAME: Final = re.compile(r"[a-z0-9]{1,20}")

# Context attributes defined by CloudEvents 1.0 itself.
CONTEXT_ATTRIBUTES: Final = frozenset(
    {"id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema"}
)
# Extension attributes hybridbus gives a typed field of their own.
EXTENSION_ATTRIBUTES: Final = frozenset(
    {"tenantid", "appid", "partitionkey", "expirytime", "sequence", "lamport"}
)
# Keys that may appear in the JSON structured format besides extensions.
_RESERVED: Final = CONTEXT_ATTRIBUTES | EXTENSION_ATTRIBUTES | {"data", "data_base64"}


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    # An event never refers back to itself, so it cannot be part of a cycle:
    # the garbage collector need not track it (its `data` is tracked as usual).
    gc=False,
):
    """A CloudEvents 1.0 event.

    `data` is any JSON value, or `bytes` for binary data (carried as
    `data_base64` in JSON). `source` + `id` is the dedupe key.
    """

    id: NonEmpty
    source: NonEmpty
    type: NonEmpty
    specversion: Literal["1.0"] = _SPECVERSION
    subject: NonEmpty | None = None
    time: Timestamp | None = None
    datacontenttype: NonEmpty | None = None
    dataschema: NonEmpty | None = None
    data: Any = None
    tenantid: NonEmpty | None = None
    appid: NonEmpty | None = None
    partitionkey: NonEmpty | None = None
    expirytime: Timestamp | None = None
    sequence: NonEmpty | None = None
    lamport: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # "x-extensions" is not a legal CloudEvents attribute name, so it can never
    # collide with an extension someone else defines.
    extensions: dict[str, ExtensionValue] = msgspec.field(default_factory=dict, name="x-extensions")

    def __post_init__(self) -> None:
        if self.specversion is not _SPECVERSION and self.specversion == _SPECVERSION:
            # msgspec omits a default by identity: a decoded "1.0" is another
            # string object and would be encoded again beside the one
            # `encode_json` always writes.
            msgspec.structs.force_setattr(self, "specversion", _SPECVERSION)
        if self.extensions:
            for name, value in self.extensions.items():
                check_extension(name, value)


_REQUIRED: Final = ("id", "source", "type")
_OPTIONAL_TEXT: Final = (
    "subject",
    "datacontenttype",
    "dataschema",
    "tenantid",
    "appid",
    "partitionkey",
    "sequence",
)


def check_event(event: Event) -> Event:
    """Return `event` if its attributes obey the rules decoding enforces, else raise.

    Decoding (JSON, MessagePack, a dict) checks every type and constraint;
    constructing an `Event` in Python checks none but the extensions. This
    is the cheap check for events built in Python. `data` is checked by
    encoding it.
    """
    e = event
    if not (
        type(e.id) is str
        and e.id
        and type(e.source) is str
        and e.source
        and type(e.type) is str
        and e.type
        and e.specversion == "1.0"
        and type(e.extensions) is dict
    ):
        _explain(e)
    for value in (
        e.subject,
        e.datacontenttype,
        e.dataschema,
        e.tenantid,
        e.appid,
        e.partitionkey,
        e.sequence,
    ):
        if value is not None and (type(value) is not str or not value):
            _explain_optional(e)
    for when in (e.time, e.expirytime):
        if when is not None and (not isinstance(when, datetime) or when.tzinfo is None):
            _explain_optional(e)
    lamport = e.lamport
    if lamport is not None and (type(lamport) is not int or lamport < 0):
        raise InvalidEvent("lamport must be a non-negative integer", attribute="lamport")
    return e


def check_tenantid(event: Event, tenant: str) -> Event:
    """Return `event` unless it has a `tenantid` other than `tenant` (its topic's tenant).

    Raises `InvalidEvent` naming `tenantid`. An event without one passes as it is.
    """
    if event.tenantid is not None and event.tenantid != tenant:
        raise InvalidEvent(
            f"tenantid {event.tenantid!r:.80} is not the tenant of the event's topic "
            f"({tenant!r:.80}): leave tenantid out or set it to the topic's tenant",
            attribute="tenantid",
        )
    return event


def _explain_optional(event: Event) -> None:
    """Raise the error for the first optional attribute `check_event` found wrong."""
    for name in _OPTIONAL_TEXT:
        value = getattr(event, name)
        if value is not None and (type(value) is not str or not value):
            raise InvalidEvent(f"{name} must be a non-empty string if set", attribute=name)
    for name in ("time", "expirytime"):
        value = getattr(event, name)
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise InvalidEvent(f"{name} must be a datetime with a time zone", attribute=name)


def _explain(event: Event) -> None:
    """Raise the error for the first required attribute `check_event` found wrong."""
    for name in _REQUIRED:
        value = getattr(event, name)
        if type(value) is not str or not value:
            raise InvalidEvent(f"{name} must be a non-empty string", attribute=name)
    if event.specversion != "1.0":
        raise InvalidEvent("specversion must be '1.0'", attribute="specversion")
    raise InvalidEvent("extensions must be a dict", attribute="extensions")


def validate_extension_name(name: str) -> None:
    """Raise `InvalidEvent` unless `name` is a legal, non-reserved extension name."""
    if not _EXTENSION_NAME.fullmatch(name):
        raise InvalidEvent(
            f"extension attribute name {name!r} must be 1-20 characters of a-z and 0-9",
            attribute=name,
        )
    if name in _RESERVED:
        raise InvalidEvent(
            f"{name!r} is a top-level attribute of the event, not an extension "
            "(in MessagePack, not an entry of x-extensions)",
            attribute=name,
        )


def nests_too_deep(data: Any, limit: int = MAX_DEPTH) -> bool:
    """True if `data` nests arrays and maps (lists, tuples, dicts) more than `limit` deep.

    Iterative, so it never hits the recursion limit itself.
    """
    if not isinstance(data, _NESTING):
        return False
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _NESTING):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


_NESTING: Final = (dict, list, tuple)


def check_extension(name: str, value: object) -> None:
    """Raise `InvalidEvent` unless `name` and `value` make a legal extension attribute."""
    validate_extension_name(name)
    if isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise InvalidEvent(
                f"extension attribute {name!r} is an Integer outside the 32-bit signed range",
                attribute=name,
            )
        return
    raise InvalidEvent(
        f"extension attribute {name!r} must be a string, integer or boolean, "
        f"not {type(value).__name__}",
        attribute=name,
    )


_PATH = re.compile(r"\$\.([A-Za-z0-9_\-]+)")


def attribute_of(exc: msgspec.ValidationError) -> str | None:
    """The attribute a msgspec validation error is about, if it names one."""
    text = str(exc)
    found = _PATH.search(text)
    if found:
        name = found.group(1)
        return "extensions" if name == "x-extensions" else name
    missing = re.search(r"missing required field `([^`]+)`", text)
    if missing:
        return missing.group(1)
    unknown = re.search(r"unknown field `([^`]+)`", text)
    return unknown.group(1) if unknown else None


def event_from_dict(raw: object, *, require_specversion: bool = True) -> Event:
    """Build an Event from a CloudEvents structured-format dict (JSON values).

    Top-level keys that are not CloudEvents or hybridbus attributes are
    extensions; `data_base64` becomes `bytes` data. The spec requires
    `specversion`; Python callers of the bus may leave it out
    (`require_specversion=False`), it then defaults to "1.0".
    """
    if not isinstance(raw, dict):
        raise InvalidEvent(f"an event must be an object, not {type(raw).__name__}")
    if require_specversion and "specversion" not in raw:
        raise InvalidEvent("the required attribute specversion is missing", "specversion")
    fields = dict(raw)
    if "x-extensions" in fields:
        raise InvalidEvent(
            "'x-extensions' is not a CloudEvents attribute", attribute="x-extensions"
        )
    if "data_base64" in fields:
        if "data" in fields:
            raise InvalidEvent("an event has either data or data_base64, not both", "data_base64")
        encoded = fields.pop("data_base64")
        try:
            fields["data"] = msgspec.convert(encoded, bytes)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"data_base64 is not base64: {exc}", "data_base64") from exc
    extras = fields.keys() - _RESERVED
    if extras:
        extensions: dict[str, Any] = {}
        for name in sorted(extras):
            value = fields.pop(name)
            check_extension(name, value)
            extensions[name] = value
        fields["x-extensions"] = extensions
    try:
        return msgspec.convert(fields, Event)
    except msgspec.ValidationError as exc:
        attribute = attribute_of(exc)
        raise InvalidEvent(f"invalid event: {exc}", attribute=attribute) from exc
