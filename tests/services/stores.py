"""Stores: PostgreSQL 15 (as user postgres when root) and a one-member etcd."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from tests.services.base import PG_BIN, Service, ServiceError, free_port, http_ok, which

__all__ = ["EtcdServer", "PostgresServer"]


# -- PostgreSQL -------------------------------------------------------------------------------


class PostgresServer(Service):
    """PostgreSQL 15: `initdb` once (trust auth, superuser `postgres`), fsync off.

    As root it runs as user `postgres` (it refuses root). SIGINT is its fast shutdown
    (SIGTERM waits for every client to leave).
    """

    name = "postgres"
    binaries: ClassVar[tuple[str | Path, ...]] = (PG_BIN / "postgres", PG_BIN / "initdb")
    stop_signal = signal.SIGINT

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam("postgres")
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def popen_options(self) -> dict[str, Any]:
        return self._as_postgres()

    def prepare(self) -> None:
        owner = self._as_postgres()
        if owner:
            os.chown(self.dir, owner["user"], owner["group"])
        if (self.dir / "data" / "PG_VERSION").exists():
            return
        out = subprocess.run(
            [
                *(str(PG_BIN / "initdb"), "-D", str(self.dir / "data")),
                *["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
            ],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **owner,
        )
        if out.returncode != 0:
            raise ServiceError(f"initdb failed:\n{out.stdout}{out.stderr}")

    def argv(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"),
            "-D", str(self.dir / "data"),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off",
        ]  # fmt: skip

    def ready(self) -> bool:
        probe = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, timeout=5, check=False).returncode == 0


# -- etcd -------------------------------------------------------------------------------------


class EtcdServer(Service):
    """A one-member etcd (v3 API; its JSON gateway at `url` + `/v3/kv/put` etc.)."""

    name = "etcd"
    binaries: ClassVar[tuple[str | Path, ...]] = ("etcd",)

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        super().__init__(port, directory)
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            which("etcd") or "etcd",
            "--name", "n1",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"n1={peer}",
        ]  # fmt: skip

    def ready(self) -> bool:
        return http_ok(f"{self.url}/health")
