"""End to end with real processes: a service logging through `hybridbus.logs.Handler`, a
`hybridbus tail`, and the server restarted while the service is logging.

The service is a Python process that knows nothing of the bus but the
standard `logging` module with our Handler attached (shipping over
WebSocket); `hybridbus serve` runs on sqlite in a temporary directory and is
stopped and started again on the same port while lines are being logged;
`hybridbus tail` (a subprocess) must print every line once, in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from tests.logs.support import free_port
from tests.servers import ServerProcess

import hybridbus.client

HYBRIDBUS = str(Path(sys.executable).parent / "hybridbus")
LINES = 120

SERVICE = textwrap.dedent(
    """
    import logging, sys, time
    from hybridbus.logs import Handler

    handler = Handler(sys.argv[1], service="billing", instance="b1")
    log = logging.getLogger("billing.invoices")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for n in range(int(sys.argv[2])):
        log.warning("invoice %d timeout", n, extra={"n": n})
        time.sleep(0.02)
    handler.close()  # flushes: returns once every line was acknowledged (or the timeout)
    """
)


async def head(url: str) -> str:
    async with hybridbus.client.connect(url) as c:
        return str((await c.history("logs/#", limit=0)).position)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_service_logging_through_the_handler_is_tailed_whole_across_a_server_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ("--engine", f"sqlite://{tmp_path / 'data'}", "--anonymous-tenant", "acme")
    server = ServerProcess(*args, logs=tmp_path / "first.log", port=port)
    tail = service = None
    try:
        await server.wait_listening()
        tail = await asyncio.create_subprocess_exec(
            HYBRIDBUS, "tail", "logs/billing/#", "--url", server.url,
            "--since", await head(server.url), "--format", "json", "--count", str(LINES),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        script = tmp_path / "service.py"
        script.write_text(SERVICE)
        service = await asyncio.create_subprocess_exec(
            sys.executable, str(script), server.url, str(LINES),
            stderr=asyncio.subprocess.PIPE,
        )
        assert tail.stdout is not None and tail.stderr is not None
        seen: list[dict[str, object]] = []
        async with asyncio.timeout(60):
            while len(seen) < 20:
                seen.append(json.loads(await tail.stdout.readline()))
        # The server goes down while the service logs, and comes back on the same port.
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        server = ServerProcess(*args, logs=tmp_path / "second.log", port=port)
        await server.wait_listening()
        async with asyncio.timeout(90):
            while len(seen) < LINES:
                raw = await tail.stdout.readline()
                assert raw, (await tail.stderr.read()).decode()
                seen.append(json.loads(raw))
        assert await asyncio.wait_for(service.wait(), 30) == 0
        assert await asyncio.wait_for(tail.wait(), 10) == 0  # --count reached
        assert [r["message"] for r in seen] == [f"invoice {n} timeout" for n in range(LINES)]
        assert {(r["level"], r["logger"]) for r in seen} == {("warn", "billing.invoices")}
        assert [r["fields"]["n"] for r in seen] == list(range(LINES))  # type: ignore[index]
        async with hybridbus.client.connect(server.url) as c:  # nothing stored twice either
            page = await c.history("logs/billing/b1", limit=1000)
        assert len(page.events) == LINES
    finally:
        for process in (tail, service):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        await server.kill()
