"""Outbound webhooks, the pure part: subscriptions, their group, requests, SSRF checks, attempts.

Owns: `Subscription` (a tenant's pattern POSTed to a URL: mode, secrets,
timeout, concurrency, rate, order, retries) and its validation, the consumer
group it runs as (`group_name`, `group_settings`), the request of one
delivery (`build_request`: CloudEvents HTTP binary or structured mode, signed
with Standard Webhooks headers by `core.webhooks`), what an answer means
(`outcome`), which addresses a sender may reach (`check_url`,
`address_refusal`) and the delivery attempts log (`Attempt`, `AttemptLog`).
Must not do I/O: no sockets, no DNS, no clock (callers pass `now`); the
sender is `server.webhooks_out`.

SSRF. Unless private targets are allowed (`webhook_allow_private`), a URL is
refused when its scheme is not http(s), its host is `localhost` (or under
`.localhost`), or its host is an address that is loopback, link-local,
private, multicast, reserved, unspecified or otherwise not global (IPv4 and
IPv6; an IPv4-mapped or 6to4 IPv6 address is judged as its IPv4 address). The
sender checks again, at send time, every address a host name resolves to
(DNS rebinding), and connects only to those it checked.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Iterable
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import msgspec

from hybridbus.core.codecs import encode_json, to_http
from hybridbus.core.event import Event
from hybridbus.core.group_settings import GroupSettings, Redelivery
from hybridbus.core.topics import validate_pattern
from hybridbus.core.webhooks import SigningKey, signing_key, standard_headers
from hybridbus.errors import InvalidPattern, InvalidSettings

__all__ = [
    "ACK_MARGIN",
    "ATTEMPTS_KEPT",
    "BODY_KEPT",
    "DEFAULT_SCHEDULE",
    "GROUP_PREFIX",
    "Attempt",
    "AttemptLog",
    "Outcome",
    "Subscription",
    "address_refusal",
    "build_request",
    "check_url",
    "group_name",
    "group_settings",
    "outcome",
    "signing_keys",
    "subscription_from",
]

GROUP_PREFIX: Final = "webhook."  # a subscription `x` runs as the tenant's group `webhook.x`
DEFAULT_SCHEDULE: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
ACK_MARGIN: Final = 5.0  # seconds the group's lease outlasts the request's timeout
ATTEMPTS_KEPT: Final = 100  # attempts kept per subscription (in memory)
BODY_KEPT: Final = 1024  # bytes of a response body kept in an attempt
MAX_SECRETS: Final = 2  # active at once: the old and the new one while rotating
TOPIC_HEADER: Final = "hybridbus-topic"  # the event's topic, relative to the tenant

Mode = Literal["binary", "structured"]
Outcome = Literal["delivered", "failed", "gone", "timeout", "error", "refused"]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,120}$")]
_Tenant = Annotated[str, msgspec.Meta(pattern=r"^[^/+#$][^/+#]{0,127}$")]


class Subscription(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's pattern POSTed to a URL (docs/webhooks.md, "Outbound"). Durations in seconds.

    `pattern` is relative to `tenant`. `secrets` are `whsec_` (HMAC, `v1`) or
    `whsk_` (ed25519, `v1a`) keys, 1 or 2: every request is signed with each.
    `rate` is events/s (0: unlimited) with bursts of `burst` (0: max(1, rate)).
    Retries wait `schedule` (the last repeating) spread by ±`jitter`.
    """

    name: _Name
    tenant: _Tenant
    pattern: str
    url: str
    mode: Mode = "binary"
    secrets: tuple[str, ...] = ()
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    burst: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    ordered: bool = True
    enabled: bool = True
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    max_deliveries: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    start: str = "latest"

    def __post_init__(self) -> None:
        # ValueError: msgspec reports it with the field's place (`$.outbound_webhooks[0]`).
        problem = _problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def full_name(self) -> str:
        """`<tenant>/<name>`."""
        return f"{self.tenant}/{self.name}"

    @property
    def absolute_pattern(self) -> str:
        """The pattern with its tenant: what the group consumes."""
        return f"{self.tenant}/{self.pattern}"


def _problem(sub: Subscription) -> str | None:
    """What is wrong with a subscription's fields, or None."""
    if sub.pattern.startswith("$"):
        return "pattern: a subscription's pattern is inside its tenant"
    if not 1 <= len(sub.secrets) <= MAX_SECRETS:
        return f"secrets: 1 or {MAX_SECRETS} keys, not {len(sub.secrets)}"
    if not sub.schedule or any(not (math.isfinite(w) and w >= 0) for w in sub.schedule):
        return "schedule: one or more waits, each a number of seconds >= 0"
    try:
        validate_pattern(sub.pattern)
        signing_keys(sub.secrets)
        check_url(sub.url, allow_private=True)  # scheme and form; addresses: `check_url`
    except InvalidPattern as exc:
        return f"pattern: {exc}"
    except InvalidSettings as exc:
        return str(exc)
    return None


def subscription_from(fields: dict[str, object]) -> Subscription:
    """A subscription from a dict (TOML, JSON); `InvalidSettings` naming the field if bad."""
    try:
        return msgspec.convert(fields, Subscription)
    except msgspec.ValidationError as exc:
        raise InvalidSettings(f"outbound webhook: {exc}") from None


def signing_keys(secrets: Iterable[str]) -> list[SigningKey]:
    """The keys of `secrets`; `InvalidSettings` (never quoting a secret) if one is not a key."""
    keys = []
    for index, text in enumerate(secrets):
        try:
            keys.append(signing_key(text))
        except ValueError as exc:
            raise InvalidSettings(f"secrets[{index}]: {exc}") from None
    return keys


def group_name(name: str) -> str:
    """The name of the group a subscription runs as (in its tenant)."""
    return GROUP_PREFIX + name


def group_settings(sub: Subscription) -> GroupSettings:
    """The group a subscription runs as: its retries, order and concurrency are the group's."""
    return GroupSettings(
        pattern=sub.absolute_pattern,
        start=sub.start,
        ack_wait=sub.timeout + ACK_MARGIN,
        redelivery=Redelivery(schedule=sub.schedule, jitter=sub.jitter),
        max_deliveries=sub.max_deliveries,
        ordered=sub.ordered,
        member_in_flight=sub.concurrency,
        max_in_flight=sub.concurrency,
    )


# -- SSRF --------------------------------------------------------------------------


def address_refusal(address: str) -> str | None:
    """Why a sender may not connect to `address` (an IP address), or None if it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour  # ::ffff:a.b.c.d, 2002:aabb:ccdd::/48
        if embedded is not None:
            ip = embedded
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    if not ip.is_global:  # shared (100.64/10), documentation, 6to4/Teredo relays, ...
        return "not global"
    return None


def _host_literal(host: str) -> str | None:
    """The IP address `host` is written as, if it is one (`[::1]` is `::1`)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of an outbound URL, or `InvalidSettings` naming what is refused."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidSettings("url: a string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidSettings(f"url: not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidSettings(f"url: only http:// and https:// are taken, not {scheme or '?'}:")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidSettings("url: no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidSettings("url: no user name or password in the URL (sign, do not log in)")
    port = port or (443 if scheme == "https" else 80)
    if not allow_private:
        if host == "localhost" or host.endswith((".localhost", ".localhost.")):
            raise InvalidSettings(
                "url: localhost is refused (set webhook_allow_private to allow it)"
            )
        literal = _host_literal(host)
        if literal is not None:
            why = address_refusal(literal)
            if why is not None:
                raise InvalidSettings(
                    f"url: {literal} is a {why} address, refused (set webhook_allow_private "
                    "to allow private targets)"
                )
    return scheme, host, port


# -- requests and answers -----------------------------------------------------------


def build_request(
    sub_mode: Mode,
    keys: Iterable[SigningKey],
    event: Event,
    topic: str,
    msg_id: str,
    now: float,
) -> tuple[dict[str, str], bytes]:
    """The headers and body POSTed for one delivery of `event` (its tenant-relative `topic`).

    `msg_id` is the `webhook-id`: the same on every delivery of one event
    (the group's dedupe key), so a receiver drops retries it has handled.
    """
    if sub_mode == "binary":
        headers, body = to_http(event)
    else:
        headers, body = {"content-type": "application/cloudevents+json"}, encode_json(event)
    headers[TOPIC_HEADER] = topic
    headers.update(standard_headers(msg_id, int(now), body, keys))
    return headers, body


def outcome(status: int) -> Outcome:
    """What an HTTP answer means: `delivered` (2xx), `gone` (410: disable), else `failed`."""
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    return "failed"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt: when, what, how it went (`status` 0: no HTTP answer)."""

    time: float
    event_id: str
    topic: str
    attempt: int
    outcome: Outcome
    status: int
    latency: float  # seconds from sending to the answer (or the failure)
    body: str  # the answer's first BODY_KEPT bytes (UTF-8, undecodable bytes replaced)
    error: str = ""


class AttemptLog:
    """The last `size` attempts of a subscription, newest last (memory only)."""

    __slots__ = ("_items", "total")

    def __init__(self, size: int = ATTEMPTS_KEPT) -> None:
        self._items: deque[Attempt] = deque(maxlen=size)
        self.total = 0

    def add(self, attempt: Attempt) -> None:
        """Keep `attempt` (the oldest goes when full)."""
        self._items.append(attempt)
        self.total += 1

    def last(self, limit: int = ATTEMPTS_KEPT) -> list[Attempt]:
        """Up to `limit` attempts, newest first."""
        out = list(self._items)[-limit:] if limit > 0 else []
        out.reverse()
        return out
