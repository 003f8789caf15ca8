"""Encode and decode of a ~1 KB event, per operation, vs the official `cloudevents` SDK.

hybridbus: `encode_json`/`decode_json` (CloudEvents JSON structured format),
`encode_msgpack`/`decode_msgpack` (the log's format), `to_http`/`from_http`
(HTTP binary mode). Peers: the SDK's legacy API (`cloudevents.v1`, which was
`cloudevents.http` / `cloudevents.conversion` before SDK 2.x) — the primary
peer — and its new `cloudevents.core` API. Each side decodes what it encoded.
Targets: <= 5 µs per operation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from benchmarks.harness import Case, Result, Settings, per_op_seconds, run_cases
from benchmarks.samples import KB_ATTRIBUTES, KB_DATA, kb_event
from hybridbus.core.codecs import (
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    from_http,
    to_http,
)

__all__ = ["cases", "run"]

TARGET_US = 5.0


def _micro(fn: Callable[[], object], settings: Settings) -> Callable[[], float]:
    def measure() -> float:
        return per_op_seconds(fn, settings.codec_seconds) * 1e6

    return measure


def _ours(settings: Settings) -> list[Case]:
    event = kb_event()
    json_bytes = encode_json(event)
    msgpack_bytes = encode_msgpack(event)
    headers, body = to_http(event)
    assert decode_json(json_bytes) == event
    assert decode_msgpack(msgpack_bytes) == event
    assert from_http(headers, body) == event

    def ours(op: str, label: str, fn: Callable[[], object], peer: str) -> Case:
        return Case(
            f"codec.{op}", label, "µs/op", _micro(fn, settings), peer=peer, target=TARGET_US
        )

    return [
        ours("json.encode", "encode_json", lambda: encode_json(event), "codec.sdk.json.encode"),
        ours(
            "json.decode", "decode_json", lambda: decode_json(json_bytes), "codec.sdk.json.decode"
        ),
        # The SDK has no MessagePack: what a user would otherwise reach for is its JSON.
        ours(
            "msgpack.encode",
            "encode_msgpack",
            lambda: encode_msgpack(event),
            "codec.sdk.json.encode",
        ),
        ours(
            "msgpack.decode",
            "decode_msgpack",
            lambda: decode_msgpack(msgpack_bytes),
            "codec.sdk.json.decode",
        ),
        ours("http.encode", "to_http", lambda: to_http(event), "codec.sdk.http.encode"),
        ours("http.decode", "from_http", lambda: from_http(headers, body), "codec.sdk.http.decode"),
    ]


def _legacy_sdk(settings: Settings) -> list[Case]:
    """`cloudevents.v1`: the API of cloudevents 1.x (`cloudevents.http`, `.conversion`)."""
    from cloudevents.v1.conversion import to_binary, to_structured
    from cloudevents.v1.http import CloudEvent
    from cloudevents.v1.http import from_http as sdk_from_http

    event = CloudEvent(dict(KB_ATTRIBUTES), KB_DATA)
    s_headers, s_body = to_structured(event)
    b_headers, b_body = to_binary(event)
    # What an HTTP request carries: text headers and a bytes body.
    s_headers = {k: str(v) for k, v in s_headers.items()}
    b_headers = {k: str(v) for k, v in b_headers.items()}
    assert sdk_from_http(s_headers, s_body).get_data() == KB_DATA
    assert sdk_from_http(b_headers, b_body).get_data() == KB_DATA

    def peer(op: str, label: str, fn: Callable[[], object]) -> Case:
        return Case(f"codec.sdk.{op}", label, "µs/op", _micro(fn, settings), is_peer=True)

    return [
        peer("json.encode", "SDK to_structured", lambda: to_structured(event)),
        peer("json.decode", "SDK from_http (structured)", lambda: sdk_from_http(s_headers, s_body)),
        peer("http.encode", "SDK to_binary", lambda: to_binary(event)),
        peer("http.decode", "SDK from_http (binary)", lambda: sdk_from_http(b_headers, b_body)),
    ]


def _core_sdk(settings: Settings) -> list[Case]:
    """`cloudevents.core`: the SDK's new API (2.x)."""
    from cloudevents.core.bindings import http as core_http
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    fmt = JSONFormat()
    attributes: dict[str, Any] = dict(KB_ATTRIBUTES)
    attributes["time"] = datetime.fromisoformat(KB_ATTRIBUTES["time"])
    event = CloudEvent(attributes, KB_DATA)
    structured = core_http.to_structured(event, fmt)
    binary = core_http.to_binary(event, fmt)
    assert core_http.from_structured(structured, fmt).get_data() == KB_DATA
    assert core_http.from_binary(binary, fmt).get_data() == KB_DATA

    def peer(op: str, label: str, fn: Callable[[], object]) -> Case:
        return Case(f"codec.sdk2.{op}", label, "µs/op", _micro(fn, settings), is_peer=True)

    return [
        peer("json.encode", "SDK core to_structured", lambda: core_http.to_structured(event, fmt)),
        peer(
            "json.decode",
            "SDK core from_structured",
            lambda: core_http.from_structured(structured, fmt),
        ),
        peer("http.encode", "SDK core to_binary", lambda: core_http.to_binary(event, fmt)),
        peer("http.decode", "SDK core from_binary", lambda: core_http.from_binary(binary, fmt)),
    ]


def cases(settings: Settings) -> list[Case]:
    try:
        import cloudevents  # noqa: F401
    except ImportError:
        peers: list[Case] = []  # the peers need `pip install cloudevents`
    else:
        peers = _legacy_sdk(settings) + _core_sdk(settings)
    return _ours(settings) + peers


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    return run_cases(cases(settings), settings, log)


if __name__ == "__main__":
    from benchmarks.run import main

    main(["codec"])
