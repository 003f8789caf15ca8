"""CloudEvents protocol bindings for the bridges: binary attributes, structured JSON, wrapping.

Owns: what every bridge kind shares when it turns a message of another
system into an `Event` and back, with no I/O and no client library:

- binary content mode as a neutral mapping: `to_binary(event)` gives the
  attributes as text (name -> value, no prefix: each binding adds its own,
  `ce_` for Kafka, `cloudEvents:` for AMQP, none for MQTT 5 user
  properties), the content type and the payload bytes; `from_binary` builds
  the event back. Values are the CloudEvents canonical string forms
  (timestamps in RFC 3339, integers and booleans as text); unlike HTTP
  headers, nothing is percent-encoded (the protocols carry UTF-8).
- structured content mode: the CloudEvents JSON format (`core.codecs`).
- `Wrap`: a message that is not a CloudEvent becomes one by a mapping rule
  (type, source, and an id that is the same on every redelivery of the
  message, so that the bus's dedupe window drops the second append).
- `TopicTemplate`: `{name}` placeholders filled in to map topics both ways.

Must not do I/O, nor know a broker's client API.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import string
from collections.abc import Mapping
from typing import Any

import msgspec

from hybridbus.core.codecs import (
    JSON_CONTENT_TYPE,
    decode_json,
    encode_json,
    from_http,
    is_json_content_type,
    to_http,
)
from hybridbus.core.event import Event, check_event
from hybridbus.errors import InvalidEvent

__all__ = [
    "JSON_CONTENT_TYPE",
    "TopicTemplate",
    "Wrap",
    "from_binary",
    "from_structured",
    "is_structured",
    "looks_structured",
    "to_binary",
    "to_structured",
]

_json = msgspec.json.Decoder()


def to_binary(event: Event) -> tuple[dict[str, str], str | None, bytes]:
    """(attributes by name, content type, payload) of `event` in binary content mode.

    The attributes are every context and extension attribute but
    `datacontenttype` (the content type, the protocol's own field) and
    `data` (the payload): JSON data is encoded as JSON, text as UTF-8,
    bytes as they are.
    """
    headers, payload = to_http(event)
    attributes: dict[str, str] = {}
    content_type: str | None = None
    for header, value in headers.items():
        if header == "content-type":
            content_type = value
        else:
            # `to_http` percent-encodes every value once any needs it (a '%'
            # always does): decoding each is exact, and a no-op when none was.
            attributes[header[3:]] = _unquote(value)
    return attributes, content_type, payload


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def _quote(text: str) -> str:
    if "%" not in text and text.isascii() and text.isprintable():
        return text
    from urllib.parse import quote

    return quote(text, safe="")


def from_binary(attributes: Mapping[str, str], content_type: str | None, payload: bytes) -> Event:
    """The event of a binary-mode message: its attributes (no prefix), content type, payload.

    Raises `InvalidEvent` naming the attribute (a missing `specversion`
    included: a message without one is not a CloudEvent, see `Wrap`).
    """
    headers = {f"ce-{name.lower()}": _quote(value) for name, value in attributes.items()}
    if content_type:
        headers["content-type"] = content_type
    return from_http(headers, payload)


def is_structured(content_type: str | None) -> bool:
    """True if `content_type` says the payload is a whole event (`application/cloudevents+json`)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == (
        JSON_CONTENT_TYPE
    )


def to_structured(event: Event) -> bytes:
    """The event in the CloudEvents JSON format (structured content mode)."""
    return encode_json(event)


def from_structured(payload: bytes) -> Event:
    """An event in the CloudEvents JSON format; `InvalidEvent` if it is not one."""
    return decode_json(payload)


def looks_structured(payload: bytes) -> bool:
    """True if `payload` is a JSON object with a `specversion` (an MQTT 3.1.1 event)."""
    # The search first: most payloads that are not events fail it, without a copy.
    return b'"specversion"' in payload and payload.lstrip()[:1] == b"{"


class Wrap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a message that is not a CloudEvent becomes one.

    `type` and `source` are templates (`{topic}` is the message's topic on
    the other system); `id` says where the event's id comes from:

    - `"hash"` (the default): a SHA-256 of the topic and the payload. The
      same message redelivered gets the same id, so the bus drops the second
      append within its dedupe window; two messages with the same payload on
      the same topic within the window are one event as well.
    - `"property:<name>"`: a message property / header of that name (an MQTT
      5 user property, a Kafka header, an AMQP header or `message_id`).
    - `"json:<a.b.c>"`: a field of a JSON payload, by a dotted path.
    - `"position"`: where the broker keeps the message (Kafka's
      `<topic>-<partition>-<offset>`): unique and stable, for brokers that have one.
    - `"key"`: the message's key (Kafka's record key, as UTF-8 text).

    With `"property:"`, `"json:"`, `"position"` or `"key"` and no such value in a message, the
    id falls back to the hash. The payload becomes `data`: JSON when it
    parses as JSON (or `datacontenttype` says JSON), else bytes.
    """

    type: str = "hybridbus.bridge.message"
    source: str = "/bridges/{bridge}/{topic}"
    id: str = "hash"
    datacontenttype: str | None = None

    def __post_init__(self) -> None:
        if not (
            self.id in ("hash", "position", "key")
            or (self.id.startswith(("property:", "json:")) and self.id.partition(":")[2])
        ):
            raise ValueError(
                f"wrap.id is 'hash', 'position', 'key', 'property:<name>' or 'json:<path>', "
                f"not {self.id!r:.80}"
            )
        for name in ("type", "source"):
            _check_template(getattr(self, name), ("topic", "bridge"), f"wrap.{name}")

    def event(
        self,
        bridge: str,
        topic: str,
        payload: bytes,
        properties: Mapping[str, str],
        position: str | None = None,
        content_type: str | None = None,
        key: str | None = None,
    ) -> Event:
        """The event wrapping one message (see the class docstring)."""
        content_type = content_type or self.datacontenttype
        data: Any = payload
        parsed: Any = None
        if content_type is None or is_json_content_type(content_type):
            try:
                parsed = _json.decode(payload) if payload else None
            except (msgspec.DecodeError, RecursionError):
                parsed = None
            else:
                data = parsed
        event_id = self._id(topic, payload, properties, parsed, position, key)
        # Built directly (a dict through msgspec.convert costs 3x) and checked by check_event,
        # which enforces what decoding would: the same events pass, the same are refused.
        try:
            return check_event(
                Event(
                    id=event_id,
                    source=_fill(self.source, topic, bridge),
                    type=_fill(self.type, topic, bridge),
                    datacontenttype=content_type
                    or ("application/json" if data is not payload else "application/octet-stream"),
                    data=data,
                )
            )
        except InvalidEvent as exc:
            raise InvalidEvent(f"the wrapped message is not a valid event: {exc}") from exc

    def _id(
        self,
        topic: str,
        payload: bytes,
        properties: Mapping[str, str],
        parsed: Any,
        position: str | None,
        key: str | None = None,
    ) -> str:
        rule = self.id
        found: Any = None
        if rule == "position":
            found = position
        elif rule == "key":
            found = key
        elif rule.startswith("property:"):
            found = properties.get(rule[9:])
        elif rule.startswith("json:") and isinstance(parsed, dict):
            found = parsed
            for step in rule[5:].split("."):
                found = found.get(step) if isinstance(found, dict) else None
        if isinstance(found, bool) or not isinstance(found, str | int) or found == "":
            digest = hashlib.sha256(topic.encode() + b"\x00" + payload).digest()
            return base64.urlsafe_b64encode(digest[:18]).decode()
        return str(found)


@functools.lru_cache(maxsize=4096)
def _fill(template: str, topic: str, bridge: str) -> str:
    """A wrap template filled in: the same few (template, topic) pairs come again and again."""
    return template.format_map({"topic": topic, "bridge": bridge})


def _check_template(template: str, allowed: tuple[str, ...], what: str) -> None:
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    for name in fields:
        if name not in allowed:
            raise ValueError(
                f"{what}: unknown placeholder {{{name}}} (known: "
                + ", ".join(f"{{{a}}}" for a in allowed)
                + ")"
            )


class TopicTemplate:
    """A topic made from a template: `{name}` placeholders filled in from a mapping.

    The placeholders a bridge offers are listed in `allowed` (e.g. `{topic}`
    for the other system's topic, `{relative}` for a bus topic without its
    tenant, `{type}`, `{subject}`); `+` and `#` pass through as they are, so
    a pattern maps to a pattern. Any other `{...}` is refused when the
    settings are read (`ValueError`).
    """

    __slots__ = ("_static", "template")

    def __init__(self, template: str, allowed: tuple[str, ...], what: str) -> None:
        if not isinstance(template, str) or not template:
            raise ValueError(f"{what} must be a non-empty template")
        _check_template(template, allowed, what)
        self.template = template
        self._static = "{" not in template

    def render(self, values: Mapping[str, str]) -> str:
        """The template with `values` filled in (the caller validates the result)."""
        if self._static:
            return self.template
        return self.template.format_map(values)

    def prefix_and_suffix(self, name: str) -> tuple[str, str] | None:
        """(what comes before, after) `{name}` if it is the template's only placeholder."""
        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        if fields != [name]:
            return None
        before, _, after = self.template.partition("{" + name + "}")
        return before, after
