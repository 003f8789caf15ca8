"""Webhook signatures and routing rules (core/webhooks.py, core/webhook_routes.py), no I/O.

Standard Webhooks is checked against the official test vectors (the
`standard-webhooks/standard-webhooks` repository, libraries/python/tests) and
against the `standardwebhooks` package from PyPI signing; the generic HMAC
scheme against GitHub's documented example delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from hybridbus.core.webhook_routes import Endpoint, Route, compile_expression
from hybridbus.core.webhooks import (
    HmacScheme,
    Verified,
    hmac_key,
    hmac_sign,
    hmac_verify,
    new_keypair,
    new_secret,
    parse_key,
    signing_key,
    standard_headers,
    standard_sign,
    standard_verify,
)
from hybridbus.errors import ErrorCode, InvalidTopic, TimestampOutOfWindow, WebhookRefused

# -- the official vectors ------------------------------------------------------------------

MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
PAYLOAD = b'{"test": 2432232314}'
SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOLERANCE = 300


def vector_headers(timestamp: int, secret: str = SECRET) -> dict[str, str]:
    """As the official tests make them: HMAC of `id.ts.payload` with the base64 secret."""
    content = f"{MSG_ID}.{timestamp}.{PAYLOAD.decode()}".encode()
    digest = hmac.new(base64.b64decode(secret), content, hashlib.sha256).digest()
    return {
        "webhook-id": MSG_ID,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "webhook-timestamp": str(timestamp),
    }


def test_the_official_sign_vector() -> None:
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = standard_sign(MSG_ID, 1614265330, PAYLOAD, [key])
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_valid_signature_verifies() -> None:
    now = int(time.time())
    verified = standard_verify(vector_headers(now), PAYLOAD, [parse_key("whsec_" + SECRET)], now)
    assert verified == Verified(MSG_ID, now)


@pytest.mark.parametrize(
    ("given", "signed_with"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),  # no padding
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS="),  # one
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr=="),  # two
    ],
)
def test_unpadded_secrets_verify(given: str, signed_with: str) -> None:
    now = int(time.time())
    headers = vector_headers(now, signed_with)
    assert standard_verify(headers, PAYLOAD, [parse_key("whsec_" + given)], now).id == MSG_ID


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    now = int(time.time())
    headers = vector_headers(now)
    del headers[missing]
    with pytest.raises(WebhookRefused, match=missing) as caught:
        standard_verify(headers, PAYLOAD, [parse_key("whsec_" + SECRET)], now)
    assert caught.value.code == ErrorCode.SIGNATURE_INVALID


def test_an_invalid_timestamp_and_an_invalid_signature_are_refused() -> None:
    now = int(time.time())
    key = parse_key("whsec_" + SECRET)
    headers = {**vector_headers(now), "webhook-timestamp": "hello"}
    with pytest.raises(WebhookRefused):
        standard_verify(headers, PAYLOAD, [key], now)
    # The official "invalid signature": the right one with its last character changed.
    headers = {
        **vector_headers(now),
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
    }
    with pytest.raises(WebhookRefused, match="no signature"):
        standard_verify(headers, PAYLOAD, [key], now)


@pytest.mark.parametrize("skew", [-(TOLERANCE + 1), TOLERANCE + 1])
def test_a_timestamp_outside_the_window_is_refused(skew: int) -> None:
    now = int(time.time())
    headers = vector_headers(now + skew)  # signed, authentic, but too old or too new
    with pytest.raises(TimestampOutOfWindow) as caught:
        standard_verify(headers, PAYLOAD, [parse_key("whsec_" + SECRET)], now)
    assert caught.value.code == ErrorCode.TIMESTAMP_OUT_OF_WINDOW == 1131
    # ... and just inside it, either way, it verifies.
    inside = now + (skew - 1 if skew > 0 else skew + 1)
    standard_verify(vector_headers(inside), PAYLOAD, [parse_key("whsec_" + SECRET)], now)


def test_several_signatures_one_valid_verify() -> None:
    now = int(time.time())
    headers = vector_headers(now)
    headers["webhook-signature"] = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            headers["webhook-signature"],
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )
    standard_verify(headers, PAYLOAD, [parse_key("whsec_" + SECRET)], now)


# -- a library nobody here wrote ------------------------------------------------------------


def test_the_standardwebhooks_package_and_ours_agree_both_ways() -> None:
    secret = new_secret()
    now = datetime.now(tz=UTC)
    stamp = int(now.timestamp())
    body = b'{"type": "invoice.paid", "data": {"id": "in_1"}}'
    theirs = Webhook(secret).sign("msg_1", now, body)  # type: ignore[arg-type]
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "webhook-signature": theirs}
    assert standard_verify(headers, body, [parse_key(secret)], stamp).id == "msg_1"
    ours = standard_headers("msg_2", stamp, body, [signing_key(secret)])
    assert Webhook(secret).verify(body, ours) == {"type": "invoice.paid", "data": {"id": "in_1"}}


# -- rotation and ed25519 -------------------------------------------------------------------


def test_during_a_rotation_the_old_and_the_new_secret_both_verify() -> None:
    old, new = new_secret(), new_secret()
    keys = [parse_key(old), parse_key(new)]
    now = int(time.time())
    for secret in (old, new):
        headers = standard_headers("m", now, b"x", [signing_key(secret)])
        standard_verify(headers, b"x", keys, now)
    # After it, only the new one.
    headers = standard_headers("m", now, b"x", [signing_key(old)])
    with pytest.raises(WebhookRefused):
        standard_verify(headers, b"x", [parse_key(new)], now)


def test_ed25519_signs_v1a_and_verifies_with_the_public_key_only() -> None:
    private, public = new_keypair()
    now = int(time.time())
    headers = standard_headers("m", now, b"body", [signing_key(private)])
    assert headers["webhook-signature"].startswith("v1a,")
    assert standard_verify(headers, b"body", [parse_key(public)], now).id == "m"
    other_public = new_keypair()[1]
    with pytest.raises(WebhookRefused):
        standard_verify(headers, b"body", [parse_key(other_public)], now)
    with pytest.raises(WebhookRefused):  # the body changed
        standard_verify(headers, b"bodY", [parse_key(public)], now)
    # A whsec_ key never takes a v1a signature, nor a whpk_ key a v1 one.
    with pytest.raises(WebhookRefused):
        standard_verify(headers, b"body", [parse_key(new_secret())], now)
    # libsodium's 64-byte form (seed + public key) signs the same.
    raw = base64.b64decode(private[5:]) + base64.b64decode(public[5:])
    again = standard_headers(
        "m", now, b"body", [signing_key("whsk_" + base64.b64encode(raw).decode())]
    )
    assert again == headers  # ed25519 is deterministic


def test_a_receiver_refuses_a_private_key_and_bad_keys_without_quoting_them() -> None:
    private, _ = new_keypair()
    with pytest.raises(ValueError, match="public key"):
        parse_key(private)
    for bad in ("whsec_!!!not-base64!!!", "whsec_c2hvcnQ=", "whpk_c2hvcnQ=", "sk_live_123456"):
        with pytest.raises(ValueError, match=r"whsec_|whpk_") as caught:
            parse_key(bad)
        assert bad not in str(caught.value) and bad[6:] not in str(caught.value)


def test_keys_show_a_fingerprint_never_the_key() -> None:
    secret = new_secret()
    key = parse_key(secret)
    assert key.id.startswith("whsec:") and len(key.id) == 14
    assert secret[6:] not in repr(key) and secret[6:] not in key.id
    assert parse_key(secret).id == key.id != parse_key(new_secret()).id


# -- the generic HMAC scheme -------------------------------------------------------------------

GITHUB = HmacScheme(header="X-Hub-Signature-256", prefix="sha256=")


def test_githubs_documented_example_verifies() -> None:
    # docs.github.com, "Validating webhook deliveries": this secret, payload and signature.
    signature = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = {"X-Hub-Signature-256": f"sha256={signature}"}
    key = hmac_key("It's a Secret to Everybody")
    assert hmac_verify(GITHUB, headers, b"Hello, World!", [key], 0) == Verified(None, None)
    assert hmac_sign(GITHUB, "It's a Secret to Everybody", b"Hello, World!") == headers
    with pytest.raises(WebhookRefused, match="X-Hub-Signature-256"):
        hmac_verify(GITHUB, headers, b"Hello, World?", [key], 0)
    with pytest.raises(WebhookRefused, match="missing"):
        hmac_verify(GITHUB, {}, b"Hello, World!", [key], 0)


def test_a_slack_style_scheme_signs_the_timestamp_and_keeps_the_window() -> None:
    slack = HmacScheme(
        header="X-Slack-Signature",
        prefix="v0=",
        timestamp_header="X-Slack-Request-Timestamp",
        signed="v0:{timestamp}:{body}",
    )
    now = int(time.time())
    body = b"token=x&team_id=T1"
    digest = hmac.new(b"slack-secret", f"v0:{now}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(now)}
    assert hmac_sign(slack, "slack-secret", body, now) == headers
    assert hmac_verify(slack, headers, body, [hmac_key("slack-secret")], now).timestamp == now
    with pytest.raises(TimestampOutOfWindow):
        hmac_verify(slack, headers, body, [hmac_key("slack-secret")], now + 301)
    forged = {**headers, "X-Slack-Request-Timestamp": str(now + 1)}  # the timestamp is signed
    with pytest.raises(WebhookRefused):
        hmac_verify(slack, forged, body, [hmac_key("slack-secret")], now)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_every_algorithm_and_encoding_round_trips(algorithm: Any, encoding: Any) -> None:
    scheme = HmacScheme(header="X-Sig", algorithm=algorithm, encoding=encoding)
    headers = hmac_sign(scheme, "s", b"body")
    expected = hmac.new(b"s", b"body", algorithm).digest()
    text = expected.hex() if encoding == "hex" else base64.b64encode(expected).decode()
    assert headers == {"X-Sig": text}
    hmac_verify(scheme, headers, b"body", [hmac_key("old"), hmac_key("s")], 0)


def test_a_scheme_is_checked_when_it_is_made() -> None:
    for bad in (
        {"header": "X-Sig", "signed": "{timestamp}"},  # no body
        {"header": "X-Sig", "signed": "{timestamp}.{body}"},  # no timestamp header
        {"header": "X-Sig", "signed": "{body}{nonce}"},
        {"header": "X Sig"},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, HmacScheme)


headers_values = st.text(max_size=200) | st.sampled_from(
    ["v1,", "v1a,", "v1,====", "v1a,AAAA", ",", " ", "v1," + "A" * 5000]
)


@settings(max_examples=300, deadline=None)
@given(signature=headers_values, stamp=st.text(max_size=20), msg_id=st.text(max_size=20))
def test_bad_headers_are_refused_never_a_crash(signature: str, stamp: str, msg_id: str) -> None:
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    keys = [parse_key(new_secret()), parse_key(new_keypair()[1])]
    with pytest.raises(WebhookRefused):
        standard_verify(headers, b"{}", keys, time.time())
    with pytest.raises(WebhookRefused):
        hmac_verify(GITHUB, {"X-Hub-Signature-256": signature}, b"{}", [hmac_key("k")], 0)


# -- routing --------------------------------------------------------------------------------------


def endpoint(**fields: Any) -> Endpoint:
    fields.setdefault("name", "billing")
    fields.setdefault("tenant", "acme")
    fields.setdefault("secrets", [new_secret()])
    return Endpoint(**fields)


BODY = {"type": "invoice.paid", "data": {"id": "in_1", "lines": [{"n": 1}, {"n": 2}], "x-y": True}}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("$.type", "invoice.paid"),
        ("$.data.id", "in_1"),
        ("$['data'][\"id\"]", "in_1"),
        ("$.data.lines[0].n", "1"),
        ("$.data.lines[-1].n", "2"),
        ("$.data['x-y']", "true"),
        ("$.data.lines[2]", None),
        ("$.data", None),  # an object is no value
        ("$.missing.deeper", None),
        ("$.type.x", None),
    ],
)
def test_the_jsonpath_subset_selects_one_value(path: str, value: str | None) -> None:
    assert compile_expression(path).value({}, BODY, True) == value


@pytest.mark.parametrize("bad", ["type", "$..type", "$.data[*]", "$[?@.x]", "$.a[1:2]", "$.", "$x"])
def test_outside_the_subset_is_refused_when_set_up(bad: str) -> None:
    with pytest.raises(ValueError, match=r"JSONPath|header"):
        compile_expression(bad)


def test_a_header_expression_reads_any_case() -> None:
    expression = compile_expression("header:X-GitHub-Event")
    assert expression.value({"x-github-event": " push "}, None, False) == "push"
    assert expression.value({}, None, False) is None


def test_the_rule_makes_one_event_with_its_defaults() -> None:
    route = Route(
        endpoint(topic="{app}/{type}", type="$.type", subject="$.data.id", values={"app": "shop"})
    )
    body = msgspec.json.encode(BODY)
    topic, event = route.event({"Content-Type": "application/json"}, body, Verified("msg_1", 1))
    assert topic == "shop/invoice.paid"
    assert (event.id, event.source, event.type, event.subject) == (
        "msg_1",
        "/webhooks/acme/billing",
        "invoice.paid",
        "in_1",
    )
    assert event.data == BODY and event.datacontenttype == "application/json"
    # A body that is not JSON: the defaults, and its bytes with their content type.
    topic, event = route.event({"Content-Type": "text/plain"}, b"\xffhi", Verified("m", 1))
    assert (topic, event.type, event.subject) == (
        "shop/io.hybridbus.webhook",
        "io.hybridbus.webhook",
        None,
    )
    assert event.data == b"\xffhi" and event.datacontenttype == "text/plain"
    # Invalid JSON under a JSON content type is kept as bytes too.
    _, event = route.event({"Content-Type": "application/json"}, b"{nope", Verified("m", 1))
    assert event.data == b"{nope"


def test_an_id_path_wins_over_the_webhook_id() -> None:
    route = Route(endpoint(id="$.data.id"))
    _, event = route.event(
        {"Content-Type": "application/json"}, msgspec.json.encode(BODY), Verified("m", 1)
    )
    assert event.id == "in_1"
    _, event = route.event({}, b"x", Verified(None, None))  # no value at all: a random id
    assert event.id.startswith("wh-")


def test_a_field_value_is_always_one_segment_inside_the_tenant() -> None:
    route = Route(endpoint(topic="hooks/{type}", type="$.type"))
    body = msgspec.json.encode({"type": "../other/# +x%"})
    topic, _ = route.event({"Content-Type": "application/json"}, body, Verified("m", 1))
    assert topic == "hooks/..%2Fother%2F%23%20%2Bx%25"
    route = Route(endpoint(topic="hooks/{subject}"))
    with pytest.raises(InvalidTopic, match="subject"):
        route.event({}, b"x", Verified("m", 1))


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("github/{type}", "github/#"),
        ("{app}/{type}", "apps-x/#"),
        ("{type}/x", "#"),
        ("webhooks/{endpoint}", "webhooks/billing"),
        ("a/b-{type}/c", "a/#"),
    ],
)
def test_manage_is_checked_on_the_pattern_a_template_can_reach(template: str, pattern: str) -> None:
    assert Route(endpoint(topic=template, values={"app": "apps-x"})).pattern == pattern


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"topic": "x/{nope}"}, "no field"),
        ({"topic": "x/{type"}, "brace"),
        ({"topic": "x//{type}"}, "topic"),
        ({"topic": "x/#"}, "topic"),
        ({"tenant": "$audit"}, "tenant"),
        ({"scheme": "hmac", "secrets": ["s"]}, "hmac table"),
        ({"hmac": {"header": "X-Sig"}}, "hmac table"),
        ({"values": {"type": "x"}}, "redefine"),
        ({"secrets": ["whsec_AAAA"]}, "secret 1 of 1"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_problem(fields: dict[str, Any], message: str) -> None:
    raw = {"name": "billing", "tenant": "acme", "secrets": [new_secret()], **fields}
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(raw, Endpoint)


def test_an_endpoint_never_shows_its_secrets() -> None:
    secret = new_secret()
    made = endpoint(secrets=[secret])
    assert secret not in repr(made) and secret not in str(made)
    assert secret not in repr(Route(made).key_ids)


def test_the_window_is_the_endpoints() -> None:
    secret = new_secret()
    route = Route(endpoint(secrets=[secret], tolerance=10))
    now = int(time.time())
    headers = standard_headers("m", now - 11, b"x", [signing_key(secret)])
    with pytest.raises(TimestampOutOfWindow):
        route.verify(headers, b"x", now)
    assert route.verify(headers, b"x", now - 1).id == "m"
    assert timedelta(seconds=TOLERANCE) == timedelta(minutes=5)
