"""The `hybridbus` command line: flags > environment > file > defaults, and errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import hybridbus.serve
from hybridbus.cli import main, parser
from hybridbus.core.identity import Grant
from hybridbus.server.config import ServerConfig
from hybridbus.server.keys import KeyRing, KeySpec
from hybridbus.server.tokens import TokenVerifier


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


# -- hybridbus token ------------------------------------------------------------------------
# The printed token is checked with the server's own verifier.


DEV_SECRET = "development-secret-of-at-least-32-bytes"


def printed_token(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1  # one line: the token
    return out.strip()


def test_token_signs_with_the_environment_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYBRIDBUS_JWT_SECRET", DEV_SECRET)
    argv = ["token", "--sub", "alice", "--tenant", "acme", "--role", "editor", "--role", "viewer"]
    argv += ["--ttl", "30m", "--device", "laptop", "--sid", "s1", "--app", "web"]
    argv += ["--topic", "chat/#", "--topic", "docs/+"]
    token = printed_token(argv, capsys)
    identity = TokenVerifier(KeyRing([KeySpec(alg="HS256", secret=DEV_SECRET)])).verify(token)
    assert (identity.user, identity.tenant, identity.roles) == (
        "alice",
        "acme",
        ("editor", "viewer"),
    )
    assert (identity.device, identity.session, identity.app) == ("laptop", "s1", "web")
    assert identity.grants == (Grant("chat/#"), Grant("docs/+"))
    assert identity.admin is False and identity.token_id
    assert identity.issued is not None and identity.expires == identity.issued + 1800
    assert abs(identity.issued - time.time()) < 5


def test_token_takes_a_kid_issuer_audience_and_admin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYBRIDBUS_JWT_SECRET", DEV_SECRET)
    argv = ["token", "--sub", "op", "--tenant", "ops", "--admin", "--kid", "dev-1"]
    token = printed_token([*argv, "--issuer", "dev", "--audience", "bus"], capsys)
    assert jwt.get_unverified_header(token)["kid"] == "dev-1"
    ring = KeyRing([KeySpec(kid="dev-1", alg="HS256", secret=DEV_SECRET)])
    identity = TokenVerifier(ring, issuer="dev", audience="bus").verify(token)
    assert identity.admin is True and identity.roles == ()


def test_token_signs_with_a_secret_file_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HYBRIDBUS_JWT_SECRET", "x" * 40)
    file = tmp_path / "secret"
    file.write_text(DEV_SECRET + "\n")
    token = printed_token(
        ["token", "--sub", "a", "--tenant", "t", "--secret-file", str(file)], capsys
    )
    assert (
        TokenVerifier(KeyRing([KeySpec(alg="HS256", secret=DEV_SECRET)])).verify(token).user == "a"
    )


def test_token_signs_with_a_private_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HYBRIDBUS_JWT_SECRET", raising=False)
    key = ec.generate_private_key(ec.SECP256R1())
    file = tmp_path / "key.pem"
    file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    argv = ["token", "--sub", "a", "--tenant", "t", "--private-key", str(file), "--alg", "ES256"]
    token = printed_token([*argv, "--kid", "ec"], capsys)
    ring = KeyRing([KeySpec(kid="ec", alg="ES256", public_key=public.decode())])
    assert TokenVerifier(ring).verify(token).user == "a"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], None, "no signing key: set HYBRIDBUS_JWT_SECRET"),
        ([], "too-short", "at least 32 bytes"),
        (["--secret-file", "/nonexistent/secret"], None, "cannot read key file"),
        (["--private-key", "/nonexistent/key.pem"], None, "needs --alg"),
        (["--private-key", "/nonexistent/key.pem", "--alg", "RS256"], None, "cannot read key file"),
        (["--alg", "RS256"], DEV_SECRET, "--alg goes with --private-key"),
        (["--tenant", "a/b"], DEV_SECRET, "tenantid"),
        (["--topic", "a/#/b"], DEV_SECRET, "topics"),
        (["--ttl", "soon"], DEV_SECRET, "not a duration"),
        (["--secret-file", "f", "--private-key", "k"], DEV_SECRET, "not allowed with"),
    ],
)
def test_token_without_a_usable_key_or_claims_exits_2(
    argv: list[str],
    env: str | None,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("HYBRIDBUS_JWT_SECRET", raising=False)
    if env is not None:
        monkeypatch.setenv("HYBRIDBUS_JWT_SECRET", env)
    with pytest.raises(SystemExit) as info:
        main(["token", "--sub", "alice", "--tenant", "acme", *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert DEV_SECRET not in err


# -- hybridbus key, and token --config -------------------------------------------------


def test_key_prints_a_key_and_the_entry_that_identifies_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tomllib

    from hybridbus.server.access import ApiKeys

    assert main(["key", "--name", "billing", "--tenant", "acme", "--role", "editor"]) == 0
    key, _, entry = capsys.readouterr().out.partition("\n\n")
    config = tomllib.loads(entry)
    assert config["api_keys"][0]["name"] == "billing"
    assert key.strip() not in entry  # only the hash is in the entry
    found = ApiKeys(config["api_keys"]).identify(key.strip())
    assert found is not None
    name, identity = found
    assert (name, identity.tenant, identity.roles, identity.admin) == (
        "billing",
        "acme",
        ("editor",),
        False,
    )
    assert main(["key", "--name", "ops", "--admin"]) == 0
    key, _, entry = capsys.readouterr().out.partition("\n\n")
    admin = ApiKeys(tomllib.loads(entry)["api_keys"]).identify(key.strip())
    assert admin is not None and admin[1].admin


def test_key_needs_a_tenant_or_admin_and_a_valid_tenant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["key", "--name", "x"])
    assert exit.value.code == 2
    with pytest.raises(SystemExit) as exit:
        main(["key", "--name", "x", "--tenant", "a/b"])
    assert exit.value.code == 2
    assert "tenant" in capsys.readouterr().err


def test_token_signs_with_the_config_files_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYBRIDBUS_JWT_SECRET", raising=False)
    secret = "a-config-file-secret-of-at-least-32-bytes"
    config = tmp_path / "hybridbus.toml"
    config.write_text(f'jwt_secret = "{secret}"\n')
    token = printed_token(
        ["token", "--sub", "ann", "--tenant", "acme", "--config", str(config)], capsys
    )
    verifier = TokenVerifier(KeyRing([KeySpec(alg="HS256", secret=secret)]))
    assert verifier.verify(token).user == "ann"


# -- help ---------------------------------------------------------------------------------


def commands() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name."""
    (group,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def test_every_argument_of_every_command_has_help() -> None:
    found = commands()
    assert set(found) == {
        "serve", "publish", "subscribe", "history", "token", "key", "groups", "dlq", "schemas",
        "webhooks", "nodes", "bridge", "bridges", "watch", "follow", "changes", "tail", "log",
        "presence",
    }  # fmt: skip
    for name, command in found.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"hybridbus {name} {action.dest}: no help"


def help_of(*argv: str) -> str:
    entry = Path(sys.executable).with_name("hybridbus")  # the installed console script
    done = subprocess.run([entry, *argv, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # argparse wraps lines where it likes


@pytest.mark.parametrize(
    "command", [(), ("publish",), ("subscribe",), ("history",), ("presence",)]
)
def test_help_names_the_environment_and_the_exit_statuses(command: tuple[str, ...]) -> None:
    text = help_of(*command)
    for needed in ("HYBRIDBUS_URL", "HYBRIDBUS_TOKEN", "--url", "exit status", "3 "):
        assert needed in text, f"hybridbus {' '.join(command)} --help lacks {needed!r}"
