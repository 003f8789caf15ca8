"""The CLI's client certificate for mutual TLS (`--cert` / `--key`), with real handshakes.

A mutual-TLS server (`tls_client_ca`: the test CA of tests.gateways.tls_support) runs in
this process; the CLI runs as a subprocess (`python -m hybridbus`), as a user runs it.

    without a client certificate        publish (WebSocket) and groups (HTTPS): refused,
                                        exit 3, saying to pass --cert/--key
    with --cert/--key, or the env       publish, subscribe --since (WebSocket) and groups
    ($HYBRIDBUS_CERT, $HYBRIDBUS_KEY)   (HTTPS): work
    `hybridbus log` with --cert/--key   ships over wss:// and over grpcs:// (refused there
                                        without them)
    bad arguments                       --key without --cert, an unreadable certificate,
                                        a key that is not the certificate's: exit 2,
                                        naming the flag
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.gateways.grpc_support import grpc_port
from tests.gateways.tls_support import Pki
from tests.servers import running_server

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`hybridbus ARGS` in a subprocess, without the caller's HYBRIDBUS_CA/CERT/KEY."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HYBRIDBUS_CA", "HYBRIDBUS_CERT", "HYBRIDBUS_KEY")
    }
    return subprocess.run(
        [sys.executable, "-m", "hybridbus", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, **(env or {})},
        check=False,
    )


async def run(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`cli` in a thread (the server under test runs on this loop)."""
    return await asyncio.to_thread(cli, *args, env=env, input=input)


async def test_the_cli_presents_a_client_certificate(pki: Pki) -> None:
    settings = {
        "tls_cert": str(pki.server.cert),
        "tls_key": str(pki.server.key),
        "tls_client_ca": str(pki.ca),
        "grpc_port": 0,
    }
    async with running_server(**settings) as server:
        url = ("--url", server.url, "--ca", str(pki.ca))
        mine = ("--cert", str(pki.client.cert), "--key", str(pki.client.key))
        # No client certificate: the handshake is refused, and the CLI says what to pass.
        for command in (("publish", "mtls/1", "--data", "0"), ("groups",)):
            refused = await run(*command, *url)
            assert refused.returncode == 3, refused
            assert "--cert" in refused.stderr and "--key" in refused.stderr, refused
        # With one: publish, subscribe from the first publish's token, groups over HTTPS.
        first = await run("publish", "mtls/1", "--data", "1", "--print", "token", *url, *mine)
        assert first.returncode == 0, first
        second = await run("publish", "mtls/1", "--data", "2", "--id", "second", *url, *mine)
        assert second.returncode == 0 and '"offset"' in second.stdout, second
        env = {
            "HYBRIDBUS_CA": str(pki.ca),
            "HYBRIDBUS_CERT": str(pki.client.cert),
            "HYBRIDBUS_KEY": str(pki.client.key),
        }
        since = first.stdout.strip()
        got = await run("subscribe", "mtls/1", "--since", since, "--count", "1", "--url",
                        server.url, env=env)  # fmt: skip
        assert got.returncode == 0, got
        assert json.loads(got.stdout)["event"]["id"] == "second", got
        listed = await run("groups", "--json", "--url", server.url, env=env)
        assert listed.returncode == 0, listed
        line = "shipped over mutual TLS"
        shipped = await run("log", "--source", "api", "--instance", "i1", *url, *mine, input=line)
        assert shipped.returncode == 0, shipped
        # Over gRPC too: the certificate goes into the channel's credentials.
        grpc = ("--url", f"grpcs://127.0.0.1:{grpc_port(server)}?tenant=acme", "--ca", str(pki.ca))
        over = "shipped over gRPC with mutual TLS"
        shipped = await run("log", "--source", "api", "--instance", "i1", *grpc, *mine, input=over)
        assert shipped.returncode == 0, shipped
        refused = await run("log", "--source", "api", "--instance", "i1", *grpc, input="no")
        assert refused.returncode != 0, refused
        page = await server.node.bus.history("acme/logs/#", limit=10)
        assert [d.event.data["message"] for d in page.deliveries] == [line, over]
        # A certificate from a CA the server does not trust: refused like none.
        stranger = ("--cert", str(pki.stranger.cert), "--key", str(pki.stranger.key))
        refused = await run("publish", "mtls/1", "--data", "3", *url, *stranger)
        assert refused.returncode == 3, refused


def test_bad_client_certificate_arguments_exit_2(pki: Pki, tmp_path: Path) -> None:
    url = ("--url", "wss://127.0.0.1:9/v1/ws", "--ca", str(pki.ca))
    done = cli("publish", "x/1", *url, "--key", str(pki.client.key))
    assert done.returncode == 2 and "--key" in done.stderr and "--cert" in done.stderr, done
    missing = tmp_path / "missing.pem"
    done = cli("publish", "x/1", *url, "--cert", str(missing), "--key", str(pki.client.key))
    assert done.returncode == 2 and "--cert" in done.stderr and str(missing) in done.stderr, done
    done = cli("groups", *url, "--cert", str(pki.client.cert), "--key", str(pki.stranger.key))
    assert done.returncode == 2 and "--cert" in done.stderr, done
    done = cli("publish", "x/1", *url, env={"HYBRIDBUS_CERT": str(missing)})
    assert done.returncode == 2 and str(missing) in done.stderr, done
    grpc = ("--url", "grpcs://127.0.0.1:9?tenant=acme", "--cert", str(pki.client.cert))
    done = cli("log", "--source", "api", *grpc, "--key", str(pki.stranger.key), input="x")
    assert done.returncode == 2 and "--cert" in done.stderr, done  # not its key: refused
