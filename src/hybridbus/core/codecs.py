"""Event codecs: CloudEvents JSON (structured and batch), HTTP binary mode, MessagePack.

Owns: turning an `Event` into bytes and back in every format hybridbus speaks,
with errors that name the offending attribute. Must not do I/O: HTTP binary
mode works on a header mapping and a body, not on a request.

MessagePack is hybridbus's own compact encoding of the `Event` struct (field
names as keys, binary data as bin, times as timestamps); it is what the durable
log stores and what the MessagePack wire subprotocol carries. Other extensions
than hybridbus's own are encoded in a nested map under `x-extensions`; the
decoder also takes them as top-level keys, as the JSON format has them.

Nesting: a decoder answers input nested past the recursion limit with
`InvalidEvent`, never `RecursionError`; `check_depth` (the bus calls it on
every publish) refuses `data` nested deeper than `core.event.MAX_DEPTH`, so that
every event in the log can be encoded again, at any stack depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import msgspec

from hybridbus.core.event import (
    MAX_DEPTH,
    Event,
    attribute_of,
    check_extension,
    event_from_dict,
    nests_too_deep,
    validate_extension_name,
)
from hybridbus.errors import InvalidEvent

__all__ = [
    "JSON_BATCH_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "check_depth",
    "decode_json",
    "decode_json_batch",
    "decode_msgpack",
    "encode_json",
    "encode_json_batch",
    "encode_msgpack",
    "from_http",
    "is_json_content_type",
    "to_http",
]

JSON_CONTENT_TYPE: Final = "application/cloudevents+json"
JSON_BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"

_SPECVERSION_KEY: Final = b'"specversion"'
_SPECVERSION_KEY_STR: Final = '"specversion"'
_json_encoder = msgspec.json.Encoder()
_json_event_decoder = msgspec.json.Decoder(Event)
_json_any_decoder = msgspec.json.Decoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Event)
_msgpack_any_decoder = msgspec.msgpack.Decoder()
_SPECVERSION: Final = b'{"specversion":"1.0",'
# Keys of the MessagePack map that are not extensions.
_MSGPACK_FIELDS: Final = frozenset(f.encode_name for f in msgspec.structs.fields(Event))
# 1 for each byte that may start a MessagePack map or array (fixmap, fixarray,
# array 16/32, map 16/32), 0 for the others: nesting `data` N deep takes at least
# N such bytes, so counting them bounds the depth from above at C speed.
_CONTAINER_BYTES: Final = bytes(
    1 if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF else 0 for b in range(256)
)


def _too_deep(exc: RecursionError, attribute: str | None = None) -> InvalidEvent:
    return InvalidEvent(f"the event nests too deeply to be read: {exc}", attribute=attribute)


def check_depth(event: Event, payload: bytes) -> Event:
    """Return `event` unless its `data` nests past `MAX_DEPTH`; `payload` is its MessagePack.

    Raises `InvalidEvent` naming `data`. Costs one scan of `payload` unless it
    holds more than `MAX_DEPTH` bytes that could start a map or an array.
    """
    if (
        len(payload) > MAX_DEPTH
        and payload.translate(_CONTAINER_BYTES).count(1) > MAX_DEPTH
        and nests_too_deep(event.data)
    ):
        raise InvalidEvent(
            f"data nests arrays and objects more than {MAX_DEPTH} levels deep", attribute="data"
        )
    return event


def encode_msgpack(event: Event) -> bytes:
    """Encode an event as MessagePack (the log's and the binary wire's format)."""
    try:
        return _msgpack_encoder.encode(event)
    except TypeError as exc:
        raise InvalidEvent(f"the event holds a value with no encoding: {exc}", "data") from exc
    except OverflowError as exc:
        # JSON carries integers of any size; MessagePack only 64-bit ones.
        raise InvalidEvent(
            f"an integer in the event does not fit MessagePack's 64 bits: {exc}",
            attribute="lamport" if (event.lamport or 0) >= 2**64 else "data",
        ) from exc
    except RecursionError as exc:
        raise InvalidEvent(f"data nests too deeply to be encoded: {exc}", "data") from exc


def decode_msgpack(buf: bytes) -> Event:
    """Decode a MessagePack event (as `encode_msgpack` makes, or with top-level extensions).

    Raises `InvalidEvent` on bad input.
    """
    try:
        return _msgpack_decoder.decode(buf)
    except msgspec.ValidationError as exc:
        invalid = exc
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed MessagePack: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    # Valid MessagePack but not the struct: top-level extensions, or an error.
    try:
        raw = _msgpack_any_decoder.decode(buf)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed MessagePack: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    if isinstance(raw, dict):
        nested = raw.get("x-extensions")
        extras = [key for key in raw if key not in _MSGPACK_FIELDS and key != "data_base64"]
        if extras and (nested is None or isinstance(nested, dict)):
            return _flat_msgpack(raw, extras, nested or {})
    raise InvalidEvent(f"invalid event: {invalid}", attribute=attribute_of(invalid)) from invalid


def _flat_msgpack(raw: dict[Any, Any], extras: list[Any], nested: dict[Any, Any]) -> Event:
    """The event of a MessagePack map whose `extras` keys are extension attributes."""
    extensions = dict(nested)
    for name in extras:
        if not isinstance(name, str):
            raise InvalidEvent(f"an attribute name must be a string, not {name!r:.40}")
        if name in extensions:
            raise InvalidEvent(
                f"extension {name!r} is both a top-level key and in x-extensions", attribute=name
            )
        value = raw.pop(name)
        check_extension(name, value)
        extensions[name] = value
    raw["x-extensions"] = extensions
    try:
        return msgspec.convert(raw, Event)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invalid event: {exc}", attribute=attribute_of(exc)) from exc


def _structured(event: Event) -> dict[str, Any]:
    """The structured-format dict of an event with binary data or extensions."""
    out: dict[str, Any] = {"specversion": event.specversion, **msgspec.to_builtins(event)}
    extensions = out.pop("x-extensions", None)
    if extensions:
        out.update(extensions)
    if isinstance(event.data, bytes):
        out["data_base64"] = out.pop("data")
    return out


def encode_json(event: Event) -> bytes:
    """Encode an event in the CloudEvents JSON structured format."""
    try:
        if event.extensions or isinstance(event.data, bytes):
            return _json_encoder.encode(_structured(event))
        # `specversion` is required on the wire but, being the struct's default,
        # omitted by msgspec; `id` is required, so the object is never empty.
        return _SPECVERSION + _json_encoder.encode(event)[1:]
    except RecursionError as exc:
        raise InvalidEvent(f"data nests too deeply to be encoded: {exc}", "data") from exc


def decode_json(buf: bytes | str) -> Event:
    """Decode one event in the CloudEvents JSON structured format."""
    try:
        # Fast path: no unknown extension and no data_base64.
        event = _json_event_decoder.decode(buf)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    else:
        if not event.extensions:
            # The struct defaults specversion; the format requires it.
            present = (
                _SPECVERSION_KEY in buf if isinstance(buf, bytes) else _SPECVERSION_KEY_STR in buf
            )
            if not present:
                raise InvalidEvent("the required attribute specversion is missing", "specversion")
            return event
        # Extensions can only have come from an "x-extensions" key, which is
        # not CloudEvents: let event_from_dict refuse it.
    try:
        raw = _json_any_decoder.decode(buf)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    return event_from_dict(raw)


def encode_json_batch(events: Iterable[Event]) -> bytes:
    """Encode events in the CloudEvents JSON batch format (a JSON array)."""
    return b"[" + b",".join(encode_json(e) for e in events) + b"]"


def decode_json_batch(buf: bytes | str) -> list[Event]:
    """Decode the CloudEvents JSON batch format; errors name the index."""
    try:
        raw = _json_any_decoder.decode(buf)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep(exc) from exc
    if not isinstance(raw, list):
        raise InvalidEvent("a batch must be a JSON array of events")
    events = []
    for index, item in enumerate(raw):
        try:
            events.append(event_from_dict(item))
        except InvalidEvent as exc:
            raise InvalidEvent(f"event [{index}]: {exc}", attribute=exc.attribute) from exc
    return events


def is_json_content_type(content_type: str | None) -> bool:
    """True for `application/json`, `text/json` and any `+json` media type."""
    if content_type is None:
        return True  # CloudEvents: JSON is implied when datacontenttype is absent
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


# HTTP binary mode ----------------------------------------------------------

_HEADER_ATTRIBUTES: Final = (
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "dataschema",
    "tenantid",
    "appid",
    "partitionkey",
    "sequence",
)
# Printable ASCII except space, '"' and '%' pass through; the CloudEvents HTTP
# binding asks for everything else to be percent-encoded (UTF-8).
_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def _needs_quoting(text: str) -> bool:
    """True if `text` holds anything but printable ASCII other than space, '"', '%'."""
    return not (text.isascii() and text.isprintable()) or " " in text or '"' in text or "%" in text


def _header_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


# (attribute, header) pairs of the typed attributes carried as ce-* headers.
_HEADERS: Final = tuple(
    (name, f"ce-{name}") for name in (*_HEADER_ATTRIBUTES, "time", "expirytime", "lamport")
)


_ATTRIBUTE_OF_HEADER: Final = {header: name for name, header in _HEADERS}


def to_http(event: Event) -> tuple[dict[str, str], bytes]:
    """The HTTP binary-mode headers and body of an event."""
    headers: dict[str, str] = {}
    for name, header in _HEADERS:
        value = getattr(event, name)
        if value is not None:
            headers[header] = _header_text(value)
    for name, value in event.extensions.items():
        headers[f"ce-{name}"] = _header_text(value)
    # One check over all values: escaping is rare, so look at them together.
    if _needs_quoting("!".join(headers.values())):
        for header, text in headers.items():
            headers[header] = quote(text, safe=_SAFE)
    data = event.data
    if event.datacontenttype is not None:
        headers["content-type"] = event.datacontenttype
    if data is None:
        return headers, b""
    if isinstance(data, bytes):
        # Without a Content-Type a receiver would take the body for JSON.
        headers.setdefault("content-type", "application/octet-stream")
        return headers, data
    if isinstance(data, str) and not is_json_content_type(event.datacontenttype):
        return headers, data.encode()
    if event.datacontenttype is None:
        headers["content-type"] = "application/json"
    return headers, _json_encoder.encode(data)


def from_http(headers: Mapping[str, str], body: bytes) -> Event:
    """Build an event from HTTP binary-mode headers (any case) and body."""
    fields: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    content_type: str | None = None
    for key, raw_value in headers.items():
        lower = key.lower()
        value = unquote(raw_value) if "%" in raw_value else raw_value
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise InvalidEvent(f"header {key} is not valid UTF-8", attribute=key) from exc
        name = _ATTRIBUTE_OF_HEADER.get(lower)
        if name is not None:
            fields[name] = value
        elif lower == "content-type":
            content_type = raw_value
        elif lower.startswith("ce-"):
            name = lower[3:]
            if name in ("data", "data_base64", "datacontenttype"):
                raise InvalidEvent(f"header {key} is not allowed in binary mode", attribute=name)
            validate_extension_name(name)
            extensions[name] = value
    if "lamport" in fields:
        lamport = fields["lamport"]
        if not (lamport.isascii() and lamport.isdigit()):
            raise InvalidEvent("ce-lamport must be a non-negative integer", attribute="lamport")
        fields["lamport"] = int(lamport)
    if "specversion" not in fields:
        raise InvalidEvent("the required header ce-specversion is missing", "specversion")
    if content_type is not None:
        fields["datacontenttype"] = content_type
    if body:
        if content_type is None:
            # The binding does not say what an unlabelled body is; CloudEvents
            # SDKs send JSON and bytes alike without Content-Type. Take JSON if
            # it parses, bytes otherwise, as they do.
            try:
                fields["data"] = _json_any_decoder.decode(body)
            except msgspec.DecodeError:
                fields["data"] = bytes(body)
            except RecursionError as exc:
                raise _too_deep(exc, "data") from exc
        elif is_json_content_type(content_type):
            try:
                fields["data"] = _json_any_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise InvalidEvent(f"body is not JSON: {exc}", attribute="data") from exc
            except RecursionError as exc:
                raise _too_deep(exc, "data") from exc
        elif content_type is not None and content_type.lower().startswith("text/"):
            try:
                fields["data"] = body.decode()
            except UnicodeDecodeError as exc:
                raise InvalidEvent("text body is not UTF-8", attribute="data") from exc
        else:
            fields["data"] = bytes(body)
    if extensions:
        fields["x-extensions"] = extensions
    try:
        return msgspec.convert(fields, Event)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invalid event: {exc}", attribute=attribute_of(exc)) from exc
