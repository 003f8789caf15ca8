"""The live-logs benchmark's processes: the grpcio relay (the ceiling), the tails, pinning.

Used by benchmarks/logs.py (see its docstring for what is measured). Owns the
subprocesses a run starts besides `hybridbus serve` (`net.procs.ServerProcess`):
the ceiling's server `python -m benchmarks.logs_procs relay-server PORT` (a
plain grpc.aio relay, pinned to core 0 like the servers), and the tails, pinned
with the benchmark process to the other core: `hybridbus tail`, `python -m
benchmarks.logs_procs grpc-tail PORT` (a gRPC Subscribe printing each line as
`tail --format json` does) and `relay-tail PORT` (the relay's stream, each
message printed). Every tail writes and flushes one line at a time, as
`hybridbus tail` does; `Tail` counts the lines as they come and keeps them for
the run's check. Every process here is killed by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

from benchmarks.harness import run_async
from benchmarks.net.procs import (
    PYTHON,
    ROOT,
    client_cores,
    cpu_seconds,
    free_port,
    raise_nofile,
    server_prefix,
)
from hybridbus.core.logs import record_from_data

__all__ = [
    "RELAY_INGEST",
    "RELAY_TAIL",
    "TENANT",
    "RelayServer",
    "Tail",
    "machine_busy_s",
    "off_core_0",
    "tail_argv",
    "wait_port",
]

TENANT: Final = "bench"  # net.procs' open config: anonymous clients in tenant "bench"
RELAY_INGEST: Final = "/bench.Relay/Ingest"
RELAY_TAIL: Final = "/bench.Relay/Tail"


# -- processes ------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds all cores have been busy (not idle, not iowait) since boot (/proc/stat).

    Over a run, minus the server's, the tail's and this process's CPU time: what other
    work on the machine took meanwhile (the `others_cpu_s` of each run).
    """
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port}")
        time.sleep(0.05)


class RelayServer:
    """The ceiling's server (`relay-server PORT` below), pinned to core 0."""

    def __init__(self) -> None:
        self.grpc_port = free_port()
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        argv = [PYTHON, "-m", "benchmarks.logs_procs", "relay-server", str(self.grpc_port)]
        raise_nofile()  # inherited: no preexec_fn (unsafe after fork with grpc's threads loaded)
        self.proc = subprocess.Popen(
            server_prefix() + argv, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._err,
        )
        self.pid = self.proc.pid
        try:
            wait_port(self.grpc_port, self.proc, "the grpcio relay")
        except RuntimeError:
            self.stop()
            raise

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._err.close()


class Tail:
    """A tail subprocess whose stdout lines are counted (and kept) as they arrive."""

    def __init__(self, argv: list[str]) -> None:
        cores = client_cores()
        prefix = ["taskset", "-c", cores] if cores else []
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        raise_nofile()  # inherited: no preexec_fn (unsafe after fork with grpc's threads loaded)
        self.proc = subprocess.Popen(
            prefix + argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._err, env={**os.environ, "NO_COLOR": "1"},
        )
        self.data = bytearray()
        self.lines = 0
        self.last_at = 0.0  # time.monotonic() when the last chunk came
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 20):
            now = time.monotonic()
            with self._changed:
                self.data += chunk
                self.lines += chunk.count(b"\n")
                self.last_at = now
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait(self, lines: int, deadline: float) -> bool:
        """Until `lines` lines came (True), the tail ended or `deadline` passed (False)."""
        with self._changed:
            while self.lines < lines:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def tail_argv(case: str, port: int, grpc_port: int) -> list[str]:
    if case == "logs.ceiling":
        return [PYTHON, "-m", "benchmarks.logs_procs", "relay-tail", str(grpc_port)]
    if case.startswith("logs.grpc"):
        return [PYTHON, "-m", "benchmarks.logs_procs", "grpc-tail", str(grpc_port)]
    url = f"ws://127.0.0.1:{port}/v1/ws"
    return [PYTHON, "-m", "hybridbus", "tail", "logs/bench/#", "--url", url, "--format", "json",
            "--color", "never"]


@contextlib.contextmanager
def off_core_0() -> Iterator[None]:
    """This process (the producers) beside the tail, off the server's core 0."""
    cores = client_cores()
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    first, _, last = cores.partition("-")
    os.sched_setaffinity(0, range(int(first), int(last or first) + 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- subprocesses: the grpcio relay (the ceiling), its tail, the gRPC tail ----------------------


async def _relay_server(port: int) -> None:
    import grpc

    tails: set[asyncio.Queue[bytes]] = set()

    async def ingest(requests: Any, context: Any) -> bytes:
        count = 0
        async for message in requests:
            for queue in tails:
                await queue.put(message)
            count += 1
        return str(count).encode()

    async def tail(request: bytes, context: Any) -> Any:
        queue: asyncio.Queue[bytes] = asyncio.Queue(10_000)
        tails.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            tails.discard(queue)

    handlers = {
        "Ingest": grpc.stream_unary_rpc_method_handler(ingest),
        "Tail": grpc.unary_stream_rpc_method_handler(tail),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Relay", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _relay_tail(port: int) -> None:
    import grpc

    out = sys.stdout.buffer
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        async for message in channel.unary_stream(RELAY_TAIL)(b""):
            out.write(message + b"\n")
            out.flush()


async def _grpc_tail(port: int) -> None:
    """`hybridbus tail --format json` over gRPC Subscribe: decode, format, write, flush."""
    import grpc

    from hybridbus.gateways.grpc_codec import event_of, generated
    from hybridbus.logs import formatter

    bus, bus_grpc, _ = generated()
    shown = formatter("json")
    out = sys.stdout.buffer
    since = ""  # as `hybridbus tail` does: ended as too slow, it subscribes again from its token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            request = bus.SubscribeRequest(pattern=f"{TENANT}/logs/bench/#", since=since, batch=500)
            try:
                async for answer in bus_grpc.BusStub(channel).Subscribe(request):
                    kind = answer.WhichOneof("kind")
                    if kind == "subscribed":
                        since = since or answer.subscribed.position
                        continue
                    packed = (
                        answer.deliveries.deliveries if kind == "deliveries" else [answer.delivery]
                    )
                    for delivery in packed:
                        event = event_of(delivery.event)
                        _, _, service, instance = delivery.topic.split("/", 3)
                        out.write(shown.format(record_from_data(event.data), service, instance))
                        out.flush()
                        since = delivery.token
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise


def main(argv: Sequence[str]) -> None:
    """`relay-server PORT`, `relay-tail PORT` or `grpc-tail PORT`: run until killed."""
    runs = {"relay-server": _relay_server, "relay-tail": _relay_tail, "grpc-tail": _grpc_tail}
    if len(argv) != 2 or argv[0] not in runs:
        raise SystemExit(f"usage: python -m benchmarks.logs_procs {{{','.join(runs)}}} PORT")
    with contextlib.suppress(KeyboardInterrupt):
        run_async(runs[argv[0]](int(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
