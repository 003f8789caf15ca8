"""Outbound webhooks, the pure part: subscriptions, SSRF address checks, requests, attempts.

The requests are verified by the `standardwebhooks` package from PyPI (which
nobody here wrote) and parsed by the `cloudevents` SDK. No traffic: the SSRF
checks are tried on addresses.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook

from hybridbus.core.event import Event
from hybridbus.core.group_settings import GroupSettings, Redelivery
from hybridbus.core.webhooks import new_keypair, new_secret
from hybridbus.core.webhooks_out import (
    ACK_MARGIN,
    DEFAULT_SCHEDULE,
    Attempt,
    AttemptLog,
    Subscription,
    address_refusal,
    build_request,
    check_url,
    group_name,
    group_settings,
    outcome,
    signing_keys,
    subscription_from,
)
from hybridbus.errors import InvalidSettings

NOW = 1_800_000_000.0


def fields(**changed: Any) -> dict[str, Any]:
    return {
        "name": "billing",
        "tenant": "acme",
        "pattern": "orders/#",
        "url": "https://hooks.example.com/in",
        "secrets": [new_secret()],
        **changed,
    }


# -- jitter on an explicit schedule (core/group_settings.py) --------------------------------


def test_jitter_spreads_a_schedule_within_its_bounds() -> None:
    plain = Redelivery(schedule=(10.0, 100.0))
    jittered = Redelivery(schedule=(10.0, 100.0), jitter=0.2)
    rng = random.Random(7)
    assert [plain.wait(n, rng) for n in (1, 2, 3)] == [10.0, 100.0, 100.0]
    waits = [jittered.wait(2, rng) for _ in range(2000)]
    assert all(80.0 <= w <= 120.0 for w in waits)
    assert min(waits) < 82.0 and max(waits) > 118.0  # the whole range is used
    assert len(set(waits)) > 1000
    again = [Redelivery(schedule=(10.0,), jitter=0.5).wait(1, random.Random(3)) for _ in "ab"]
    assert again[0] == again[1]  # from the group's own (seedable) random source


@pytest.mark.parametrize("jitter", [-0.1, 1.5, float("nan")])
def test_jitter_is_a_fraction(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        Redelivery(schedule=(1.0,), jitter=jitter)
    with pytest.raises(msgspec.ValidationError, match="jitter"):
        msgspec.convert({"pattern": "a/#", "redelivery": {"jitter": jitter}}, GroupSettings)


# -- subscriptions ---------------------------------------------------------------------------


def test_a_subscription_runs_as_a_group() -> None:
    sub = subscription_from(fields(timeout=3.0, concurrency=4, ordered=False))
    assert group_name(sub.name) == "webhook.billing"
    settings = group_settings(sub)
    assert settings.pattern == "acme/orders/#"
    assert settings.ack_wait == 3.0 + ACK_MARGIN
    assert (
        settings.redelivery.schedule
        == DEFAULT_SCHEDULE
        == (5, 300, 1800, 7200, 18000, 36000, 36000)
    )
    assert settings.redelivery.jitter == 0.1
    assert settings.max_deliveries == 8
    assert (settings.ordered, settings.member_in_flight, settings.max_in_flight) == (False, 4, 4)
    default = subscription_from(fields())
    assert (default.timeout, default.concurrency, default.mode) == (15.0, 8, "binary")


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"secrets": []}, "secrets: 1 or 2"),
        ({"secrets": [new_secret() for _ in range(3)]}, "secrets: 1 or 2"),
        ({"secrets": ["hunter2"]}, r"secrets\[0\]"),
        ({"url": "ftp://files.example.com/"}, "only http"),
        ({"url": "https://user:pw@example.com/"}, "user name"),
        ({"url": "https:///nohost"}, "no host"),
        ({"pattern": "$dlq/#"}, "inside its tenant"),
        ({"pattern": "a/#/b"}, "pattern"),
        ({"schedule": []}, "schedule"),
        ({"mode": "batch"}, "mode"),
        ({"timeout": 0}, "timeout"),
        ({"name": "a/b"}, "name"),
        ({"tenant": "$system"}, "tenant"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_subscriptions_are_refused(changed: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        subscription_from(fields(**changed))


def test_secret_errors_never_quote_the_secret() -> None:
    with pytest.raises(InvalidSettings) as caught:
        signing_keys(["whsec_not-base64!!"])
    assert "not-base64" not in str(caught.value)


# -- SSRF --------------------------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata
    "224.0.0.1": "multicast",
    "0.0.0.0": "unspecified",
    "100.64.0.1": "not global",  # shared address space (carrier NAT)
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped: judged as IPv4
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "2001:db8::1": "private",  # documentation
    "64:ff9b::a00:1": "reserved",
}


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_private_addresses_are_refused(address: str, why: str) -> None:
    assert address_refusal(address) == why


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/x",
        "https://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8080/",
        "http://api.localhost/",
        "http://LOCALHOST/",
        "http://0.0.0.0/",
    ],
)
def test_urls_to_private_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidSettings, match="refused"):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True)[0] in ("http", "https")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://x/",
        "javascript:alert(1)",
        "ws://example.com/",
        "//example.com/",
    ],
)
def test_only_http_schemes(url: str) -> None:
    for allow in (False, True):
        with pytest.raises(InvalidSettings, match="only http"):
            check_url(url, allow_private=allow)


def test_public_urls_and_their_ports() -> None:
    assert check_url("https://Hooks.Example.com/in", allow_private=False) == (
        "https",
        "hooks.example.com",
        443,
    )
    assert check_url("http://8.8.8.8:8080/", allow_private=False) == ("http", "8.8.8.8", 8080)


# -- requests ------------------------------------------------------------------------------------


def event(**changed: Any) -> Event:
    return Event(
        id="o1", source="/shop", type="order.created", subject="o", data={"n": 1}, **changed
    )


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_requests_verify_with_standardwebhooks_and_parse_as_cloudevents(mode: str) -> None:

    old, new = new_secret(), new_secret()
    now = time.time()
    headers, body = build_request(mode, signing_keys([old, new]), event(), "orders/1", "key-1", now)
    for secret in (old, new):  # either secret verifies: a receiver rotates at its own pace
        assert Webhook(secret).verify(body, headers) is not None
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)
    assert headers["webhook-id"] == "key-1"
    assert headers["webhook-timestamp"] == str(int(now))
    assert headers["hybridbus-topic"] == "orders/1"
    message = ce_http.HTTPMessage(headers=headers, body=body)
    parsed = ce_http.from_http(message, JSONFormat())
    assert (parsed.get_id(), parsed.get_type(), parsed.get_subject()) == (
        "o1",
        "order.created",
        "o",
    )


def test_ed25519_keys_sign_v1a() -> None:
    private, _public = new_keypair()
    headers, _ = build_request("binary", signing_keys([private]), event(), "t", "k", NOW)
    assert headers["webhook-signature"].startswith("v1a,")


def test_outcomes() -> None:
    assert [outcome(s) for s in (200, 202, 204, 299)] == ["delivered"] * 4
    assert outcome(410) == "gone"
    assert [outcome(s) for s in (301, 400, 404, 429, 500, 503)] == ["failed"] * 6


def test_the_attempts_log_keeps_the_last() -> None:
    log = AttemptLog(size=3)
    for n in range(5):
        log.add(
            Attempt(
                time=NOW + n,
                event_id=f"e{n}",
                topic="t",
                attempt=1,
                outcome="failed",
                status=500,
                latency=0.01,
                body="",
            )
        )
    assert [a.event_id for a in log.last()] == ["e4", "e3", "e2"]
    assert [a.event_id for a in log.last(1)] == ["e4"]
    assert log.total == 5


def test_a_subscription_round_trips_through_the_store() -> None:
    sub = subscription_from(fields())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(sub), type=Subscription) == sub
