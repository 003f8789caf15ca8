"""Instructions per acked event of the server over WebSocket (`groups.ws.*`), under callgrind.

    python -m benchmarks.group_instructions                 # sqlite, MessagePack, 20,000 events
    python -m benchmarks.group_instructions --json          # the members speak JSON
    python -m benchmarks.group_instructions --engine memory --events 10000

The drain of `benchmarks.groups.ws_consume` (4 members, fetch 256 + ack, `TUNED`)
against `hybridbus serve` run under `valgrind --tool=callgrind` (pinned to core 0,
this process kept off it): the events are published first, then the counters are
zeroed (`callgrind_control -z`), the members join and drain, and the counters are
dumped (`callgrind_control -d`). Printed: the dump's instructions (every thread of the
server) per acked event. Unlike CPU time on a shared machine, the figure moves by
about 0.1% between runs; the server runs ~50x slower, so it is CPU-bound here and the
figure says nothing about the drain's pipeline (for that, the wall-clock case).
`--src DIR` runs the server from another source tree (`PYTHONPATH`), to compare
revisions with the same clients. Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import groups
from benchmarks.net import procs
from hybridbus import Event

__all__ = ["instructions", "main"]


def _serve(engine: str, directory: Path, src: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port = procs.free_port()
    config = directory / "hybridbus.toml"
    config.write_text(procs._OPEN_CONFIG)
    url = f"sqlite://{directory}/data" if engine == "sqlite" else "memory://"
    argv = [
        *procs.server_prefix(),
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={directory}/callgrind.out.%p",
        procs.PYTHON,
        "-m",
        "hybridbus",
        "serve",
        "--config",
        str(config),
        "--engine",
        url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "HYBRIDBUS_LOG_LEVEL": "warning"}
    if src:
        env["PYTHONPATH"] = src
    log = (directory / "server.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=procs.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 600  # python under valgrind starts slowly
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((directory / "server.log").read_text()[-3000:])
        time.sleep(0.2)


async def _drain(pid: int, port: int, events: int, subprotocol: str) -> None:
    from hybridbus.client import ClientConfig, connect

    url = f"ws://127.0.0.1:{port}/v1/ws"
    config = ClientConfig(subprotocol=subprotocol)
    by_topic: dict[str, list[Event]] = {}
    for topic, event in groups._payloads(events):
        by_topic.setdefault(topic.partition("/")[2], []).append(event)
    async with connect(url, config=config) as client:
        for topic, items in by_topic.items():
            for first in range(0, len(items), groups.WS_PUBLISH_BATCH):
                await client.publish_many(topic, items[first : first + groups.WS_PUBLISH_BATCH])
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    async with contextlib.AsyncExitStack() as stack:
        joined = []
        for n in range(groups.MEMBERS):
            client = await stack.enter_async_context(connect(url, config=config))
            group = client.group(
                groups.GROUP, "jobs/+", member=f"m{n}", start="earliest", **groups.TUNED
            )
            joined.append(await stack.enter_async_context(group))
        drained = await groups._drain(joined, events)
    drained.check(events)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)


def instructions(
    events: int = 20_000,
    engine: str = "sqlite",
    subprotocol: str = groups.WS_SUBPROTOCOL,
    src: str | None = None,
) -> float:
    """The server's instructions per acked event over one drain (see the module docstring)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-group-instructions-"))
    proc, port = _serve(engine, directory, src)
    try:
        with groups._off_core_0():
            asyncio.run(_drain(proc.pid, port, events, subprotocol))
        dumps: list[Path] = []
        deadline = time.monotonic() + 60
        while not dumps and time.monotonic() < deadline:
            time.sleep(0.5)
            dumps = [p for p in directory.glob("callgrind.out.*") if p.name.endswith(".1")]
        total = None
        for line in dumps[0].read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        if total is None:
            raise RuntimeError("callgrind wrote no totals")
        return total / events
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--engine", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="the members speak JSON")
    parser.add_argument("--src", help="run the server from this source tree (PYTHONPATH)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    subprotocol = "hybridbus.v1.json" if args.json else groups.WS_SUBPROTOCOL
    for _ in range(args.runs):
        per_event = instructions(args.events, args.engine, subprotocol, args.src)
        print(
            f"{args.engine}, {subprotocol}, {args.events:,} events: "
            f"{per_event:,.0f} instructions per acked event (the server, every thread)"
        )


if __name__ == "__main__":
    main()
