"""The JavaScript client (clients/js) over TLS, against real `wss://` servers.

Two servers run in this process with the throwaway certificates of
tests/gateways/tls_support.py (a test CA, a server certificate for 127.0.0.1 and
localhost signed by it, client certificates): one anyone may connect to, one that
requires a client certificate of the test CA (mutual TLS). Then:

1. Node, built-in WebSocket (`--experimental-websocket` on Node 20), with
   `NODE_EXTRA_CA_CERTS=<the test CA>`: connects, publishes, receives
   (clients/js/test/tls/extra-ca.test.mjs).
2. Node without it (clients/js/test/tls/options.test.mjs): the built-in WebSocket
   is refused — `connect()` rejects at once, no reconnect; the `ws` package with
   `tls: { ca }` works, with `tls: { ca, cert, key }` passes mutual TLS, without the
   certificate (or with a stranger's) is refused; `tls` where it cannot be honoured,
   or with another option (`checkServerIdentity`…), is a TypeError; verification holds
   even under NODE_TLS_REJECT_UNAUTHORIZED=0.
3. Headless Chromium trusting the server certificate by its public key
   (`--ignore-certificate-errors-spki-list`, the one way to make Chromium trust a
   certificate without a system store to write to) loads a page from an https:// page
   server and the client connects over `wss://`; a server whose certificate's key is
   not in the list is refused (`connect()` rejects).

Without node (or chromium) the tests skip, unless HYBRIDBUS_REQUIRE_SERVICES=1
(HYBRIDBUS_REQUIRE_BROWSER=1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests import browser as browsers
from tests.browser import Browser, open_page
from tests.clients.harness import CLIENT, parse_tap, run_node
from tests.gateways.tls_support import Pki
from tests.servers import Server, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NODE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


@contextlib.asynccontextmanager
async def tls_servers(pki: Pki) -> AsyncIterator[tuple[Server, Server]]:
    """A wss:// server, and one requiring a client certificate of the test CA."""
    tls = {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key)}
    async with (
        running_server(**tls) as server,
        running_server(**tls, tls_client_ca=str(pki.ca)) as mutual,
    ):
        yield server, mutual


def node_env(pki: Pki, server: Server, mutual: Server) -> dict[str, str]:
    """What clients/js/test/tls/support.mjs reads."""
    return {
        "TLS_URL": server.url,
        "TLS_MUTUAL_URL": mutual.url,
        "TLS_CA": str(pki.ca),
        "TLS_CLIENT_CERT": str(pki.client.cert),
        "TLS_CLIENT_KEY": str(pki.client.key),
        "TLS_STRANGER_CERT": str(pki.stranger.cert),
        "TLS_STRANGER_KEY": str(pki.stranger.key),
    }


async def node_tests(file: str, env: dict[str, str], expected: int) -> None:
    """Run clients/js/test/tls/`file` with `node --test`; every test passes."""
    code, out, err = await run_node(
        "--experimental-websocket",
        "--test",
        "--test-reporter=tap",
        f"test/tls/{file}",
        env=env,
        timeout=NODE_TIMEOUT,
    )
    tests = parse_tap(out)
    report = "\n".join([*map(str, tests), "--- stdout", out[-6000:], "--- stderr", err[-3000:]])
    assert code == 0 and all(t.ok and not t.skipped for t in tests), report
    assert len(tests) == expected, report


async def test_node_trusts_the_ca_through_node_extra_ca_certs(pki: Pki) -> None:
    async with tls_servers(pki) as (server, mutual):
        env = {**node_env(pki, server, mutual), "NODE_EXTRA_CA_CERTS": str(pki.ca)}
        await node_tests("extra-ca.test.mjs", env, 1)


async def test_node_tls_options_and_mutual_tls(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (CLIENT / "node_modules" / "ws").exists():
        reason = "clients/js/node_modules is missing (the ws package): npm ci --prefix clients/js"
        if os.environ.get("HYBRIDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (HYBRIDBUS_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    monkeypatch.delenv("NODE_EXTRA_CA_CERTS", raising=False)  # node trusts its own CAs only
    async with tls_servers(pki) as (server, mutual):
        await node_tests("options.test.mjs", node_env(pki, server, mutual), 6)


# -- headless Chromium -------------------------------------------------------------------------

# The page: connect, subscribe, publish, take the event back; or report the refusal.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>hybridbus over TLS</title></head>
<body><script type="module">
import { Client } from "/client/index.js";

window.run = async (url, topic) => {
  const client = new Client(url, { reconnect: { base: 20, max: 100 } });
  const reconnects = [];
  client.on("reconnect", (r) => reconnects.push(r));
  try {
    const info = await client.connect();
    const sub = client.subscribe(topic);
    await sub.ready;
    const ack = await client.publish(topic, { id: "web-tls", type: "com.acme.tls" });
    let got = null;
    for await (const ev of sub) {
      got = [ev.event.id, ev.offset];
      break;
    }
    await client.close();
    return { secure: window.isSecureContext, tenant: info.tenant, got, offset: ack.offset };
  } catch (e) {
    await new Promise((resolve) => setTimeout(resolve, 300));  // a retry would start by now
    const error = { code: e.code, closeCode: e.closeCode, message: e.message };
    return { error, reconnects: reconnects.length, state: client.state };
  }
};
</script></body></html>
"""


def spki_hash(cert: Path) -> str:
    """base64(sha256(the certificate's SubjectPublicKeyInfo)): what Chromium's flag lists."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def chromium(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium trusting the test server certificate's key, and no other untrusted one."""
    flag = f"--ignore-certificate-errors-spki-list={spki_hash(pki.server.cert)}"
    with browsers.launch("chromium", tmp_path_factory.mktemp("chromium-profile"), [flag]) as b:
        yield b


# The page server: a subprocess (Chromium keeps TLS connections open, idle or half-made, and
# this process's loop must not end with them). The page at /, clients/js/src/ at /client/.
PAGE_SERVER = """
import functools, http.server, ssl, sys
root, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
# The handshake in the connection's thread, not in accept(): a stalled one blocks no other.
server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def https_page_server(pki: Pki, root: Path) -> Iterator[str]:
    """The page over HTTPS (the test server certificate), from `root`: the page's URL."""
    (root / "index.html").write_text(PAGE)
    (root / "client").symlink_to(CLIENT / "src")
    command = [
        sys.executable,
        "-c",
        PAGE_SERVER,
        str(root),
        str(pki.server.cert),
        str(pki.server.key),
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"https://127.0.0.1:{port}/"
    finally:
        process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


async def test_chromium_loads_an_https_page_and_connects_over_wss(
    chromium: Browser, pki: Pki, tmp_path: Path
) -> None:
    tls = {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key)}
    # A server whose certificate (another key, a CA nobody trusts) is not in the list.
    other = {"tls_cert": str(pki.server_other_ca.cert), "tls_key": str(pki.server_other_ca.key)}
    with https_page_server(pki, tmp_path) as page_url:
        async with (
            running_server(**tls) as server,
            running_server(**other) as untrusted,
            open_page(chromium) as page,
        ):
            await page.goto(page_url)
            await browsers.until(page, "typeof window.run === 'function'")  # the module ran
            async with asyncio.timeout(60):
                done = await page.eval(f"run({json.dumps(server.url)}, 'tls/web')")
                refused = await page.eval(f"run({json.dumps(untrusted.url)}, 'tls/web')")
            stored = await server.node.bus.history("acme/tls/web", limit=10)
    assert done == {"secure": True, "tenant": "acme", "got": ["web-tls", 1], "offset": 1}, done
    assert [d.event.id for d in stored.deliveries] == ["web-tls"]
    error = refused["error"]
    assert error["code"] == 1220 and error["closeCode"] is None, refused
    assert error["message"].startswith(f"1220 DISCONNECTED: cannot connect to {untrusted.url}: ")
    assert refused["reconnects"] == 0 and refused["state"] == "closed", refused
