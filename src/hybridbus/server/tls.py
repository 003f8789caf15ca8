"""TLS for the server's listeners: the certificate served, and replacing it without a restart.

Owns: `ServerTls`, made at start from the settings `tls_cert`, `tls_key` and
`tls_client_ca` (a missing, unreadable or broken file, or a key that does not
match its certificate, is refused with `InvalidInput` naming the setting); the
`ssl.SSLContext` the HTTP listener serves with (`context`, read by the listener
for each connection it accepts: TLS 1.2 or newer, ALPN http/1.1, with a client
CA every client must present a certificate signed by it); the PEM bytes the
gRPC listener hands to grpc (`material`, read by its certificate fetcher on
grpc's own threads: `gateways/grpc_tls.py`); and watching the files. Must not
accept connections (`gateways/listener.py` does) nor import grpc.

Reloading. Every `interval` seconds (`tls_reload_interval`, 0: never) the
files' (inode, size, mtime) are compared with those last loaded — replacing a
file by `mv` or rewriting it both count. When one changed, a new context is
made from the files as they are now and, if they load, replaces `context`:
each handshake from then on is served by it alone, while established
connections keep the context they were made with. A context is never changed
once made — loading a certificate into a live one would keep the old
certificate too when its key type differs (OpenSSL holds one per type: an RSA
one and an ECDSA one), and could only add client CAs, never take one away.
The bytes are read before and after the new context is made: files caught in
the middle of being written (they differ) wait for the next look. A pair that
does not load is refused: logged (ERROR, once per change) and the old context
stays. The client CA file is taken as it is now by both listeners: a CA no
longer in it is no longer trusted for new handshakes. All of it runs on the
event loop: the files are small and local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Final, NamedTuple

from hybridbus.errors import InvalidInput
from hybridbus.server.config import ServerConfig, tls_problem

__all__ = ["Material", "ServerTls", "server_tls"]

log = logging.getLogger("hybridbus.tls")

_ALPN: Final = ["http/1.1"]  # aiohttp speaks HTTP/1.1 (and WebSocket over it)
Stamp = tuple[tuple[int, int, int], ...]  # (inode, size, mtime_ns) of each file


class Material(NamedTuple):
    """The PEM bytes served now; `generation` grows by one at each reload."""

    generation: int
    cert: bytes
    key: bytes
    client_ca: bytes | None


def server_tls(config: ServerConfig) -> ServerTls | None:
    """The TLS of a server configuration; None without `tls_cert`. Raises `InvalidInput`."""
    problem = tls_problem(config)
    if problem is not None:
        raise InvalidInput(problem)
    if config.tls_cert is None or config.tls_key is None:
        return None
    return ServerTls(
        Path(config.tls_cert),
        Path(config.tls_key),
        None if config.tls_client_ca is None else Path(config.tls_client_ca),
        interval=config.tls_reload_interval,
    )


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{setting} {path}: cannot read it: {exc.strerror}") from None


def _stamp(paths: tuple[Path, ...]) -> Stamp | None:
    try:
        stats = [path.stat() for path in paths]
    except OSError:
        return None  # being replaced: look again later
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _serial(cert: bytes) -> str:
    """The serial number of the first certificate of a chain, in hex (for the logs)."""
    from cryptography import x509

    with contextlib.suppress(ValueError):
        return format(x509.load_pem_x509_certificate(cert).serial_number, "x")
    return "?"


class ServerTls:
    """The server's certificate: `context` for HTTP, `material` for gRPC; `start` watches."""

    def __init__(
        self, cert: Path, key: Path, client_ca: Path | None = None, *, interval: float = 5.0
    ) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.interval = interval
        self._paths = (cert, key) if client_ca is None else (cert, key, client_ca)
        self._stamp = _stamp(self._paths)
        self._refused: Stamp | None = None  # the files' stamp when they last failed to load
        self._material = self._load_material(0)
        self._context = self._new_context()
        self._task: asyncio.Task[None] | None = None
        log.info("tls certificate loaded", extra=self._describe())

    @property
    def context(self) -> ssl.SSLContext:
        """The context new handshakes are served with now (a new one after each reload)."""
        return self._context

    @property
    def material(self) -> Material:
        """What is served now (safe to read from any thread)."""
        return self._material

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (`tls_client_ca` is set)."""
        return self.client_ca is not None

    def _describe(self) -> dict[str, object]:
        return {
            "cert": str(self.cert),
            "serial": _serial(self._material.cert),
            "generation": self._material.generation,
            "mutual": self.mutual,
        }

    def _load_material(self, generation: int) -> Material:
        ca = None if self.client_ca is None else _read("tls_client_ca", self.client_ca)
        return Material(generation, _read("tls_cert", self.cert), _read("tls_key", self.key), ca)

    def _fill(self, context: ssl.SSLContext) -> None:
        """Load the files into `context`; `InvalidInput` naming the setting if they do not load."""
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(
                f"tls_cert {self.cert} and tls_key {self.key} are not a PEM certificate "
                f"chain and its (unencrypted) private key: {exc}"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise InvalidInput(
                    f"tls_client_ca {self.client_ca} is not PEM certificates: {exc}"
                ) from None

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(_ALPN)
        self._fill(context)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- reloading ---------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the files every `interval` seconds (none if 0) until `close`."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="hybridbus-tls-reload")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.reload()
            except Exception:  # the watcher task's boundary: log, keep watching
                log.exception("tls reload failed")

    def reload(self) -> bool:
        """Load the files again if they changed since last loaded; whether the new ones serve."""
        stamp = _stamp(self._paths)
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return False
        try:
            before = self._load_material(self._material.generation + 1)
            context = self._new_context()
            after = self._load_material(before.generation)
        except InvalidInput as exc:
            self._refused = stamp
            log.error(  # noqa: TRY400 - the reason is the message; no traceback to show
                "tls certificate not reloaded, the old one stays: %s", exc, extra=self._describe()
            )
            return False
        if before != after or _stamp(self._paths) != stamp:
            return False  # being written: the next look takes them
        self._stamp, self._material, self._context = stamp, after, context
        log.info("tls certificate reloaded", extra=self._describe())
        return True
