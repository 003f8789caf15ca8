"""`hybridbus schemas` as a user runs it, against a real server.

Every test runs the installed entry point (`.venv/bin/hybridbus`) in a
subprocess against a server in this process (anonymous callers in tenant
acme may do everything there).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from tests.servers import running_server

pytestmark = pytest.mark.timeout(90)

HYBRIDBUS = Path(sys.executable).with_name("hybridbus")  # the console script of this venv
ORDER = "com.acme.order"
SCHEMA = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `hybridbus *args`; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        HYBRIDBUS,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_register_list_show_test_and_mode(tmp_path: Path) -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        schema_file = tmp_path / "order.json"
        schema_file.write_text(json.dumps(SCHEMA))
        status, out, err = await cli("schemas", "register", ORDER, f"@{schema_file}", *url)
        assert status == 0, err
        registered = json.loads(out)
        assert (registered["version"], registered["schema"]) == (1, SCHEMA)

        status, out, _ = await cli("schemas", "list", *url)
        assert status == 0
        header, row = (line.split() for line in out.splitlines())
        assert header == ["TYPE", "MODE", "LATEST", "URI"]
        assert row == [ORDER, "backward", "1", registered["uri"]]
        status, out, _ = await cli("schemas", "list", "--json", *url)
        assert json.loads(out)["uri"] == registered["uri"]

        status, out, _ = await cli("schemas", "show", ORDER, *url)
        assert [v["version"] for v in json.loads(out)["versions"]] == [1]
        status, out, _ = await cli("schemas", "show", ORDER, "latest", *url)
        assert json.loads(out) == registered

        status, out, _ = await cli("schemas", "test", ORDER, '{"qty": 2}', *url)
        assert (status, json.loads(out)["valid"]) == (0, True)
        status, out, _ = await cli("schemas", "test", ORDER, "-", *url, stdin=b'{"qty": 0}')
        assert status == 1
        assert json.loads(out)["path"] == "data.qty"

        closed = json.dumps({**SCHEMA, "additionalProperties": False})
        status, _, err = await cli("schemas", "register", ORDER, closed, *url)
        assert status == 1
        assert err.startswith("hybridbus schemas register: 1502 SCHEMA_INCOMPATIBLE: ")
        assert "#/additionalProperties" in err
        status, out, _ = await cli("schemas", "mode", ORDER, "forward", *url)
        assert (status, json.loads(out)["mode"]) == (0, "forward")
        status, out, err = await cli("schemas", "register", ORDER, closed, *url)
        assert (status, json.loads(out)["version"]) == (0, 2), err


async def test_bad_arguments_and_refusals() -> None:
    async with running_server() as server:
        url = ("--url", server.url)
        status, _, err = await cli("schemas", "register", ORDER, "{not json", *url)
        assert status == 2 and "not JSON" in err
        status, _, err = await cli("schemas", "show", ORDER, *url)
        assert status == 1 and "1501 UNKNOWN_SCHEMA" in err
        status, _, err = await cli("schemas", "mode", ORDER, "sideways", *url)
        assert status == 2
    status, _, err = await cli("schemas", "list", "--url", "http://127.0.0.1:9")
    assert status == 3 and "cannot connect" in err
