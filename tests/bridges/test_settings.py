"""[[bridges]] tables in the settings file, the registry's refusals, and the two commands."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import msgspec
import pytest
from tests.bridges.support import VENV_BIN, eventually
from tests.servers import running_server
from tests.services import free_port

import hybridbus
from hybridbus.bridges.registry import Bridges
from hybridbus.bridges.settings import AnyBridge, MqttBridge, PostgresBridge
from hybridbus.errors import InvalidInput, InvalidSettings
from hybridbus.server.config import load_config

SETTINGS = """
engine = "memory://"

[[bridges]]
kind = "mqtt"
name = "sensors"
direction = "in"
url = "mqtt://127.0.0.1:1883"
subscribe = ["sensors/#"]
topic = "acme/iot/{topic}"
wrap = { type = "com.acme.reading", id = "json:id" }

[[bridges]]
kind = "postgres"
name = "audit"
url = "postgresql://postgres@127.0.0.1:5432/postgres"
patterns = ["acme/#"]
enabled = false
"""


def test_bridges_from_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    config = load_config(path)
    mqtt, sink = config.bridges
    assert isinstance(mqtt, MqttBridge) and isinstance(sink, PostgresBridge)
    assert (mqtt.kind, mqtt.session_id, mqtt.wrapper and mqtt.wrapper.id) == (
        "mqtt", "hybridbus-sensors", "json:id"
    )  # fmt: skip
    assert (sink.direction, sink.enabled, sink.data, sink.start) == ("out", False, "jsonb",
                                                                     "earliest")  # fmt: skip


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "mqtt"\nname = "a"\ndirection = "in"\nurl = "mqtt://h"\ntopic = "acme/{topic}"',
         "needs subscribe"),
        ('kind = "mqtt"\nname = "a"\ndirection = "out"\nurl = "mqtt://h"\npattern = "+/x"',
         "literal tenant"),
        ('kind = "mqtt"\nname = "a"\ndirection = "out"\nurl = "mqtt://h"\npattern = "a/#"\n'
         'protocol = "3.1.1"', "structured"),
        ('kind = "postgres"\nname = "a"\nurl = "postgres://h/db"\npatterns = ["a/#"]\n'
         'direction = "in"', "'out' only"),
        ('kind = "smtp"\nname = "a"\ndirection = "out"', "kind"),
    ],
)  # fmt: skip
def test_bad_tables_are_refused_naming_the_bridge(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f"[[bridges]]\n{table}\n")
    with pytest.raises(InvalidInput, match=message) as caught:
        load_config(path)
    assert "bridges" in str(caught.value)


async def test_names_are_unique_and_disabled_ones_listed(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    config = load_config(path)
    async with hybridbus.open("memory://") as bus:
        with pytest.raises(InvalidSettings, match="set twice"):
            await Bridges(bus, [config.bridges[0], config.bridges[0]]).start()
        bridges = Bridges(bus, [config.bridges[1]])
        await bridges.start()  # disabled: nothing runs, nothing connects
        [info] = bridges.infos()
        await bridges.close()
    assert (info.name, info.state, info.settings["url"]) == (
        "audit", "stopped", "postgresql://postgres@127.0.0.1:5432/postgres"
    )  # fmt: skip


def test_hybridbus_bridge_refuses_a_file_without_bridges(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('engine = "memory://"\n')
    run = subprocess.run(
        [str(VENV_BIN / "hybridbus"), "bridge", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert "has no [[bridges]]" in run.stderr


async def test_hybridbus_bridges_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SETTINGS)
    config = load_config(path)
    async with running_server(bridges=[config.bridges[1]]) as server:
        run = await _run(
            str(VENV_BIN / "hybridbus"), "bridges", "--url", f"ws://127.0.0.1:{server.port}/v1/ws"
        )
    assert run[0] == 0, run
    lines = run[1].splitlines()
    assert lines[0].split()[:5] == ["NAME", "KIND", "DIRECTION", "STATE", "LAG"]
    assert lines[1].split()[:4] == ["audit", "postgres", "out", "stopped"]


async def _run(*argv: str) -> tuple[int, str, str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_an_unreachable_broker_does_not_stop_the_server() -> None:
    port = free_port()  # nothing listens there
    config_text = (
        SETTINGS.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{port}")
        .replace(
            "postgresql://postgres@127.0.0.1:5432/postgres",
            f"postgresql://postgres@127.0.0.1:{port}/x",
        )
        .replace("enabled = false", "enabled = true")
    )
    async with hybridbus.open("memory://") as bus:
        settings = msgspec.convert(tomllib.loads(config_text)["bridges"], list[AnyBridge])
        bridges = Bridges(bus, settings)
        await bridges.start()
        try:
            await eventually(
                lambda: all(i.state == "reconnecting" and i.errors for i in bridges.infos()),
                what="both bridges retrying",
            )
            infos = bridges.infos()
        finally:
            await bridges.close()
    assert all("onnect" in i.last_error or "refused" in i.last_error for i in infos), infos
