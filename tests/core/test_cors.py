"""The CORS policy, pure: origin patterns, matching, and the headers it grants."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.cors import (
    ALLOWED_HEADERS,
    EXPOSED_HEADERS,
    ORIGIN_PATTERN,
    CorsPolicy,
)
from hybridbus.errors import ErrorCode, Forbidden, InvalidInput

GOOD_PATTERNS = [
    "*",
    "https://app.example.com",
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://*.example.com",
    "https://*.example.com:8443",
    "HTTPS://App.Example.COM:443",
    "tauri://localhost",
    "chrome-extension://abcdefghijklmnop",
]
BAD_PATTERNS = [
    "",
    "localhost:3000",
    "http://app.example.com/",
    "http://app.example.com/path",
    "http://*",
    "http://*.",
    "http://a.*.com",
    "http://app.example.com:99999",
    "http://app.example.com:",
    "null",
    " http://a.com",
    "http://user@a.com",
]


@pytest.mark.parametrize("pattern", GOOD_PATTERNS)
def test_a_good_pattern_is_taken_and_matches_the_config_regex(pattern: str) -> None:
    CorsPolicy([pattern])
    assert re.fullmatch(ORIGIN_PATTERN, pattern)


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_a_bad_pattern_is_refused_and_fails_the_config_regex(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="cors_origins"):
        CorsPolicy([pattern])
    assert not re.fullmatch(ORIGIN_PATTERN, pattern)


@pytest.mark.parametrize(
    ("pattern", "origin", "allowed"),
    [
        ("https://app.example.com", "https://app.example.com", True),
        ("https://app.example.com", "HTTPS://APP.example.com", True),
        ("https://app.example.com", "http://app.example.com", False),
        ("https://app.example.com", "https://app.example.com:8443", False),
        ("https://app.example.com", "https://app.example.com.evil.net", False),
        ("https://app.example.com", "https://evilapp.example.com", False),
        # Default ports are the same origin, written or not.
        ("https://app.example.com:443", "https://app.example.com", True),
        ("https://app.example.com", "https://app.example.com:443", True),
        ("http://app.example.com:80", "http://app.example.com", True),
        # Port wildcard: any port, or none, on exactly that scheme and host.
        ("http://localhost:*", "http://localhost:5173", True),
        ("http://localhost:*", "http://localhost", True),
        ("http://localhost:*", "https://localhost:5173", False),
        ("http://localhost:*", "http://localhost.evil.net:5173", False),
        ("http://localhost:*", "http://127.0.0.1:5173", False),
        ("http://127.0.0.1:*", "http://127.0.0.1:8000", True),
        ("http://[::1]:*", "http://[::1]:8000", True),
        # Subdomain wildcard: one or more labels, never the domain itself.
        ("https://*.example.com", "https://a.example.com", True),
        ("https://*.example.com", "https://a.b.example.com", True),
        ("https://*.example.com", "https://example.com", False),
        ("https://*.example.com", "https://a.example.com:8443", False),
        ("https://*.example.com", "https://evilexample.com", False),
        ("https://*.example.com:*", "https://a.example.com:8443", True),
        # Any origin, but never an opaque one.
        ("*", "https://anything.example", True),
        ("*", "null", False),
        # Not origins at all.
        ("http://localhost:*", "null", False),
        ("http://localhost:*", "", False),
        ("http://localhost:*", "http://localhost:5173/", False),
        ("http://localhost:*", "http://localhost:abc", False),
        ("http://localhost:*", "http://localhost:5173 ", False),
        ("*", "not an origin", False),
    ],
)
def test_allows(pattern: str, origin: str, allowed: bool) -> None:
    assert CorsPolicy([pattern]).allows(origin) is allowed


def test_no_patterns_allow_nothing() -> None:
    policy = CorsPolicy([])
    assert not policy.enabled
    assert not policy.allows("http://localhost:5173")
    assert not policy.allows(None)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https"]),
    labels=st.lists(_label, min_size=1, max_size=4),
    port=st.integers(1, 65535),
    other=st.integers(1, 65535),
)
def test_an_origin_is_allowed_by_itself_and_its_port_wildcard_only(
    scheme: str, labels: list[str], port: int, other: int
) -> None:
    host = ".".join(labels)
    origin = f"{scheme}://{host}:{port}"
    assert CorsPolicy([origin]).allows(origin)
    assert CorsPolicy([f"{scheme}://{host}:*"]).allows(origin)
    assert CorsPolicy([f"{scheme}://*.{host}:*"]).allows(f"{scheme}://x.{host}:{port}")
    assert not CorsPolicy([f"{scheme}://*.{host}:*"]).allows(origin)
    defaults = {"http": 80, "https": 443}
    if other != port and defaults[scheme] not in (port, other):
        assert not CorsPolicy([origin]).allows(f"{scheme}://{host}:{other}")


# -- preflight and response headers ----------------------------------------------------------

LOCAL = CorsPolicy(["http://localhost:*"])


def test_a_preflight_grants_the_method_and_the_headers_asked_for() -> None:
    headers = LOCAL.preflight(
        "http://localhost:5173",
        "POST",
        "Authorization, content-type, ce-specversion,CE-ID, ce-source, ce-type, last-event-id",
        {"GET", "POST"},
    )
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    allowed = headers["Access-Control-Allow-Headers"].split(", ")
    assert allowed == [
        "authorization",
        "content-type",
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "last-event-id",
    ]
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in headers
    assert "Access-Control-Allow-Private-Network" not in headers


def test_a_preflight_without_request_headers_lists_the_fixed_ones() -> None:
    headers = LOCAL.preflight("http://localhost:5173", "GET", None, {"GET"})
    assert headers["Access-Control-Allow-Headers"] == ", ".join(ALLOWED_HEADERS)
    assert {"authorization", "content-type", "last-event-id", "x-api-key"} <= set(ALLOWED_HEADERS)


def test_a_preflight_grants_a_private_network_request_of_an_allowed_origin() -> None:
    headers = LOCAL.preflight("http://localhost:1", "GET", None, {"GET"}, private_network=True)
    assert headers["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize(
    ("origin", "method", "requested", "reason"),
    [
        ("http://evil.example", "GET", None, "origin 'http://evil.example' is not allowed"),
        ("null", "GET", None, "origin 'null' is not allowed"),
        ("http://localhost:5173", "DELETE", None, "method DELETE is not allowed"),
        ("http://localhost:5173", "GET", "authorization, x-custom", "header x-custom is not"),
        ("http://localhost:5173", "GET", "cookie", "header cookie is not"),
    ],
)
def test_a_preflight_is_refused_naming_why(
    origin: str, method: str, requested: str | None, reason: str
) -> None:
    with pytest.raises(Forbidden, match=re.escape(reason)) as caught:
        LOCAL.preflight(origin, method, requested, {"GET", "POST"})
    assert caught.value.code == ErrorCode.FORBIDDEN


def test_a_preflight_with_no_patterns_says_cors_is_off() -> None:
    with pytest.raises(Forbidden, match="cors_origins"):
        CorsPolicy([]).preflight("http://localhost:5173", "GET", None, {"GET"})


def test_the_response_headers_of_an_allowed_origin_only() -> None:
    headers = LOCAL.response_headers("http://localhost:5173")
    assert headers == {
        "Access-Control-Allow-Origin": "http://localhost:5173",
        "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
    }
    assert {"Retry-After", "Location", "WWW-Authenticate"} <= set(EXPOSED_HEADERS)
    assert LOCAL.response_headers("http://evil.example") == {}
    assert LOCAL.response_headers(None) == {}
