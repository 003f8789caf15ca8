"""Redis and Valkey servers, and a 3-master Redis Cluster on loopback ports."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from tests.services.base import Service, ServiceError, free_port

__all__ = ["RedisCluster", "RedisServer", "ValkeyServer"]


def _resp_ping(port: int) -> bool:
    """PING over the wire: +PONG once the dataset is loaded (-LOADING before)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer(Service):
    """`redis-server` with no persistence unless asked: `RedisServer("--appendonly", "yes",
    "--appendfsync", "always")` (later arguments win over the defaults)."""

    name = "redis"
    binaries: ClassVar[tuple[str | Path, ...]] = ("redis-server",)
    server_binary = "redis-server"
    start_timeout = 15.0

    def __init__(self, *args: str, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.args = list(args)

    def argv(self) -> list[str]:
        return [
            self.server_binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *self.args,
        ]  # fmt: skip

    def ready(self) -> bool:
        return _resp_ping(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class ValkeyServer(RedisServer):
    """`valkey-server` (Valkey 8, from bookworm-backports): the same flags as Redis."""

    name = "valkey"
    binaries: ClassVar[tuple[str | Path, ...]] = ("valkey-server",)
    server_binary = "valkey-server"


class RedisCluster:
    """Three Redis masters on loopback ports, slots split by `redis-cli --cluster create`.

    Each node also gets its own free cluster-bus port (`--cluster-port`), not port + 10000.
    `nodes[i]` is a RedisServer: kill, pause or restart one; `url` names the first node.
    """

    name = "redis-cluster"
    binaries: ClassVar[tuple[str | Path, ...]] = ("redis-server", "redis-cli")
    size = 3
    start_timeout = 30.0

    def __init__(self, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hybridbus-redis-cluster-"))
        self.nodes = [
            RedisServer(
                *["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                *("--cluster-node-timeout", "5000", "--cluster-port", str(free_port())),
                *args,
                directory=self.dir / f"node{i}",
            )
            for i in range(self.size)
        ]
        self.started_in = 0.0

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        began = time.monotonic()
        for node in self.nodes:
            node.start()
        created = (self.dir / "nodes-created").exists()
        if not created:
            out = subprocess.run(
                [
                    *("redis-cli", "--cluster", "create"),
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    *("--cluster-replicas", "0", "--cluster-yes"),
                ],
                capture_output=True,
                text=True,
                timeout=self.start_timeout,
                check=False,
            )
            if out.returncode != 0:
                self.stop()
                raise ServiceError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
            (self.dir / "nodes-created").touch()
        self.wait_ok(began + self.start_timeout)
        self.started_in = time.monotonic() - began

    def wait_ok(self, deadline: float) -> None:
        """Until every node says cluster_state:ok (gossip takes a moment after create)."""
        while True:
            states = [self.info(node.port) for node in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"Redis Cluster {self.ports} not ok:\n" + "\n".join(states))
            time.sleep(0.05)

    @staticmethod
    def info(port: int) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        return ""

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<RedisCluster {self.ports}>"
