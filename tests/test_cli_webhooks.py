"""`hybridbus webhooks` as a user runs it, against a real server and a real receiver.

Every test runs the installed entry point (`.venv/bin/hybridbus`) in a
subprocess against a server in this process, which may POST to 127.0.0.1
(`webhook_allow_private`); the receiver verifies with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook
from tests.server.test_webhooks_out import Receiver, status
from tests.servers import running_server

pytestmark = pytest.mark.timeout(90)

HYBRIDBUS = Path(sys.executable).with_name("hybridbus")


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `hybridbus *args`; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_create_list_attempts_disable_enable_replay_delete() -> None:
    async with running_server(webhook_allow_private=True) as server:
        url = ("--url", server.url)
        peer = Receiver([])
        await peer.start()
        try:
            code, out, err = await cli(
                "webhooks", "create", "billing", "orders/#", peer.url, "--timeout", "2", *url
            )
            assert code == 0, err
            made = json.loads(out)
            (secret,) = made["secrets"]  # printed once, at creation
            peer.verifiers = [Webhook(secret)]
            code, out, _ = await cli("webhooks", "list", *url)
            header, row = (line.split() for line in out.splitlines())
            assert header == ["NAME", "PATTERN", "URL", "MODE", "ENABLED", "ATTEMPTS", "ORIGIN"]
            assert row == ["billing", "orders/#", peer.url, "binary", "yes", "0", "api"]
            code, out, _ = await cli("webhooks", "show", "billing", *url)
            assert json.loads(out)["timeout"] == 2.0 and secret not in out

            peer.behaviour = status(503)
            async with httpx.AsyncClient(base_url=server.http) as c:
                response = await c.post(
                    "/v1/topics/acme/orders/1/events",
                    json={"specversion": "1.0", "id": "o1", "source": "/s", "type": "t"},
                    headers={"content-type": "application/cloudevents+json"},
                )
                assert response.status_code in (200, 201)
            async with asyncio.timeout(10):
                while not peer.requests:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            code, out, _ = await cli("webhooks", "attempts", "billing", *url)
            header, row = (line.split() for line in out.splitlines())
            assert header[:6] == ["TIME", "EVENT", "TOPIC", "ATTEMPT", "OUTCOME", "STATUS"]
            assert row[1:6] == ["o1", "orders/1", "1", "failed", "503"]
            assert row[-2:] == ["HTTP", "503"]
            code, out, _ = await cli("webhooks", "attempts", "billing", "--json", *url)
            assert json.loads(out)["status"] == 503

            code, out, _ = await cli("webhooks", "disable", "billing", *url)
            assert json.loads(out) == {"name": "billing", "enabled": False}
            code, out, _ = await cli("webhooks", "enable", "billing", *url)
            assert json.loads(out) == {"name": "billing", "enabled": True}
            code, out, err = await cli("webhooks", "replay", "billing", "--time", "0", *url)
            assert code == 0, err and json.loads(out)["position"]
            code, out, err = await cli("webhooks", "delete", "billing", *url)
            assert code == 0, err
            code, out, err = await cli("webhooks", "show", "billing", *url)
            assert code == 1 and err.startswith("hybridbus webhooks show: 1401 UNKNOWN_GROUP:")
        finally:
            await peer.stop()


async def test_refusals_name_the_field() -> None:
    async with running_server() as server:  # private targets refused
        code, _, err = await cli(
            "webhooks", "create", "x", "#", "http://127.0.0.1:9/", "--url", server.url
        )
        assert code == 1
        assert "1006 INVALID_SETTINGS: url: 127.0.0.1 is a loopback address, refused" in err
        code, _, err = await cli("webhooks", "list", "--url", "ws://127.0.0.1:1/v1/ws")
        assert code == 3 and "cannot connect" in err
