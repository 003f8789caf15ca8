"""The `hybridbus` command line: flags > environment > file > defaults, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import hybridbus.serve
from hybridbus.cli import main
from hybridbus.server.config import ServerConfig


def test_serve_builds_its_config_from_flags_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ServerConfig] = []
    monkeypatch.setattr(hybridbus.serve, "run", lambda config: seen.append(config) or 0)
    file = tmp_path / "hybridbus.toml"
    file.write_text('host = "0.0.0.0"\nport = 9000\nping_interval = 5.0\n')
    monkeypatch.setenv("HYBRIDBUS_PORT", "9100")
    monkeypatch.setenv("HYBRIDBUS_ENGINE", "memory://")
    status = main(["serve", "--config", str(file), "--port", "9200", "--anonymous-tenant", "pub"])
    assert status == 0
    (config,) = seen
    assert config.port == 9200  # flag over environment over file
    assert config.engine == "memory://"  # environment
    assert (config.host, config.ping_interval) == ("0.0.0.0", 5.0)  # file
    assert config.anonymous_tenant == "pub"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "70000"], "port"),
        (["serve", "--config", "/nonexistent/hybridbus.toml"], "cannot read"),
    ],
)
def test_bad_settings_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_a_bad_log_level_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert hybridbus.serve.run(ServerConfig(log_level="loud")) == 2
    assert "log_level" in capsys.readouterr().err
