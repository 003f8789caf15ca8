"""The base of tests/services: a server process we own, started, probed and stopped by PID.

`Service` runs one server binary in a directory of its own under the system temp dir (config,
data, `server.log`) on a free loopback port, waits for a real readiness probe (bounded; the
error carries the log's tail) and stops it with the service's own signal. `require()` turns a
missing binary into a skip, or a failure under HYBRIDBUS_REQUIRE_SERVICES=1. No service
specifics here: one module per family of servers subclasses `Service`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

__all__ = [
    "INSTALL_HINT",
    "KAFKA_LIBS",
    "PG_BIN",
    "RABBITMQ_BIN",
    "REQUIRE_ENV",
    "SERVICES_DIR",
    "Service",
    "ServiceError",
    "free_port",
    "http_ok",
    "port_open",
    "require",
    "which",
]

REQUIRE_ENV = "HYBRIDBUS_REQUIRE_SERVICES"
SERVICES_DIR = Path(
    os.environ.get("HYBRIDBUS_SERVICES_DIR") or Path.home() / ".cache" / "hybridbus" / "services"
)
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
KAFKA_LIBS = SERVICES_DIR / "kafka" / "libs"
INSTALL_HINT = "scripts/install-services.sh (make services) installs it"


class ServiceError(RuntimeError):
    """A server did not start, or did not become ready in time (the message has its log)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which(name: str) -> str | None:
    # Debian puts some servers in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def require(*binaries: str | Path) -> None:
    """Skip the calling test (fail it under HYBRIDBUS_REQUIRE_SERVICES=1) unless all exist."""
    missing = [
        str(b) for b in binaries if not (Path(b).exists() if os.sep in str(b) else which(str(b)))
    ]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed: {INSTALL_HINT}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)
    return False


_live: set[Service] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Kill whatever a crashed test session left running (teardown normally stops them)."""
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.kill()
            service.close()


class Service:
    """One server process we own: its port, its directory, its PID.

    Subclasses give `name`, `binaries`, `argv()`, `ready()` and, when it differs from
    SIGTERM, `stop_signal`. `start()` may be called again after `stop()`/`kill()`: same port,
    same directory, same data.
    """

    name: ClassVar[str] = "service"
    binaries: ClassVar[tuple[str | Path, ...]] = ()
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self.port = port or free_port()
        self.dir = directory or Path(tempfile.mkdtemp(prefix=f"hybridbus-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.helpers: list[subprocess.Popen[bytes]] = []  # e.g. epmd: ended by close()
        self._log: IO[bytes] | None = None
        self.started_in = 0.0  # seconds the last start() took, until ready

    # -- what a subclass says ----------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return port_open(self.port)

    def prepare(self) -> None:
        """Before each start: write config files, initialise data (once)."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def popen_options(self) -> dict[str, Any]:
        return {}

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError(f"{self.name} is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        began = time.monotonic()
        self.prepare()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C to pytest is not a Ctrl-C to the server
            **self.popen_options(),
        )
        _live.add(self)
        self._wait_ready(began)
        self.started_in = time.monotonic() - began

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.start_timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self._failed(f"exited with status {self.proc.returncode}")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if self.ready():
                    return
            if time.monotonic() > deadline:
                self._failed(f"not ready within {self.start_timeout:.0f} s")
            time.sleep(0.02)

    def _failed(self, what: str) -> None:
        tail = self.log_tail()
        self.kill()
        raise ServiceError(f"{self.name} on port {self.port} {what}; {self.log_path}:\n{tail}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, sig)

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._after_exit()

    def _after_exit(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None

    def stop(self) -> None:
        """Stop cleanly (the service's own signal; SIGKILL after `stop_timeout`)."""
        if not self.running:
            self._reap(0)
            return
        self._signal(signal.SIGCONT)  # a paused server cannot shut down
        self._signal(self.stop_signal)
        self._reap(self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL: what a crash or `kill -9` does."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop cleanly, start again: same port, same data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, end the helper processes, remove the directory."""
        self.stop()
        for helper in self.helpers:
            if helper.poll() is None:
                helper.kill()
            helper.wait()
        self.helpers.clear()
        _live.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.proc and self.proc.pid}>"
