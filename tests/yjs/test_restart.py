"""A server restart loses nothing acknowledged: `hybridbus serve` on sqlite, killed with SIGKILL.

A writer appends "0 1 2 …" to a `Y.Text` while an observer (a second stock provider)
watches: what the observer saw had been broadcast, so it was in the log first. The server
is killed mid-session (kill -9), both providers are killed before it comes back (so
neither can send its copy again), the server restarts on the same data, and a fresh
provider finds every character the observer saw — loaded from a snapshot plus the
updates after it, since compaction runs every 20 updates here.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest
from tests.servers import ServerProcess
from tests.yjs.node import node_client, require_node

pytestmark = pytest.mark.timeout(120)


async def test_a_restart_mid_session_keeps_every_update_a_provider_saw(tmp_path: Path) -> None:
    require_node()
    config = tmp_path / "yjs.toml"
    config.write_text('yjs_compact_every = 20\n[[roles.anonymous]]\nallow = "*"\ntopics = "#"\n')
    args = ("--config", str(config), "--engine", f"sqlite://{tmp_path / 'data'}")
    args += ("--anonymous-tenant", "acme")
    server = ServerProcess(*args, logs=tmp_path / "first.log")
    await server.wait_listening()
    url = f"ws://127.0.0.1:{server.port}/v1/yjs"
    try:
        async with node_client(url, "doc") as writer, node_client(url, "doc") as observer:
            await asyncio.gather(writer.synced(), observer.synced())
            typing = asyncio.create_task(writer.call("type", count=5000, pause=2))
            async with asyncio.timeout(30):
                while len(await observer.text()) < 300:
                    await asyncio.sleep(0.02)
            await server.kill()  # mid-session: the writer is still typing
            seen = await observer.text()
            await observer.kill()
            await writer.kill()
            with contextlib.suppress(EOFError):
                await typing
    finally:
        await server.kill()
    snapshots = [r for r in server.logs() if "snapshot" in str(r.get("message", ""))]
    assert not snapshots, snapshots  # no snapshot failed to be written
    again = ServerProcess(*args, port=server.port, logs=tmp_path / "again.log")
    await again.wait_listening()
    try:
        async with node_client(url, "doc") as fresh:
            await fresh.synced()
            restored = await fresh.text()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{again.port}") as http:
            reply = await http.get("/v1/events", params={"pattern": "acme/docs/doc/snapshots"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["events"], "compaction wrote no snapshot"
    finally:
        await again.kill()
    assert len(seen) >= 300
    # Every update the observer saw is there (and maybe a few the server stored and had
    # not broadcast yet when it died): appends only, so what it saw is a prefix.
    assert restored.startswith(seen), (seen, restored)
    assert len(restored) - len(seen) < 200
