"""Server configuration: defaults < TOML file < environment < flags, with named errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridbus.errors import InvalidInput
from hybridbus.server.config import OTHER_VARIABLES, ServerConfig, load_config


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


def test_a_misspelt_environment_variable_is_refused_like_an_unknown_toml_key() -> None:
    with pytest.raises(InvalidInput, match="HYBRIDBUS_PROT"):
        load_config(env={"HYBRIDBUS_PROT": "9000"})
    with pytest.raises(InvalidInput, match="HYBRIDBUS_PING_INTERVALL"):
        load_config(env={"HYBRIDBUS_PORT": "9000", "HYBRIDBUS_PING_INTERVALL": "5"})


def test_the_variables_that_are_not_settings_are_allowed_and_documented() -> None:
    others = {
        "HYBRIDBUS_URL": "ws://127.0.0.1:1/v1/ws",  # the client commands' --url
        "HYBRIDBUS_TOKEN": "eyJ.x.y",  # their --token
        "HYBRIDBUS_CA": "/tmp/ca.pem",  # their --ca
        "HYBRIDBUS_CERT": "/tmp/client.pem",  # their --cert
        "HYBRIDBUS_KEY": "/tmp/client-key.pem",  # their --key
        "HYBRIDBUS_REQUIRE_SERVICES": "1",  # the test suite
        "HYBRIDBUS_REQUIRE_BROWSER": "1",
        "HYBRIDBUS_CONSOLE_SCREENSHOTS": "/tmp/shots",  # the console tests' screenshots
        "HYBRIDBUS_SERVICES_DIR": "/tmp/services",  # make services
        "HYBRIDBUS_REDIS_URL": "redis://127.0.0.1:1/0",  # the Redis of redis:///name
    }
    assert load_config(env={**others, "HYBRIDBUS_PORT": "9000"}).port == 9000
    assert set(others) == set(OTHER_VARIABLES)
    documented = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name in OTHER_VARIABLES:
        assert f"`{name}`" in documented, name


def test_every_hybridbus_variable_read_in_the_tree_is_a_setting_or_allowed() -> None:
    """A new `HYBRIDBUS_*` variable read somewhere must join `OTHER_VARIABLES` (and the docs)."""
    root = Path(__file__).resolve().parents[2]
    files = [root / "Makefile"]
    for folder in ("src", "tests", "benchmarks", ".ci", "examples"):
        files.extend(path for path in (root / folder).rglob("*") if path.is_file())
    found: set[str] = set()
    for path in files:
        if path.suffix in ("", ".py", ".toml", ".sh", ".yml") and path != Path(__file__):
            found.update(re.findall(r"\bHYBRIDBUS_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert {"HYBRIDBUS_URL", "HYBRIDBUS_TOKEN", "HYBRIDBUS_JWT_SECRET"} <= found
    refused = []
    for name in sorted(found):
        try:
            load_config(env={name: "x"})
        except InvalidInput as exc:
            if "unknown" in str(exc):
                refused.append(name)
    assert not refused, f"read somewhere but refused by load_config: {refused}"
