"""Server and client subprocesses: started here, pinned to cores, measured, killed by PID.

Every server runs in a subprocess of its own pinned with `taskset -c 0`; every load
client runs in other subprocesses pinned to the remaining cores (`taskset -c 1` on a
2-core machine), so a server never shares its core with the load. Each server gets a
fresh temporary directory (its config file, its data) removed when it stops. Server
CPU time (utime + stime) and RSS are read from /proc/<pid>/stat and /proc/<pid>/status.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Final, Self

__all__ = [
    "API_KEY",
    "BENCH_SECRET",
    "ROOT",
    "ClientProcess",
    "ServerProcess",
    "available",
    "centrifugo_binary",
    "client_cores",
    "core_busy_seconds",
    "cpu_seconds",
    "rss_kib",
]

ROOT: Final = Path(__file__).resolve().parent.parent.parent
PYTHON: Final = sys.executable
API_KEY: Final = "bench-api-key"
BENCH_SECRET: Final = "bench-secret-bench-secret-bench-secret!"
CLIENT_TIMEOUT: Final = 600.0

SERVER_KINDS: Final = (
    "hybridbus",  # memory://
    "hybridbus-sqlite",  # sqlite:// in the run's temp dir, synchronous=full
    "hybridbus-auth",  # memory://, every client with a JWT and rules
    "hybridbus-traced",  # memory://, [tracing] on: every event sampled (docs/tracing.md)
    "hybridbus-sampled",  # memory://, [tracing] on: 1% of the events sampled
    "bare",
    "socketio",
    "nats",
    "nats-js",  # nats-server -js, file storage in the temp dir
    "centrifugo",
    "redis-aof",  # appendonly yes, appendfsync always
)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has used so far, to the nanosecond.

    The sum of its live threads' run time (/proc/<pid>/task/*/schedstat): utime + stime of
    /proc/<pid>/stat count in clock ticks (10 ms), too coarse for a 20 ms catch-up. A thread
    that ended during a phase drops out of the sum, so a phase's delta is a floor then;
    the servers measured here keep their threads.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        total = 0
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(core: int = 0) -> float | None:
    """Seconds core `core` has been busy (not idle, not iowait) since boot (/proc/stat).

    Minus the server's own CPU time over a run, this is what *other* processes took
    from the server's core meanwhile: the noise figure of that run.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                ticks = [int(x) for x in line.split()[1:]]
                busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # minus idle and iowait
                return busy / os.sysconf("SC_CLK_TCK")
    return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def centrifugo_binary() -> str | None:
    built = ROOT / ".bench" / "bin" / "centrifugo"
    if built.exists():
        return str(built)
    return shutil.which("centrifugo")


def available(kind: str) -> bool:
    """Whether the server of `kind` can run on this machine."""
    if kind == "centrifugo":
        return centrifugo_binary() is not None
    if kind in ("nats", "nats-js"):
        return shutil.which("nats-server") is not None
    if kind == "redis-aof":
        return shutil.which("redis-server") is not None
    return True


def _pinning() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def server_prefix() -> list[str]:
    return ["taskset", "-c", "0"] if _pinning() else []


def client_cores() -> str | None:
    """The cores load clients are pinned to (all but core 0), or None when not pinning."""
    n = os.cpu_count() or 1
    if not _pinning():
        return None
    return "1" if n == 2 else f"1-{n - 1}"


# -- configurations ----------------------------------------------------------------

# "hybridbus": anonymous clients allowed everything (no rules to speak of).
# "hybridbus-auth": every client has a JWT (HS256) and the role "editor", whose
# rules have placeholders, a time window and a deny: the permission check's cost.
_OPEN_CONFIG: Final = """
anonymous_tenant = "bench"
max_connections_per_user = 0
[[roles.anonymous]]
allow = "*"
topics = "#"
"""
# "hybridbus-traced" / "-sampled": the open configuration with OpenTelemetry tracing on
# (the `tracing` extra), every event or 1% of them sampled; `protocol = "none"`: the spans
# are made, stamped and ended but not exported (an exporter's batch thread is not counted).
_TRACING_CONFIG: Final = """
[tracing]
enabled = true
protocol = "none"
sample_ratio = {ratio}
"""
_SAMPLE_RATIO: Final = {"hybridbus-traced": 1.0, "hybridbus-sampled": 0.01}
_AUTH_CONFIG: Final = f"""
jwt_secret = "{BENCH_SECRET}"
max_connections_per_user = 0
[[roles.editor]]
allow = ["subscribe", "history", "presence"]
topics = ["t", "users/{{sub}}/#", "docs/#"]
[[roles.editor]]
allow = ["publish"]
topics = "t"
days = ["mon-sun"]
hours = "00:00-24:00"
zone = "Europe/Berlin"
[[roles.editor]]
deny = "*"
topics = "docs/secret/#"
"""


def _centrifugo_config(port: int) -> dict[str, Any]:
    """Centrifugo v6: anonymous insecure clients (as hybridbus' anonymous role), the HTTP
    API with a key, and the namespace `hist` with history and forced recovery."""
    return {
        "log": {"level": "error"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "client": {
            "insecure": True,
            "allowed_origins": ["*"],
            # Recovery of 10,000 events sends them in one reply: let it through.
            "queue_max_size": 64 << 20,
            "recovery_max_publication_limit": 100_000,
            "history_max_publication_limit": 100_000,
        },
        "http_api": {"key": API_KEY},
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": True},
            "namespaces": [
                {
                    "name": "hist",
                    "history_size": 100_000,
                    "history_ttl": "600s",
                    "force_recovery": True,
                    "allow_subscribe_for_client": True,
                }
            ],
        },
    }


# -- servers -------------------------------------------------------------------------


class Launched:
    """A server process we own: started (pinned by `server_prefix`, unless told not) and
    waited for on `port` (`_launch`), its output in `<dir>/server.log`, killed by PID
    (`stop`), `dir` removed."""

    port: int
    dir: Path

    def _launch(
        self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], pinned: bool = True
    ) -> None:
        self._log: IO[bytes] = (self.dir / "server.log").open("wb")
        raise_nofile()  # inherited: no preexec_fn (unsafe after fork with grpc's threads loaded)
        self.proc = subprocess.Popen(
            (server_prefix() if pinned else []) + argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid  # taskset execs the server: the same PID
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{name} did not start on port {self.port}:\n{tail}")
            time.sleep(0.05)
        time.sleep(0.1)

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "server.log").read_text(errors="replace")[-size:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(Launched):
    """A server subprocess of one of `SERVER_KINDS`."""

    def __init__(self, kind: str, **options: Any) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        argv = self._argv(kind, options)
        env = {**os.environ, "HYBRIDBUS_LOG_LEVEL": "warning"}
        self._launch(f"{kind} server", argv, cwd=ROOT, env=env)

    def _argv(self, kind: str, options: dict[str, Any]) -> list[str]:
        port = str(self.port)
        if kind.startswith("hybridbus"):
            config = self.dir / "hybridbus.toml"
            text = _AUTH_CONFIG if kind == "hybridbus-auth" else _OPEN_CONFIG
            if kind in _SAMPLE_RATIO:  # spans made and ended, exported nowhere
                text += _TRACING_CONFIG.format(ratio=_SAMPLE_RATIO[kind])
            for key, value in options.items():  # e.g. ping_interval
                text = f"{key} = {json.dumps(value)}\n" + text
            config.write_text(text)
            engine = f"sqlite://{self.dir}/data" if kind == "hybridbus-sqlite" else "memory://"
            return [
                PYTHON,
                "-m",
                "hybridbus",
                "serve",
                "--config",
                str(config),
                "--engine",
                engine,
                "--host",
                "127.0.0.1",
                "--port",
                port,
            ]
        if kind in ("bare", "socketio"):
            return [PYTHON, "-m", "benchmarks.net.peers", kind, port]
        if kind in ("nats", "nats-js"):
            lines = [f"listen: 127.0.0.1:{port}"]
            if kind == "nats-js":
                lines.append(f'jetstream {{ store_dir: "{self.dir}/js" }}')
            config = self.dir / "nats.conf"
            config.write_text("\n".join(lines) + "\n")
            return ["nats-server", "-c", str(config)]
        if kind == "centrifugo":
            config = self.dir / "config.json"
            config.write_text(json.dumps(_centrifugo_config(self.port), indent=2))
            binary = centrifugo_binary()
            if binary is None:
                raise RuntimeError("centrifugo is not installed (benchmarks/peers/install.sh)")
            return [binary, "--config", str(config)]
        # redis-aof
        return [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            port,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)



# -- clients -------------------------------------------------------------------------


class ClientProcess:
    """A load client (`python -m benchmarks.net.load ROLE KIND PORT OPTIONS`), pinned.

    It prints JSON lines: optionally `{"ready": ...}` when set up (then waits for a line
    on stdin, see `go()`), and its result as the last line.
    """

    def __init__(self, role: str, kind: str, port: int, **options: Any) -> None:
        self.role = role
        self.kind = kind
        cores = client_cores()
        prefix = ["taskset", "-c", cores] if cores else []
        argv = [
            *prefix,
            PYTHON,
            "-m",
            "benchmarks.net.load",
            role,
            kind,
            str(port),
            json.dumps(options),
        ]
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        raise_nofile()  # inherited: no preexec_fn (unsafe after fork with grpc's threads loaded)
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self._out = bytearray()

    def _line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line of the client's stdout (raw reads: no buffering surprises)."""
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while (end := self._out.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise RuntimeError(f"{self.kind} {self.role} client timed out")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"{self.kind} {self.role} client failed:\n{self.stderr()}")
            self._out += chunk
        line = bytes(self._out[:end])
        del self._out[: end + 1]
        return dict(json.loads(line))

    def ready(self, timeout: float = 180.0) -> dict[str, Any]:
        return self._line(timeout)

    def go(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
        out = self._line(timeout)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        return out

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._err.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_client(role: str, kind: str, port: int, **options: Any) -> dict[str, Any]:
    """Run one client to the end; its result."""
    with ClientProcess(role, kind, port, **options) as client:
        return client.result()
