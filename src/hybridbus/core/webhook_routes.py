"""Inbound webhook endpoints: their settings, and the rule that turns a request into one event.

Owns: `Endpoint` (one endpoint's settings, as TOML `[[webhooks]]` tables and
the admin API give them, checked whole when built), `Route` (an endpoint
compiled: its keys, expressions and topic template), the JSONPath subset the
expressions are written in, and topic templates. Must not do I/O, read a
clock (verifying takes `now`) nor know HTTP beyond header mappings.

Expressions (`type`, `subject`, `id`) pick one value from the request:

    $.type   $.data.object.id   $['x-kind'][0]   $.items[-1].name   the body (JSON)
    header:X-GitHub-Event                                           a request header

The JSONPath subset (RFC 9535 syntax, singular queries only): `$`, then any
number of `.name` (a letter or `_` first, then letters, digits, `_`),
`['name']` or `["name"]` (any name; `\\` escapes a quote or a backslash) and
`[index]` (an integer; negative counts from the end). It selects at most one
value: a string as it is, a number or a boolean as its JSON text; nothing
(a missing member, an object, an array, null, an empty string, a body that
is not JSON) falls back to the default. Filters, wildcards, slices and
descendants are refused when the endpoint is set up.

The event. `type` = the `type` expression's value, else `default_type`;
`subject` likewise (else none); `id` = the `id` expression's value, else the
webhook's signed id (`webhook-id`, or the HMAC scheme's `id_header`), else a
random one (the platform's retries are then not recognised); `source` =
`/webhooks/<tenant>/<name>`; `data` = the body as received: parsed when its
Content-Type is JSON (`application/json`, `*/*+json`) and it parses (nested
at most `MAX_DEPTH`), else its bytes, with `datacontenttype` the request's
Content-Type (default `application/octet-stream`).

The topic is `topic` (a template, relative to the endpoint's tenant) with
its fields filled in: `{type}`, `{subject}`, `{id}`, `{endpoint}` (the
name) and the keys of `values` (fixed per endpoint, e.g. `app`). A field's
value always makes ONE segment: `%`, `/`, `+`, `#`, whitespace and control
characters in it are percent-encoded; a field without a value (no subject)
refuses the request (`InvalidTopic`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from hybridbus.core.event import MAX_DEPTH, Event, nests_too_deep
from hybridbus.core.topics import scope_topic, validate_topic
from hybridbus.core.webhooks import (
    TOLERANCE,
    HmacScheme,
    Key,
    Verified,
    find_header,
    hmac_key,
    hmac_verify,
    parse_key,
    standard_verify,
)
from hybridbus.errors import InvalidTopic

__all__ = [
    "DEFAULT_TYPE",
    "Endpoint",
    "Expression",
    "Route",
    "Template",
    "compile_expression",
]

DEFAULT_TYPE: Final = "io.hybridbus.webhook"
MAX_SECRETS: Final = 10
_NAME: Final = r"^[A-Za-z0-9_.\-]{1,128}$"
_FIELD: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUILT_IN: Final = frozenset({"type", "subject", "id", "endpoint"})
_OCTETS: Final = "application/octet-stream"

Name = Annotated[str, msgspec.Meta(pattern=_NAME)]
_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
_Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One inbound webhook endpoint (docs/webhooks.md describes every field)."""

    name: Name
    tenant: _Text
    scheme: Literal["standard", "hmac"] = "standard"
    secrets: Annotated[list[_Secret], msgspec.Meta(min_length=1, max_length=MAX_SECRETS)]
    hmac: HmacScheme | None = None
    tolerance: Annotated[float, msgspec.Meta(gt=0, le=86400)] = TOLERANCE
    topic: _Text = "webhooks/{endpoint}"
    type: _Text | None = None
    default_type: _Text = DEFAULT_TYPE
    subject: _Text | None = None
    default_subject: _Text | None = None
    id: _Text | None = None
    values: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], _Text] = (
        msgspec.field(default_factory=dict)
    )
    max_body_size: Annotated[int, msgspec.Meta(ge=1024, le=64 << 20)] = 1 << 20
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # requests/s; 0: unlimited
    burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0: the rate

    def __post_init__(self) -> None:
        Route(self)  # every check: a bad key, expression or template refuses the endpoint

    def __repr__(self) -> str:  # a repr in a log never shows the secrets
        return f"Endpoint({self.tenant}/{self.name}, {self.scheme}, {len(self.secrets)} keys)"

    @property
    def full_name(self) -> str:
        """`<tenant>/<name>`: how the URL and the event's source name it."""
        return f"{self.tenant}/{self.name}"


# -- expressions -------------------------------------------------------------------------

_STEP: Final = re.compile(
    r"""\.(?P<name>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)"""
    r"""|\[\s*(?:'(?P<single>(?:[^'\\]|\\.)*)'|"(?P<double>(?:[^"\\]|\\.)*)"|(?P<index>-?[0-9]{1,9}))\s*\]"""
)
_UNESCAPE: Final = re.compile(r"\\(.)")

Step = str | int


class Expression:
    """A compiled expression: a header's value, or a JSONPath singular query over the body."""

    __slots__ = ("header", "source", "steps")

    def __init__(self, source: str, header: str | None, steps: tuple[Step, ...]) -> None:
        self.source = source
        self.header = header
        self.steps = steps

    def value(self, headers: Mapping[str, str], body: Any, parsed: bool) -> str | None:
        """The text it selects from the request, or None (see the module docstring)."""
        if self.header is not None:
            found = find_header(headers, self.header)
            return _text(found.strip()) if found is not None else None
        if not parsed:
            return None
        node = body
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(node, dict):
                    return None
                node = node.get(step)
            else:
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    return None
                node = node[step]
            if node is None:
                return None
        if isinstance(node, str):
            return _text(node)
        if isinstance(node, (bool, int, float)):
            return msgspec.json.encode(node).decode()
        return None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str) -> Expression:
    """Compile `header:<Name>` or a JSONPath singular query (ValueError naming what is wrong)."""
    if source.startswith("header:"):
        name = source[len("header:") :].strip()
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", name):
            raise ValueError(f"{source!r:.140} does not name a header")
        return Expression(source, name, ())
    if not source.startswith("$"):
        raise ValueError(f"{source!r:.140} is neither a JSONPath ($...) nor header:<Name>")
    steps: list[Step] = []
    at = 1
    while at < len(source):
        found = _STEP.match(source, at)
        if found is None:
            raise ValueError(
                f"{source!r:.140}: cannot read the JSONPath at character {at + 1} (the subset "
                "has .name, ['name'] and [index] only)"
            )
        if found["name"] is not None:
            steps.append(found["name"])
        elif found["index"] is not None:
            steps.append(int(found["index"]))
        else:
            quoted = found["single"] if found["single"] is not None else found["double"]
            steps.append(_UNESCAPE.sub(r"\1", quoted))
        at = found.end()
    return Expression(source, None, tuple(steps))


def _text(value: str) -> str | None:
    """`value` if it is non-empty text that encodes (header bytes may not: lone surrogates)."""
    if not value:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


# -- topic templates ---------------------------------------------------------------------


def _segment(value: str) -> str:
    """`value` as one topic segment: `% / + #`, whitespace and control characters encoded."""
    if value.isprintable() and not any(c in "%/+# " for c in value):
        return value
    out = []
    for char in value:
        if char in "%/+#" or char.isspace() or not char.isprintable():
            out.append("".join(f"%{byte:02X}" for byte in char.encode()))
        else:
            out.append(char)
    return "".join(out)


class Template:
    """A topic template: literal text and `{field}`s, each filled with one segment."""

    __slots__ = ("fields", "parts", "source")

    def __init__(self, source: str, known: frozenset[str]) -> None:
        self.source = source
        self.parts = _FIELD.split(source)  # literal, field, literal, field, ...
        self.fields = tuple(self.parts[1::2])
        for field in self.fields:
            if field not in known:
                raise ValueError(
                    f"topic {source!r:.140}: no field {{{field}}}: use {{type}}, {{subject}}, "
                    "{id}, {endpoint} or a key of values"
                )
        literal = "".join(self.parts[0::2])
        if "{" in literal or "}" in literal:
            raise ValueError(f"topic {source!r:.140}: a brace outside a {{field}}")
        try:
            validate_topic(self.fill(dict.fromkeys(self.fields, "x")))
        except InvalidTopic as exc:
            raise ValueError(f"topic {source!r:.140} does not make a topic: {exc}") from None

    def fill(self, values: Mapping[str, str | None]) -> str:
        """The relative topic with `values` in (InvalidTopic naming a field without one)."""
        out = []
        for index, part in enumerate(self.parts):
            if index % 2 == 0:
                out.append(part)
                continue
            value = values.get(part)
            if not value:
                raise InvalidTopic(f"the topic template {self.source!r:.140} needs {{{part}}}")
            out.append(_segment(value))
        return "".join(out)

    def pattern(self, constants: Mapping[str, str]) -> str:
        """The relative pattern of every topic it can make (`constants` filled in).

        Its text up to the segment of the first field that is not a constant,
        then `#`; the topic itself if every field is a constant.
        """
        head = []
        for index, part in enumerate(self.parts):
            if index % 2 == 0:
                head.append(part)
            elif part in constants:
                head.append(_segment(constants[part]))
            else:
                folder = "".join(head).rpartition("/")[0]
                return f"{folder}/#" if folder else "#"
        return "".join(head)


# -- the compiled endpoint ---------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Route:
    """An endpoint compiled: its keys, how it verifies, and its rule (module docstring)."""

    __slots__ = (
        "default_subject",
        "default_type",
        "endpoint",
        "id",
        "keys",
        "pattern",
        "scheme",
        "source",
        "subject",
        "template",
        "tolerance",
        "type",
        "values",
        "verify",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        try:
            scope_topic(endpoint.tenant, "x")
        except InvalidTopic as exc:  # a ValueError, so that decoding says where it came from
            raise ValueError(str(exc)) from None
        self.endpoint = endpoint
        self.keys = self._keys(endpoint)
        hmac_scheme = endpoint.hmac
        if endpoint.scheme == "hmac":
            if hmac_scheme is None:
                raise ValueError("scheme = 'hmac' needs an hmac table (header, algorithm, ...)")
            scheme = hmac_scheme

            def verify(headers: Mapping[str, str], body: bytes, now: float) -> Verified:
                return hmac_verify(scheme, headers, body, self.keys, now, self.tolerance)

        else:
            if hmac_scheme is not None:
                raise ValueError("an hmac table belongs to scheme = 'hmac' only")

            def verify(headers: Mapping[str, str], body: bytes, now: float) -> Verified:
                return standard_verify(headers, body, self.keys, now, self.tolerance)

        self.verify: Callable[[Mapping[str, str], bytes, float], Verified] = verify
        self.tolerance = endpoint.tolerance
        clash = _BUILT_IN.intersection(endpoint.values)
        if clash:
            raise ValueError(f"values may not redefine {{{sorted(clash)[0]}}}")
        self.type = None if endpoint.type is None else compile_expression(endpoint.type)
        self.subject = None if endpoint.subject is None else compile_expression(endpoint.subject)
        self.id = None if endpoint.id is None else compile_expression(endpoint.id)
        self.default_type = endpoint.default_type
        self.default_subject = endpoint.default_subject
        self.values = dict(endpoint.values)
        self.template = Template(endpoint.topic, _BUILT_IN | frozenset(endpoint.values))
        self.source = f"/webhooks/{endpoint.full_name}"
        # What `manage` is checked on: every topic the endpoint can publish to.
        self.pattern = self.template.pattern({**endpoint.values, "endpoint": endpoint.name})

    @staticmethod
    def _keys(endpoint: Endpoint) -> list[Key]:
        keys = []
        for number, text in enumerate(endpoint.secrets, 1):
            try:
                keys.append(hmac_key(text) if endpoint.scheme == "hmac" else parse_key(text))
            except ValueError as exc:  # the message never quotes the key
                raise ValueError(f"secret {number} of {len(endpoint.secrets)}: {exc}") from None
        return keys

    @property
    def key_ids(self) -> list[str]:
        """The keys as listings show them: kind and fingerprint, never the key."""
        return [key.id for key in self.keys]

    def event(
        self, headers: Mapping[str, str], body: bytes, verified: Verified
    ) -> tuple[str, Event]:
        """The relative topic and the event for a verified request (module docstring)."""
        content_type = find_header(headers, "Content-Type")
        if content_type is not None:
            content_type = _text(content_type.strip())
        data: Any = body
        parsed = False
        if _is_json(_media_type(content_type)):
            try:
                data = msgspec.json.decode(body)
                parsed = not nests_too_deep(data, MAX_DEPTH)
            except (msgspec.DecodeError, RecursionError):
                parsed = False
            if not parsed:
                data = body
        type_ = (self.type and self.type.value(headers, data, parsed)) or self.default_type
        subject = (
            self.subject and self.subject.value(headers, data, parsed)
        ) or self.default_subject
        event_id = (
            (self.id and self.id.value(headers, data, parsed))
            or verified.id
            or "wh-" + secrets.token_hex(12)
        )
        fields = {
            **self.values,
            "type": type_,
            "subject": subject,
            "id": event_id,
            "endpoint": self.endpoint.name,
        }
        topic = self.template.fill(fields)
        event = Event(
            id=event_id,
            source=self.source,
            type=type_,
            subject=subject,
            datacontenttype=content_type or _OCTETS,
            data=data,
        )
        return topic, event
