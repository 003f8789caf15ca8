"""TLS on every listener, with real handshakes (server/tls.py, gateways/listener.py, grpc_tls.py).

The certificates are made per module with `cryptography` (tests.gateways.tls_support):
a test CA, server certificates for 127.0.0.1 and localhost, one for another
host, one from a CA nobody trusts, and client certificates for mutual TLS.
The clients are third-party ones where they can be — `websockets`, aiohttp,
httpx, grpc's channel, curl — and hybridbus's own (the Python client, the
log transports, the CLI) for their `ca` option.

    every way in over TLS with the CA        ws, http publish, sse, grpc, yjs, webhook, ndjson
    without the CA: the server is refused   certificate verify failed (each client library)
    a certificate for another host          refused (host name mismatch)
    mutual TLS                              no client cert / a stranger's: refused; ours: works
    reload                                  new handshakes: the new certificate; a WebSocket
                                            open before stays up; a broken file: the old one;
                                            RSA -> P-256 -> RSA: only the new one served; a
                                            client CA replaced: the old one's clients refused
    slowloris over TLS                      a handshake never finished: closed by
                                            header_timeout; handshaking ones are capped
    `hybridbus serve --dev-tls`             a subprocess: curl --cacert <printed CA> /healthz;
                                            the CLI with --ca / $HYBRIDBUS_CA, refused without
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
from tests.gateways.grpc_support import grpc_port, message
from tests.gateways.test_webhooks_in import INVOICE, billing, signed
from tests.gateways.tls_support import Pki, peer_serial
from tests.servers import Server, ServerProcess, event, running_server
from websockets.asyncio.client import connect as ws_connect

import hybridbus.client
from hybridbus.core.event import event_from_dict
from hybridbus.errors import ConnectFailed, InvalidInput
from hybridbus.gateways.grpc_gen import bus_pb2, bus_pb2_grpc
from hybridbus.logs.transports import GrpcTransport, HttpTransport, WebSocketTransport
from hybridbus.serve import TLS_KEY
from hybridbus.server.config import ServerConfig, load_config
from hybridbus.server.tls import server_tls

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
JSON = "hybridbus.v1.json"
CLOUDEVENT = {"content-type": "application/cloudevents+json"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def tls(pki: Pki, **settings: Any) -> dict[str, Any]:
    """Server settings serving the test server certificate (and gRPC on a free port)."""
    return {
        "tls_cert": str(pki.server.cert),
        "tls_key": str(pki.server.key),
        "grpc_port": 0,
        **settings,
    }


def grpc_channel(server: Server, ca: Path | None, client: Any = None) -> grpc.aio.Channel:
    roots = None if ca is None else ca.read_bytes()
    pair = (None, None) if client is None else (client.key.read_bytes(), client.cert.read_bytes())
    credentials = grpc.ssl_channel_credentials(roots, *pair)
    return grpc.aio.secure_channel(f"127.0.0.1:{grpc_port(server)}", credentials)


async def grpc_publish(channel: grpc.aio.Channel, id: str) -> Any:
    stub = bus_pb2_grpc.BusStub(channel)
    request = bus_pb2.PublishRequest(topic="acme/tls/grpc", event=message(event(id)))
    return await stub.Publish(request, timeout=10)


async def ids(server: Server, pattern: str = "acme/#") -> set[str]:
    page = await server.node.bus.history(pattern, limit=1000)
    return {d.event.id for d in page.deliveries}


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl in a thread (the server under test runs on this loop)."""
    assert shutil.which("curl"), "curl is needed"
    return await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        check=False,
    )


# -- settings ---------------------------------------------------------------------------------


def test_settings_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="tls_key"):
        load_config(None, {"HYBRIDBUS_TLS_CERT": str(pki.server.cert)})
    with pytest.raises(InvalidInput, match="tls_client_ca"):
        load_config(None, {"HYBRIDBUS_TLS_CLIENT_CA": str(pki.ca)})
    # The certificate in the file, its key in the environment: one configuration.
    file = tmp_path / "c.toml"
    file.write_text(f'tls_cert = "{pki.server.cert}"\n')
    assert load_config(file, {"HYBRIDBUS_TLS_KEY": str(pki.server.key)}).tls_key
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidInput, match=f"tls_cert {missing}: cannot read"):
        server_tls(ServerConfig(tls_cert=str(missing), tls_key=str(pki.server.key)))
    with pytest.raises(InvalidInput, match="not a PEM certificate"):  # another certificate's key
        server_tls(ServerConfig(tls_cert=str(pki.server.cert), tls_key=str(pki.server2.key)))
    with pytest.raises(InvalidInput, match="tls_client_ca"):
        server_tls(ServerConfig(**tls(pki, tls_client_ca=str(pki.server.key))))
    assert server_tls(ServerConfig()) is None


# -- every way in ------------------------------------------------------------------------------


async def test_every_way_in_over_tls(pki: Pki) -> None:
    context = pki.context()
    async with running_server(**tls(pki, webhooks=[billing()])) as server:
        assert server.url.startswith("wss://") and server.http.startswith("https://")
        # WebSocket (websockets): connect, publish, and the subscriber gets it.
        async with ws_connect(server.url, subprotocols=[JSON], ssl=context) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connect", "id": 1}))
            assert json.loads(await ws.recv())["type"] == "reply"
            sub = {"type": "subscribe", "id": 2, "pattern": "tls/#"}
            pub = {"type": "publish", "id": 3, "topic": "tls/ws", "event": event("ws-1")}
            await ws.send(json.dumps(sub) + "\n" + json.dumps(pub))
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not any(m.get("type") == "event" for m in seen):
                    seen += [json.loads(line) for line in str(await ws.recv()).splitlines()]
        # HTTP publish (aiohttp), and SSE (aiohttp) reading it back from the start.
        async with aiohttp.ClientSession() as http:
            url = f"{server.http}/v1/topics/acme/tls/http/events"
            head = await server.node.bus.history("acme/tls/http", limit=0)
            async with http.post(url, json=event("http-1"), headers=CLOUDEVENT, ssl=context) as r:
                assert r.status in (200, 201), await r.text()
            sse = f"{server.http}/v1/sse?pattern=acme/tls/http&since={head.position}"
            async with http.get(sse, ssl=context) as stream:
                assert stream.status == 200
                async with asyncio.timeout(10):
                    while b"http-1" not in await stream.content.readline():
                        pass
            # An inbound webhook, signed (no token).
            async with http.post(
                f"{server.http}/v1/webhooks/acme/billing",
                data=INVOICE,
                headers=signed(INVOICE),
                ssl=context,
            ) as r:
                assert r.status < 300, await r.text()
            # NDJSON log lines.
            async with http.post(
                f"{server.http}/v1/logs/api/i1",
                data=b'{"message": "over tls", "level": "info"}\n',
                headers={"content-type": "application/x-ndjson"},
                ssl=context,
            ) as r:
                assert r.status < 300, await r.text()
        # curl, a client nobody here wrote: publish with --cacert.
        headers = "content-type: application/cloudevents+json"
        done = await curl(
            "--cacert", str(pki.ca), "-X", "POST", "-H", headers,
            "-d", json.dumps(event("curl-1")), f"{server.http}/v1/topics/acme/tls/curl/events",
        )  # fmt: skip
        assert done.returncode == 0 and '"offset"' in done.stdout, done
        # gRPC over TLS with the CA.
        async with grpc_channel(server, pki.ca) as channel:
            assert (await grpc_publish(channel, "grpc-1")).offset >= 1
        # The Yjs endpoint: the first sync step arrives over WSS.
        async with ws_connect(f"wss://127.0.0.1:{server.port}/v1/yjs/x", ssl=context) as yjs:
            await yjs.send(b"\x03")  # queryAwareness: an anonymous client (no auth message)
            async with asyncio.timeout(10):
                while (await yjs.recv())[:2] != b"\x00\x00":  # sync step 1: it joined the room
                    pass
        found = await ids(server)
        assert {"ws-1", "http-1", "curl-1", "grpc-1"} <= found, found
        assert await server.node.bus.history("acme/billing/#", limit=10)
        logs = await server.node.bus.history("acme/logs/api/i1", limit=10)
        assert [d.event.data["message"] for d in logs.deliveries] == ["over tls"]


async def test_hybridbus_clients_verify_with_ca(pki: Pki) -> None:
    """The Python client and the log transports: `ca` as a file or a context; none: refused."""
    async with running_server(**tls(pki)) as server:
        for ca in (str(pki.ca), pki.context()):
            async with hybridbus.client.connect(server.url, ca=ca) as c:
                await c.publish("tls/py", event(f"py-{type(ca).__name__}"))
        with pytest.raises(ConnectFailed, match=r"(?i)certificate verify failed"):
            await hybridbus.client.connect(server.url)  # the system's CAs do not know ours
        topic = "logs/api/tls"
        grpc_url = f"grpcs://127.0.0.1:{grpc_port(server)}?tenant=acme"
        for n, way in enumerate(
            [
                WebSocketTransport(server.url, ca=pki.ca),
                HttpTransport(server.http, tenant="acme", ca=pki.ca),
                GrpcTransport(grpc_url, ca=pki.context()),
            ]
        ):
            await way.open()
            try:
                await way.send(topic, [event_from_dict(event(f"log-{n}"))])
            finally:
                await way.close()
        found = await ids(server)
        assert {"py-str", "py-SSLContext", "log-0", "log-1", "log-2"} <= found, found


# -- refusals ----------------------------------------------------------------------------------


async def test_without_the_ca_the_server_is_refused(pki: Pki) -> None:
    untrusting = pki.context(ca=pki.other_ca)  # trusts a CA that did not sign the server
    async with running_server(**tls(pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with ws_connect(server.url, ssl=untrusting):
                pass
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{server.http}/healthz")  # the system's CAs
        async with httpx.AsyncClient(verify=untrusting) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"{server.http}/healthz")
        assert (await curl(f"{server.http}/healthz")).returncode == 60  # curl: refused the peer
        async with grpc_channel(server, pki.other_ca) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await grpc_publish(channel, "never")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "never" not in await ids(server)


async def test_a_certificate_for_another_host_is_refused(pki: Pki) -> None:
    settings = tls(pki, tls_cert=str(pki.wrong_host.cert), tls_key=str(pki.wrong_host.key))
    async with running_server(**settings) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)mismatch|match"):
            async with ws_connect(server.url, ssl=pki.context()):
                pass
        assert (await curl("--cacert", str(pki.ca), f"{server.http}/healthz")).returncode == 60
        async with grpc_channel(server, pki.ca) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await grpc_publish(channel, "never")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(pki: Pki) -> None:
    async with running_server(**tls(pki, tls_client_ca=str(pki.ca))) as server:
        health = f"{server.http}/healthz"
        async with aiohttp.ClientSession() as http:
            for who in (None, pki.stranger):  # no certificate, one from a CA not trusted
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    async with http.get(health, ssl=pki.context(client=who)) as r:
                        await r.read()
            async with http.get(health, ssl=pki.context(client=pki.client)) as r:
                assert r.status == 200
        cert = ("--cert", str(pki.client.cert), "--key", str(pki.client.key))
        assert (await curl("--cacert", str(pki.ca), health)).returncode != 0
        done = await curl("--cacert", str(pki.ca), *cert, health)
        assert done.returncode == 0 and "ok" in done.stdout, done
        async with hybridbus.client.connect(server.url, ca=pki.context(client=pki.client)) as c:
            await c.publish("tls/mtls", event("mtls-py"))
        for who in (None, pki.stranger):
            async with grpc_channel(server, pki.ca, who) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await grpc_publish(channel, "never")
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc_channel(server, pki.ca, pki.client) as channel:
            await grpc_publish(channel, "mtls-grpc")
        assert {"mtls-py", "mtls-grpc"} <= await ids(server)


# -- reload ------------------------------------------------------------------------------------


def replace(src: Path, dst: Path) -> None:
    """Replace `dst` with a copy of `src` at once (as a certificate manager does)."""
    tmp = dst.with_suffix(".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


async def until(check: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


async def test_reload_without_restart(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    settings = tls(pki, tls_cert=str(cert), tls_key=str(key), tls_reload_interval=0.1)
    context = pki.context()
    async with running_server(**settings) as server:
        port = server.port
        assert await peer_serial(port, context) == pki.server.serial
        async with (
            ws_connect(server.url, subprotocols=[JSON], ssl=context) as ws,  # type: ignore[list-item]
            grpc_channel(server, pki.other_ca) as other_channel,
        ):
            await ws.send(json.dumps({"type": "connect", "id": 1}))
            assert json.loads(await ws.recv())["type"] == "reply"
            # The same CA, a new certificate: new handshakes get it.
            replace(pki.server2.key, key)
            replace(pki.server2.cert, cert)

            async def renewed() -> bool:
                return await peer_serial(port, context) == pki.server2.serial

            await until(renewed)
            # The WebSocket opened before goes on.
            await ws.send(json.dumps({"type": "publish", "id": 2, "topic": "r", "event": event()}))
            assert json.loads(await ws.recv())["type"] == "reply"
            # A broken replacement: refused, logged, the served certificate stays.
            with caplog.at_level(logging.ERROR, logger="hybridbus.tls"):
                cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")

                async def refused() -> bool:
                    return "not reloaded" in caplog.text

                await until(refused)
            assert await peer_serial(port, context) == pki.server2.serial
            # gRPC follows too: a certificate of the other CA, and a new channel trusting
            # only that CA gets through (before the reload it could not).
            with pytest.raises(grpc.aio.AioRpcError):
                await grpc_publish(other_channel, "before")
            replace(pki.server_other_ca.key, key)
            replace(pki.server_other_ca.cert, cert)
            other = pki.context(ca=pki.other_ca)

            async def switched() -> bool:
                try:
                    return await peer_serial(port, other) == pki.server_other_ca.serial
                except ssl.SSLCertVerificationError:  # still the first CA's certificate
                    return False

            await until(switched)
            async with grpc_channel(server, pki.other_ca) as channel:
                assert (await grpc_publish(channel, "after")).offset >= 1


async def test_reload_to_a_certificate_of_another_key_type(pki: Pki, tmp_path: Path) -> None:
    """Only the new certificate is served, whatever the key type of the one before.

    OpenSSL holds one certificate per key type in a context: loading a P-256
    one into a context serving an RSA one keeps both, and a client offering
    both signature algorithms (Python's default, preferring ECDSA) is still
    served the old P-256 one after a reload back to RSA.
    """
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(pki.server_rsa.cert, cert)
    shutil.copyfile(pki.server_rsa.key, key)
    settings = tls(pki, tls_cert=str(cert), tls_key=str(key), tls_reload_interval=0)
    context = pki.context()  # offers ECDSA and RSA signature algorithms
    async with running_server(**{**settings, "grpc_port": None}) as server:
        watcher = server.app[TLS_KEY]
        assert await peer_serial(server.port, context) == pki.server_rsa.serial
        for pair in (pki.server, pki.server_rsa):  # RSA -> P-256 -> RSA
            replace(pair.key, key)
            replace(pair.cert, cert)
            assert watcher.reload()
            assert await peer_serial(server.port, context) == pair.serial


async def health_status(server: Server, context: ssl.SSLContext) -> int | None:
    """GET /healthz over a new connection presenting what `context` does; None if refused."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        try:
            async with http.get(f"{server.http}/healthz", ssl=context) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
            return None


async def test_reload_replaces_the_client_ca(pki: Pki, tmp_path: Path) -> None:
    """A client CA taken out of `tls_client_ca` is no longer trusted once reloaded."""
    client_ca = tmp_path / "client-ca.pem"
    shutil.copyfile(pki.ca, client_ca)
    settings = tls(pki, tls_client_ca=str(client_ca), tls_reload_interval=0, grpc_port=None)
    ours, strangers = pki.context(client=pki.client), pki.context(client=pki.stranger)
    async with running_server(**settings) as server:
        assert await health_status(server, ours) == 200
        assert await health_status(server, strangers) is None
        replace(pki.other_ca, client_ca)  # the stranger's CA instead of ours
        assert server.app[TLS_KEY].reload()
        assert await health_status(server, ours) is None
        assert await health_status(server, strangers) == 200


# -- slowloris over TLS ------------------------------------------------------------------------


async def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes `sock` (which sends nothing more); fails past `seconds`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(seconds):
        while True:
            try:
                if not await loop.sock_recv(sock, 4096):
                    break
            except ConnectionError:
                break
    return loop.time() - start


async def raw_connection(port: int, hello: bytes = b"") -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    if hello:
        await loop.sock_sendall(sock, hello)
    return sock


async def test_an_unfinished_handshake_is_closed_by_header_timeout(pki: Pki) -> None:
    async with running_server(**tls(pki, header_timeout=0.5, grpc_port=None)) as server:
        # Nothing at all, and half a ClientHello (a record header promising more).
        silent = await raw_connection(server.port)
        partial = await raw_connection(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        try:
            assert await closed_within(silent, 5.0) < 5.0
            assert await closed_within(partial, 5.0) < 5.0
        finally:
            silent.close()
            partial.close()
        # A finished handshake is served as before.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.http}/healthz", ssl=pki.context()) as r,
        ):
            assert r.status == 200


async def test_handshaking_connections_are_capped(pki: Pki) -> None:
    async with running_server(**tls(pki, max_pending_connections=2, grpc_port=None)) as server:
        first = await raw_connection(server.port)
        others = [await raw_connection(server.port) for _ in range(2)]
        try:
            assert await closed_within(first, 5.0) < 5.0  # the oldest waiting one made room
        finally:
            for sock in (first, *others):
                sock.close()


# -- hybridbus serve --dev-tls -----------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridbus", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.slow
async def test_serve_dev_tls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = ServerProcess(
        "--engine", f"sqlite://{data}", "--anonymous-tenant", "public", "--dev-tls",
        "--grpc-port", "0", logs=tmp_path / "server.log",
    )  # fmt: skip
    try:
        await process.wait_listening()
        printed = re.search(r"--ca (\S+)", (tmp_path / "server.log").read_text())
        assert printed, "the CA file is printed"
        ca = Path(printed[1])
        assert ca == (data / "dev-tls" / "ca.pem").resolve() and ca.exists()
        base = f"https://127.0.0.1:{process.port}"
        done = await curl("--cacert", str(ca), f"{base}/healthz")
        assert done.returncode == 0 and "ok" in done.stdout, done
        done = await curl(f"https://localhost:{process.port}/healthz")
        assert done.returncode == 60, done  # not trusted without the CA
        # A client sending its ClientHello at once, on the server's uvloop: every time.
        trusting = ssl.create_default_context(cafile=str(ca))
        serials = {await peer_serial(process.port, trusting) for _ in range(20)}
        assert len(serials) == 1
        url = f"wss://127.0.0.1:{process.port}/v1/ws"
        # The CLI: --ca, $HYBRIDBUS_CA; refused (exit 3) without them, saying why.
        published = await asyncio.to_thread(cli, "publish", "docs/1", "--url", url, "--ca", str(ca))
        assert published.returncode == 0 and '"offset"' in published.stdout, published
        env = {"HYBRIDBUS_CA": str(ca)}
        history = await asyncio.to_thread(cli, "history", "docs/1", "--url", url, env=env)
        assert history.returncode == 0 and "docs/1" in history.stdout, history
        listed = await asyncio.to_thread(cli, "groups", "--url", url, env=env)  # over HTTPS
        assert listed.returncode == 0, listed
        refused = await asyncio.to_thread(cli, "publish", "docs/1", "--url", url)
        assert refused.returncode == 3 and "--ca" in refused.stderr, refused
        refused = await asyncio.to_thread(cli, "groups", "--url", url)
        assert refused.returncode == 3 and "--ca" in refused.stderr, refused
    finally:
        await process.kill()
    # A restart keeps the CA: a client that trusts it goes on trusting the server.
    before = ca.read_bytes()
    again = ServerProcess(
        "--engine", f"sqlite://{data}", "--dev-tls", logs=tmp_path / "again.log"
    )  # fmt: skip
    try:
        await again.wait_listening()
        assert ca.read_bytes() == before
        done = await curl("--cacert", str(ca), f"https://127.0.0.1:{again.port}/healthz")
        assert done.returncode == 0, done
    finally:
        await again.kill()


def test_dev_tls_refuses_a_configured_certificate(pki: Pki, tmp_path: Path) -> None:
    done = cli(
        "serve", "--engine", "memory://", "--dev-tls",
        env={"HYBRIDBUS_TLS_CERT": str(pki.server.cert), "HYBRIDBUS_TLS_KEY": str(pki.server.key)},
    )  # fmt: skip
    assert done.returncode == 2 and "--dev-tls" in done.stderr, done
