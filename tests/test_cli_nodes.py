"""`hybridbus nodes` as a user runs it, against real servers.

Every test runs the installed entry point (`.venv/bin/hybridbus`) in a
subprocess; the servers run in this process on loopback ports, the shared
registry is a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.servers import running_server
from tests.services import RedisServer, free_port

from hybridbus.serve import REGISTRY_KEY
from hybridbus.server.access import new_api_key

pytestmark = pytest.mark.timeout(60)

HYBRIDBUS = Path(sys.executable).with_name("hybridbus")  # the console script of this venv
ADMIN_KEY, ADMIN_HASH = new_api_key()
KEYS = [{"name": "ops", "hash": ADMIN_HASH, "admin": True}]


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `hybridbus *args`; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_table_and_json_lines_of_the_nodes() -> None:
    async with running_server(api_keys=KEYS, node_id="here") as server:
        server.app[REGISTRY_KEY].listening([("127.0.0.1", server.port)])
        status, out, err = await cli("nodes", "--url", server.url, "--token", ADMIN_KEY)
        assert (status, err) == (0, "")
        header, row = out.splitlines()
        assert header.split() == [
            "ID", "ADDRESSES", "VERSION", "CONFIG", "CONNECTIONS", "UPTIME", "AGE",
        ]  # fmt: skip
        cells = row.split()
        assert cells[:3] == ["*", "here", f"127.0.0.1:{server.port}"]  # * : the one answering
        assert cells[5] == "0"  # connections

        status, out, err = await cli("nodes", "--json", "--url", server.http, "--token", ADMIN_KEY)
        assert (status, err) == (0, "")
        (line,) = out.splitlines()
        node = json.loads(line)
        assert node["id"] == "here"
        assert node["addresses"] == [f"127.0.0.1:{server.port}"]


async def test_refusals_and_no_server_give_the_exit_statuses() -> None:
    async with running_server(api_keys=KEYS) as server:
        status, out, err = await cli("nodes", "--url", server.url)  # anonymous: in acme
        assert status == 1 and out == ""
        assert err.startswith("hybridbus nodes: 1110 FORBIDDEN: only admins")
    status, _, err = await cli("nodes", "--url", f"ws://127.0.0.1:{free_port()}/v1/ws")
    assert status == 3
    assert "cannot connect" in err


async def test_nodes_with_other_settings_and_a_lost_registry_are_pointed_out(
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    shared = {"api_keys": KEYS, "registry": redis.url, "registry_ttl": 1.0}
    async with (
        running_server(node_id="a", **shared) as a,
        running_server(node_id="b", max_subscriptions=5, **shared),
    ):
        async with asyncio.timeout(10):
            while True:
                status, out, err = await cli("nodes", "--url", a.url, "--token", ADMIN_KEY)
                if len(out.splitlines()) == 3:
                    break
        assert status == 0
        rows = [line.split() for line in out.splitlines()[1:]]
        assert [rows[0][:2], rows[1][:1]] == [["*", "a"], ["b"]]
        assert rows[0][4] != rows[1][3]  # CONFIG differs
        assert "2 different CONFIG fingerprints" in err

        await asyncio.to_thread(redis.kill)
        status, out, err = await cli("nodes", "--url", a.url, "--token", ADMIN_KEY)
        assert (status, out) == (1, "")
        assert err.startswith("hybridbus nodes: 1310 REGISTRY_UNAVAILABLE: the node registry")
