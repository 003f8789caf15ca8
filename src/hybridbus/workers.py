"""`hybridbus serve --workers N`: N server processes sharing one port, and their supervisor.

Owns: whether the settings allow workers (`refusal`), starting them — each
is `hybridbus serve` again with the same arguments, `--workers 1`, the port
(a free one is chosen first for `--port 0`), `reuse_port` on (the kernel
spreads connections over the processes listening with SO_REUSEPORT) and a
node id of its own (`<node_id or hostname-<parent pid>>-w<i>`: each worker
is a node of the registry) — and supervising them (`supervise`). Must not
serve anything itself nor know the server's insides: it is a process manager.

Supervision. SIGTERM or SIGINT to the parent fans SIGTERM out to every
worker; each shuts down gracefully (docs/configuration.md, `shutdown_timeout`)
and a worker still running `shutdown_timeout` + 10 s later is killed. A
worker that exits on its own is reported (an error log naming it, its pid
and its exit status or signal); the others keep serving, and the parent
exits once every worker has. The parent's exit status: 0 when every worker
exited 0 after a stop, else 1 (2: the settings refuse workers).

Workers need a shared engine: each has its own bus. With sqlite they would
fight over one data directory (its lock lets one process in), so it is
refused; `memory://` is allowed for trying the supervisor out, with a
warning: every worker then has a bus of its own and clients on different
workers do not see each other's events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Final

from hybridbus.server.config import ENV_PREFIX, ServerConfig
from hybridbus.server.logs import configure_logging

__all__ = ["refusal", "supervise"]

log = logging.getLogger("hybridbus.workers")

_POLL: Final = 0.1  # seconds between two looks at the workers
_KILL_AFTER: Final = 10.0  # seconds past shutdown_timeout before a worker is killed


def refusal(config: ServerConfig) -> str | None:
    """Why these settings cannot run `config.workers` workers (None: they can)."""
    if config.workers <= 1:
        return None
    scheme = config.engine.partition("://")[0]
    if scheme == "sqlite":
        return (
            f"--workers {config.workers} needs a shared engine (redis://...): a sqlite data "
            "directory belongs to one process, so every worker but one would fail to open it"
        )
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Windows
        return "--workers needs SO_REUSEPORT, which this system does not have"
    return None


def _reserve(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port of `host` with SO_REUSEPORT.

    It holds the port for the workers, which bind it too; it takes no
    connections (only listening sockets do).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _status(code: int) -> dict[str, object]:
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"signal": signal.Signals(-code).name}
        return {"signal": -code}
    return {"status": code}


def supervise(
    config: ServerConfig, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> int:
    """Run `config.workers` workers of `hybridbus serve <argv>` until they end; the exit status.

    `argv` are the command's arguments as given (`serve --engine ... --workers 4`).
    """
    problem = refusal(config)
    if problem is not None:
        print(f"hybridbus serve: {problem}", file=sys.stderr)
        return 2
    try:
        configure_logging(config.log_level, config.log_format)
    except ValueError as exc:
        print(f"hybridbus serve: {exc}", file=sys.stderr)
        return 2
    if config.engine.startswith("memory:"):
        log.warning(
            "each worker has its own memory bus: clients on different workers do not see "
            "each other's events (use a shared engine: redis://...)"
        )
    reserved = _reserve(config.host) if config.port == 0 else None
    port = reserved.getsockname()[1] if reserved is not None else config.port
    base = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
    stopping = False

    def stop(number: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    workers: dict[int, subprocess.Popen[bytes]] = {}
    try:
        environment = dict(os.environ if env is None else env)
        for index in range(1, config.workers + 1):
            child_env = {
                **environment,
                f"{ENV_PREFIX}REUSE_PORT": "true",
                f"{ENV_PREFIX}NODE_ID": f"{base}-w{index}",
            }
            # The last of a repeated flag wins: these override the user's.
            command = [*argv, "--workers", "1", "--port", str(port)]
            workers[index] = subprocess.Popen(
                [sys.executable, "-m", "hybridbus", *command],
                stdin=subprocess.DEVNULL,
                env=child_env,
            )
        log.info(
            "workers started",
            extra={
                "workers": config.workers,
                "port": port,
                "pids": [worker.pid for worker in workers.values()],
                "pid": os.getpid(),
            },
        )
        return _watch(config, workers, lambda: stopping)
    finally:
        for worker in workers.values():  # the parent failed: no orphans
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if reserved is not None:
            reserved.close()


def _watch(
    config: ServerConfig,
    workers: dict[int, subprocess.Popen[bytes]],
    stopping: Callable[[], bool],
) -> int:
    """Wait for every worker to exit, fanning a stop out; the exit status."""
    ended: dict[int, int] = {}
    failed = False
    deadline: float | None = None
    while len(ended) < len(workers):
        if stopping() and deadline is None:
            log.info("stopping the workers")
            deadline = time.monotonic() + config.shutdown_timeout + _KILL_AFTER
            for index, worker in workers.items():
                if index not in ended:
                    with contextlib.suppress(ProcessLookupError):
                        worker.send_signal(signal.SIGTERM)
        for index, worker in workers.items():
            code = worker.poll()
            if code is None or index in ended:
                continue
            ended[index] = code
            extra = {"worker": index, "worker_pid": worker.pid, **_status(code)}
            if deadline is None or code != 0:
                failed = True
                log.error("worker exited", extra=extra)
            else:
                log.info("worker stopped", extra=extra)
        if deadline is not None and time.monotonic() > deadline:
            for index, worker in workers.items():
                if index not in ended and worker.poll() is None:
                    log.error("worker killed: not stopped in time", extra={"worker": index})
                    worker.kill()
            deadline = float("inf")
        time.sleep(_POLL)
    return 1 if failed or not stopping() else 0
