"""Plug-ins: third-party formatters and transports found through real entry points.

A tiny distribution (a package and its `.dist-info` with `entry_points.txt`) is
written to a temporary directory put on `sys.path`: `importlib.metadata` finds
it exactly as it finds an installed package.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridbus.core.logs import LogRecord
from hybridbus.errors import InvalidInput
from hybridbus.logs import Shipper, formatter, transport
from hybridbus.logs.plugins import formatter_names, transport_schemes

PLUGIN = '''
"""A third-party hybridbus log plug-in (tests)."""
import json

SENT = []


class Upper:
    name = "upper"

    def __init__(self, prefix=""):
        self.prefix = prefix

    def format(self, record, service, instance):
        return f"{self.prefix}{service}/{instance} {record.message.upper()}\\n".encode()


shout = Upper(prefix="!")


class Memory:
    def __init__(self, url, token=None, **options):
        self.url, self.token, self.options = url, token, options

    async def open(self):
        SENT.append(("open", self.url, self.token))

    async def send(self, topic, events):
        SENT.append((topic, [e.data["message"] for e in events]))

    async def close(self):
        SENT.append(("close",))


def not_a_transport(url, **options):
    return object()


def broken(url, **options):
    raise RuntimeError("never loads")
'''

ENTRY_POINTS = """
[hybridbus.log_formatters]
upper = acme_logplug:Upper
shout = acme_logplug:shout
json = acme_logplug:Upper
missing = acme_logplug:NoSuchThing

[hybridbus.log_transports]
memory = acme_logplug:Memory
bogus = acme_logplug:not_a_transport
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    (tmp_path / "acme_logplug.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "acme_logplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-logplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield importlib.import_module("acme_logplug")
    sys.modules.pop("acme_logplug", None)


def test_a_third_party_formatter_loads_by_name(plugin: object) -> None:
    assert {"upper", "shout", "missing"} <= set(formatter_names())
    record = LogRecord(message="hi")
    assert formatter("upper", prefix="> ").format(record, "api", "i") == b"> api/i HI\n"
    assert formatter("shout").format(record, "api", "i") == b"!api/i HI\n"
    # A built-in wins over a plug-in of the same name.
    assert formatter("json").format(record, "a", "b").startswith(b'{"service":"a"')
    with pytest.raises(InvalidInput, match="failed to load"):
        formatter("missing")


def test_a_third_party_transport_loads_by_scheme_and_ships(plugin: object) -> None:
    assert "memory" in transport_schemes()
    carrier = transport("memory://anywhere", token="t-1", batch_size=3)
    assert carrier.options == {"batch_size": 3}  # type: ignore[attr-defined]
    shipper = Shipper(carrier, service="api", instance="i", linger=0.2)
    for message in ["a", "b", "c"]:
        shipper.submit(LogRecord(message=message))
    assert shipper.close(10.0)
    assert plugin.SENT == [  # type: ignore[attr-defined]
        ("open", "memory://anywhere", "t-1"),
        ("logs/api/i", ["a", "b", "c"]),
        ("close",),
    ]


def test_a_transport_plugin_must_make_a_transport(plugin: object) -> None:
    with pytest.raises(InvalidInput, match="open\\(\\), send\\(\\) and close\\(\\)"):
        transport("bogus://x")


def test_unknown_names_say_what_exists(plugin: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        formatter("nope")
    assert "json, plain, syslog, protobuf" in str(caught.value)
    assert "upper" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        transport("smtp://mail")
    for scheme in ("ws://", "grpc://", "http://", "file://", "memory://"):
        assert scheme in str(caught.value)


def test_without_the_plugin_its_names_are_unknown() -> None:
    assert "upper" not in formatter_names()
    with pytest.raises(InvalidInput, match="no log transport"):
        transport("memory://x")
