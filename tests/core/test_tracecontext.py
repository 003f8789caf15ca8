"""W3C Trace Context values in an event (core/tracecontext.py): parse, format, the sampled check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridbus.core.tracecontext import (
    format_traceparent,
    parse_traceparent,
    sampled,
    trace_headers,
)

W3C_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_w3c_example() -> None:
    parsed = parse_traceparent(W3C_EXAMPLE)
    assert parsed is not None
    assert parsed.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert parsed.span_id == 0x00F067AA0BA902B7
    assert parsed.sampled and str(parsed) == W3C_EXAMPLE
    assert sampled(W3C_EXAMPLE) and not sampled(W3C_EXAMPLE[:-1] + "0")


@pytest.mark.parametrize(
    "value",
    [
        None,
        17,
        "",
        W3C_EXAMPLE.upper(),  # hex is lower case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        W3C_EXAMPLE + "-extra",  # version 00 has exactly four fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_what_is_not_a_traceparent_parses_to_none(value: object) -> None:
    assert parse_traceparent(value) is None
    assert trace_headers({"traceparent": value} if value is not None else {}) == {}


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    parsed = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
    assert parsed is not None and parsed.span_id == 0x00F067AA0BA902B7


@given(
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.booleans(),
)
def test_format_and_parse_round_trip(trace_id: int, span_id: int, is_sampled: bool) -> None:
    value = format_traceparent(trace_id, span_id, is_sampled)
    assert len(value) == 55
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.sampled) == (trace_id, span_id, is_sampled)
    assert sampled(value) is is_sampled


@given(st.text(max_size=80))
def test_the_sampled_check_never_raises_and_agrees_with_parsing(value: str) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None and value.startswith("00-") and len(value) == 55:
        assert sampled(value) is parsed.sampled


def test_trace_headers_carry_both_extensions() -> None:
    extensions = {"traceparent": W3C_EXAMPLE, "tracestate": "vendor=1", "other": "x"}
    assert trace_headers(extensions) == {"traceparent": W3C_EXAMPLE, "tracestate": "vendor=1"}
    assert trace_headers({"tracestate": "vendor=1"}) == {}
