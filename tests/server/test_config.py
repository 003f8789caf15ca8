"""Server configuration: defaults < TOML file < environment < flags, with named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridbus.errors import InvalidInput
from hybridbus.server.config import ServerConfig, load_config


def test_defaults_run_the_embedded_engine_on_loopback() -> None:
    config = load_config()
    assert config == ServerConfig()
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.engine.startswith("sqlite://")
    assert config.anonymous_tenant is None


def test_layers_override_in_order(tmp_path: Path) -> None:
    file = tmp_path / "hybridbus.toml"
    file.write_text('port = 9000\nengine = "memory://"\nping_interval = 5.0\n')
    env = {"HYBRIDBUS_PORT": "9100", "HYBRIDBUS_ANONYMOUS_TENANT": "public", "PATH": "/bin"}
    config = load_config(file, env, {"port": 9200, "host": None})
    assert config.port == 9200  # flag beats environment beats file
    assert config.engine == "memory://"  # from the file
    assert config.ping_interval == 5.0
    assert config.anonymous_tenant == "public"  # from the environment
    assert config.host == "127.0.0.1"  # a flag left unset changes nothing
    assert load_config(file, env).port == 9100


@pytest.mark.parametrize(
    ("toml", "env", "names"),
    [
        ("prot = 1\n", {}, "'prot'"),
        ("port = -1\n", {}, "config.toml"),
        ("", {"HYBRIDBUS_PORT": "eighty"}, "environment"),
        ("", {"HYBRIDBUS_PING_INTERVAL": "0"}, "environment"),
        ("port = [\n", {}, "TOML"),
    ],
)
def test_bad_settings_name_the_setting_or_its_origin(
    tmp_path: Path, toml: str, env: dict[str, str], names: str
) -> None:
    file = tmp_path / "config.toml"
    file.write_text(toml)
    with pytest.raises(InvalidInput, match=names):
        load_config(file, env)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_config(tmp_path / "nope.toml")
