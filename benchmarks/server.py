"""The real server over real sockets: WebSocket fan-out, latency, memory per idle connection.

Every server is a subprocess of its own, started here and killed by its PID;
every client runs in ONE other subprocess (`python -m benchmarks.server
client ...`), so on a 2-core machine the server has one core and the clients
the other: the figures are a floor of what the server does, the client
process is often the bottleneck. Everything binds 127.0.0.1.

Servers (all on uvloop):
- hybridbus: `python -m hybridbus serve --engine memory:// --anonymous-tenant bench`;
  subscribers speak `hybridbus.v1.json` (connect, subscribe "t"); the
  publisher sends a burst of `publish` commands in one frame over its own
  connection and waits for their replies before the next burst (the WebSocket
  command path costs the server less per event than an HTTP request).
- bare aiohttp: a hand-written fan-out (the ceiling): each published line
  sent to every socket as its own frame ("per message"), or the whole burst
  as one frame ("coalesced").
- python-socketio: `AsyncServer(async_mode="aiohttp")`, one room, `emit` to
  the room per message; the clients speak raw engine.io v4 / socket.io v5
  framing over an aiohttp WebSocket (the `socketio.AsyncClient` costs far more
  per message than the server and would measure itself).
- NATS (`nats-server` from Debian, when installed): one connection and one
  `SUB t` per subscriber; raw NATS protocol over asyncio streams (`PUB` burst
  then `PING`, wait for `PONG`).

Subscribers count deliveries per frame cheaply (occurrences of the event
marker), never decoding JSON on the fan-out path. Fan-out: deliveries/s
summed over subscribers, from the first publish until every subscriber has
every event. Latency: at a fixed 100 and 500 events/s to 1,000 subscribers
(100k and 500k deliveries/s, one publish per event); the publish time travels
in the event's data. Memory:
K idle connections (hybridbus: connected, no subscription) and the server's
VmRSS growth divided by K.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks.harness import Result, Settings, median, run_async

__all__ = ["IDLE_CONNECTIONS", "SUBSCRIBERS", "run"]

SUBSCRIBERS: Final = 1_000
IDLE_CONNECTIONS: Final = 10_000
BURST: Final = 100
# Events/s x 1,000 subscribers: 100k deliveries/s (the stack note), and
# 500k/s, half the 1 M/s fan-out target (one publish per event, so the server
# cannot batch a burst the way the fan-out case does).
LATENCY_RATES: Final = (100, 500)
LATENCY_SECONDS: Final = 2.0
ROOT: Final = Path(__file__).resolve().parent.parent
PYTHON: Final = sys.executable
CLIENT_TIMEOUT: Final = 180.0

# The data of a hybridbus push, so every server moves the same bytes per event.
_EVENT_LINE: Final = (
    '{{"type":"event","pattern":"t","topic":"t","offset":{seq},"shard":0,"position":{seq},'
    '"event":{{"specversion":"1.0","id":"000-{seq:09d}","source":"/bench/publisher",'
    '"type":"com.acme.doc.edited","subject":"doc-0","time":"2025-01-02T03:04:05.678Z",'
    '"data":{{"doc":0,"seq":{seq},"op":"insert","at":42,"text":"hello, world","ts":{ts}}}}}}}'
)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _ts_of(line: str) -> float:
    at = line.rfind('"ts":')
    return float(line[at + 5 : line.index("}", at)])


# -- servers (subprocesses) ---------------------------------------------------------


class ServerProcess:
    """A server subprocess we own: started, waited for on its port, killed by PID."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = _free_port()
        port = str(self.port)
        self._config: Path | None = None
        if kind in ("hybridbus", "hybridbus-auth"):
            self._config = _hybridbus_config(kind)
            argv = [
                PYTHON,
                "-m",
                "hybridbus",
                "serve",
                "--config",
                str(self._config),
                "--engine",
                "memory://",
                "--host",
                "127.0.0.1",
                "--port",
                port,
            ]
        elif kind == "nats":
            argv = ["nats-server", "-a", "127.0.0.1", "-p", port]
        else:
            argv = [PYTHON, "-m", "benchmarks.server", "peer", kind, port]
        env = {**os.environ, "HYBRIDBUS_LOG_LEVEL": "warning"}
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_raise_nofile,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{kind} server did not start on port {self.port}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        return _rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self._config is not None:
            self._config.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# "hybridbus": anonymous clients allowed everything (no rules to speak of).
# "hybridbus-auth": every client has a JWT (HS256) and the role "editor", whose
# rules have placeholders, a time window and a deny: the permission check's cost.
_BENCH_SECRET: Final = "bench-secret-bench-secret-bench-secret!"
_OPEN_CONFIG: Final = """
anonymous_tenant = "bench"
[[roles.anonymous]]
allow = "*"
topics = "#"
"""
_AUTH_CONFIG: Final = f"""
jwt_secret = "{_BENCH_SECRET}"
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


def _hybridbus_config(kind: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="hybridbus-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as handle:
        handle.write(_AUTH_CONFIG if kind == "hybridbus-auth" else _OPEN_CONFIG)
    return Path(name)


def _bench_token(user: str) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": user, "tenantid": "bench", "roles": ["editor"], "iat": now, "exp": now + 3600}
    return jwt.encode(claims, _BENCH_SECRET, algorithm="HS256")


def _client(kind: str, port: int, mode: str, **options: Any) -> dict[str, Any]:
    """Run the client subprocess; its JSON answer."""
    argv = [PYTHON, "-m", "benchmarks.server", "client", kind, str(port), mode, json.dumps(options)]
    try:
        out = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            preexec_fn=_raise_nofile,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        raise RuntimeError(f"{kind} {mode} client timed out") from exc
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {mode} client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- peer servers (run as `python -m benchmarks.server peer KIND PORT`) ------------


def _serve_bare(port: int) -> None:
    from aiohttp import WSMsgType, web

    subscribers: set[web.WebSocketResponse] = set()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data: str = msg.data
            if data == "sub":
                subscribers.add(ws)
                await ws.send_str("ok")
            elif data[0] == "C":  # one frame per burst
                frame = data[1:]
                for sub in list(subscribers):
                    await sub.send_str(frame)
                await ws.send_str("ack")
            elif data[0] == "M":  # one frame per message
                for line in data[1:].split("\n"):
                    for sub in list(subscribers):
                        await sub.send_str(line)
                await ws.send_str("ack")
        subscribers.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=_new_loop())


def _serve_socketio(port: int) -> None:
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])

    @sio.on("sub")  # type: ignore[untyped-decorator]
    async def sub(sid: str) -> str:
        await sio.enter_room(sid, "r")
        return "ok"

    @sio.on("pub")  # type: ignore[untyped-decorator]
    async def pub(sid: str, lines: list[str]) -> str:
        for line in lines:
            await sio.emit("event", line, room="r")
        return "ack"

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=_new_loop())


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


# -- clients (run as `python -m benchmarks.server client KIND PORT MODE OPTIONS`) --


class _Counter:
    """Deliveries seen by all subscribers; wakes the waiter when all are in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()
        self.latencies: list[float] | None = None

    def add(self, n: int) -> None:
        self.count += n
        if self.count >= self.expected:
            self.done.set()


class _WsKind:
    """hybridbus / bare / socketio over aiohttp WebSockets."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.port = port
        self.session: Any = None
        self.seq = 0
        self.users = 0

    async def __aenter__(self) -> _WsKind:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def open(self, subscribe: bool) -> Any:
        """One connection, handshaken; subscribed to "t" when `subscribe`."""
        if self.kind.startswith("hybridbus"):
            ws = await self.session.ws_connect(
                f"http://127.0.0.1:{self.port}/v1/ws",
                protocols=("hybridbus.v1.json",),
                autoping=True,
                max_msg_size=0,
            )
            if self.kind == "hybridbus-auth":
                self.users += 1
                token = _bench_token(f"user-{self.users}")
                await ws.send_str(json.dumps({"type": "connect", "id": 1, "token": token}))
            else:
                await ws.send_str('{"type":"connect","id":1}')
            reply = await ws.receive_str()
            assert '"reply"' in reply, reply
            if subscribe:
                await ws.send_str('{"type":"subscribe","id":2,"pattern":"t"}')
                reply = await ws.receive_str()
                assert '"reply"' in reply, reply
        elif self.kind == "socketio":
            ws = await self.session.ws_connect(
                f"http://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket",
                autoping=True,
                max_msg_size=0,
            )
            opened = await ws.receive_str()
            assert opened.startswith("0"), opened
            await ws.send_str("40")
            connected = await ws.receive_str()
            assert connected.startswith("40"), connected
            if subscribe:
                await ws.send_str('421["sub"]')
                ack = await ws.receive_str()
                assert ack.startswith("431"), ack
        else:
            ws = await self.session.ws_connect(
                f"http://127.0.0.1:{self.port}/ws", autoping=True, max_msg_size=0
            )
            if subscribe:
                await ws.send_str("sub")
                assert await ws.receive_str() == "ok"
        return ws

    async def consume(self, ws: Any, counter: _Counter) -> None:
        import aiohttp

        marker = '"type":"event"'
        latencies = counter.latencies
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            data: str = msg.data
            if self.kind == "socketio" and data == "2":
                await ws.send_str("3")  # engine.io heartbeat
                continue
            # socket.io: one message per frame, its data a JSON string (quotes escaped).
            n = data.startswith('42["event"') if self.kind == "socketio" else data.count(marker)
            if latencies is not None and n:
                now = time.time()
                latencies.extend(now - _ts_of(line) for line in data.split("\n") if marker in line)
            counter.add(n)

    def _lines(self, count: int, ts: float) -> list[str]:
        lines = []
        for _ in range(count):
            self.seq += 1
            lines.append(_EVENT_LINE.format(seq=self.seq, ts=repr(ts)))
        return lines

    async def publish(self, ws: Any, count: int, mode: str) -> None:
        """Publish `count` events in one burst; return once the server has taken them."""
        ts = time.time()
        if self.kind.startswith("hybridbus"):
            commands = []
            for _ in range(count):
                self.seq += 1
                event = {
                    "specversion": "1.0",
                    "id": f"{os.getpid()}-{self.seq:09d}",
                    "source": "/bench/publisher",
                    "type": "com.acme.doc.edited",
                    "subject": "doc-0",
                    "time": "2025-01-02T03:04:05.678Z",
                    "data": {
                        "doc": 0,
                        "seq": self.seq,
                        "op": "insert",
                        "at": 42,
                        "text": "hello, world",
                        "ts": ts,
                    },
                }
                commands.append(
                    json.dumps(
                        {"type": "publish", "id": self.seq + 10, "topic": "t", "event": event},
                        separators=(",", ":"),
                    )
                )
            await ws.send_str("\n".join(commands))
            replies = 0
            while replies < count:
                frame = await ws.receive_str()
                replies += frame.count('"type":"reply"')
                assert '"type":"error"' not in frame, frame
        elif self.kind == "socketio":
            await ws.send_str("421" + json.dumps(["pub", self._lines(count, ts)]))
            while not (await ws.receive_str()).startswith("431"):
                pass
        else:
            prefix = "C" if mode == "coalesced" else "M"
            await ws.send_str(prefix + "\n".join(self._lines(count, ts)))
            while await ws.receive_str() != "ack":
                pass


class _NatsKind:
    """Raw NATS protocol over asyncio streams: one connection and one SUB per subscriber."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seq = 0

    async def __aenter__(self) -> _NatsKind:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def open(self, subscribe: bool) -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        await reader.readuntil(b"\r\n")  # INFO
        writer.write(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + (b"SUB t 1\r\n" if subscribe else b"")
            + b"PING\r\n"
        )
        while not (await reader.readuntil(b"\r\n")).startswith(b"PONG"):
            pass
        return reader, writer

    async def consume(self, conn: Any, counter: _Counter) -> None:
        reader, writer = conn
        pattern = b"MSG t 1 "
        tail = b""
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            buf = tail + data
            n = buf.count(pattern)
            if b"\r\nPING\r\n" in buf or buf.startswith(b"PING\r\n"):
                writer.write(b"PONG\r\n")
            tail = buf[-(len(pattern) - 1) :]
            counter.add(n)

    async def publish(self, conn: Any, count: int, mode: str) -> None:
        reader, writer = conn
        ts = time.time()
        parts = []
        for _ in range(count):
            self.seq += 1
            payload = _EVENT_LINE.format(seq=self.seq, ts=repr(ts)).encode()
            parts.append(b"PUB t %d\r\n%s\r\n" % (len(payload), payload))
        parts.append(b"PING\r\n")
        writer.write(b"".join(parts))
        while not (await reader.readuntil(b"\r\n")).startswith(b"PONG"):
            pass


async def _open_many(kind: Any, count: int, subscribe: bool) -> list[Any]:
    conns: list[Any] = []
    step = 200
    for first in range(0, count, step):
        conns += await asyncio.gather(
            *(kind.open(subscribe) for _ in range(min(step, count - first)))
        )
    return conns


async def _client_main(
    kind_name: str, port: int, mode: str, options: dict[str, Any]
) -> dict[str, Any]:
    kind: Any = _NatsKind(port) if kind_name == "nats" else _WsKind(kind_name, port)
    async with kind:
        if mode == "idle":
            start = time.perf_counter()
            conns = await _open_many(kind, options["connections"], subscribe=False)
            print(
                json.dumps({"ready": len(conns), "connect_s": time.perf_counter() - start}),
                flush=True,
            )
            # Held open until the parent has read the server's RSS and kills us.
            await asyncio.sleep(CLIENT_TIMEOUT)
            return {}
        subscribers = options["subscribers"]
        subs = await _open_many(kind, subscribers, subscribe=True)
        publisher = await kind.open(subscribe=False)
        await asyncio.sleep(0.2)  # every subscription is in place
        out: dict[str, Any] = {}
        if mode in ("fanout", "coalesced", "per-message"):
            events = options["events"]
            counter = _Counter(events * subscribers)
            tasks = [asyncio.create_task(kind.consume(ws, counter)) for ws in subs]
            start = time.perf_counter()
            for first in range(0, events, BURST):
                await kind.publish(publisher, min(BURST, events - first), mode)
            await asyncio.wait_for(counter.done.wait(), 120)
            elapsed = time.perf_counter() - start
            out["deliveries_per_s"] = counter.count / elapsed
            out["seconds"] = elapsed
        else:  # latency: `rate` events/s, one per publish
            rate, seconds = options["rate"], options["seconds"]
            events = int(rate * seconds)
            counter = _Counter(events * subscribers)
            counter.latencies = []
            tasks = [asyncio.create_task(kind.consume(ws, counter)) for ws in subs]
            start = time.perf_counter()
            for i in range(events):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await kind.publish(publisher, 1, mode)
            await asyncio.wait_for(counter.done.wait(), 120)
            lat = sorted(counter.latencies)
            out["p50_ms"] = lat[len(lat) // 2] * 1e3
            out["p99_ms"] = lat[int(len(lat) * 0.99)] * 1e3
            out["samples"] = len(lat)
        for task in tasks:
            task.cancel()
        return out


# -- measuring -------------------------------------------------------------------


def _nats_available() -> bool:
    return shutil.which("nats-server") is not None


def _idle_kib_per_connection(kind: str, connections: int) -> tuple[float, float]:
    """(KiB of server RSS per idle connection, seconds to open them)."""
    with ServerProcess(kind) as server:
        # Warm the server up with a few connections so first-use allocations don't count.
        _client(kind, server.port, "fanout", subscribers=10, events=100)
        before = server.rss_kib()
        argv = [
            PYTHON,
            "-m",
            "benchmarks.server",
            "client",
            kind,
            str(server.port),
            "idle",
            json.dumps({"connections": connections}),
        ]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_raise_nofile,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{kind} idle client failed")
            ready = json.loads(line)
            time.sleep(1.0)
            after = server.rss_kib()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return (after - before) / ready["ready"], ready["connect_s"]


def _result(id: str, label: str, unit: Any, runs: list[float], **kw: Any) -> Result:
    return Result(id, "server", label, unit, runs, **kw)


def run(settings: Settings, log: Callable[[str], None] = print) -> list[Result]:
    quick = settings.runs == 1
    subscribers = SUBSCRIBERS
    base = settings.fanout_events  # 2,000 (x 1,000 subscribers = 2 M deliveries)
    # Per-frame servers deliver ~10x fewer events/s: fewer events keep a run ~2 s.
    events = {
        "hybridbus": base,
        "hybridbus-auth": base,
        "coalesced": base,
        "per-message": base // 8,
        "socketio": max(20, base // 40),
        "nats": base,
    }
    kinds = [
        ("hybridbus", "fanout"),
        ("hybridbus-auth", "fanout"),
        ("bare", "coalesced"),
        ("bare", "per-message"),
        ("socketio", "fanout"),
    ]
    if _nats_available():
        kinds.append(("nats", "fanout"))
    else:
        log("  (nats-server is not installed: the NATS case skipped)")
    fan: dict[str, list[float]] = {f"{k}.{m}": [] for k, m in kinds}
    # Latency: hybridbus, and the bare server (whose own cost per event is tiny) as
    # the floor the client process itself sets.
    p50: dict[tuple[str, int], list[float]] = {
        (k, r): [] for k in ("hybridbus", "bare") for r in LATENCY_RATES
    }
    p99: dict[tuple[str, int], list[float]] = {key: [] for key in p50}
    for round_ in range(settings.runs):
        log(f"  round {round_ + 1} of {settings.runs}: {len(kinds)} servers")
        for kind, mode in kinds:
            with ServerProcess(kind) as server:
                key = mode if kind == "bare" else kind
                cpu = server.cpu_s()
                got = _client(kind, server.port, mode, subscribers=subscribers, events=events[key])
                cpu = server.cpu_s() - cpu  # includes connecting the clients
                fan[f"{kind}.{mode}"].append(got["deliveries_per_s"])
                log(
                    f"    {kind} {mode}: {got['deliveries_per_s'] / 1e6:.2f} M/s "
                    f"({got['seconds']:.1f} s; server CPU {cpu:.1f} s incl. connects)"
                )
                if kind == "hybridbus" or mode == "coalesced":
                    for rate in LATENCY_RATES:
                        lat = _client(
                            kind,
                            server.port,
                            "latency",
                            subscribers=subscribers,
                            rate=rate,
                            seconds=LATENCY_SECONDS / (4 if quick else 1),
                        )
                        p50[kind, rate].append(lat["p50_ms"])
                        p99[kind, rate].append(lat["p99_ms"])
                        log(
                            f"    {kind} latency at {rate * subscribers:,}/s: "
                            f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms "
                            f"({lat['samples']} samples)"
                        )
    connections = min(IDLE_CONNECTIONS if not quick else 1_000, (_fd_limit() - 200))
    memory: dict[str, float] = {}
    for kind in ("hybridbus", "bare"):
        kib, took = _idle_kib_per_connection(kind, connections)
        memory[kind] = kib
        log(f"    {kind}: {kib:.1f} KiB per idle connection ({connections} in {took:.1f} s)")
    n = f"{subscribers:,}"
    out = [
        _result(
            "server.fanout",
            f"hybridbus WebSocket fan-out to {n} subscribers",
            "deliveries/s",
            fan["hybridbus.fanout"],
            peer="server.socketio",
            target=1_000_000,
        ),
        _result(
            "server.fanout_auth",
            f"hybridbus fan-out, {n} subscribers with JWTs and rules",
            "deliveries/s",
            fan["hybridbus-auth.fanout"],
            peer="server.fanout",
        ),
        _result(
            "server.bare_coalesced",
            "bare aiohttp fan-out, coalesced frames (ceiling)",
            "deliveries/s",
            fan["bare.coalesced"],
            is_peer=True,
        ),
        _result(
            "server.bare_per_message",
            "bare aiohttp fan-out, one frame per message",
            "deliveries/s",
            fan["bare.per-message"],
            is_peer=True,
        ),
        _result(
            "server.socketio",
            "python-socketio, emit to one room",
            "deliveries/s",
            fan["socketio.fanout"],
            is_peer=True,
        ),
    ]
    if "nats.fanout" in fan:
        out.append(
            _result(
                "server.nats",
                "nats-server (native reference)",
                "deliveries/s",
                fan["nats.fanout"],
                is_peer=True,
            )
        )
    out += [
        *_latency_results(p50, p99, subscribers),
        _result(
            "server.memory",
            f"hybridbus RSS per idle connection ({connections:,})",
            "KiB/conn",
            [memory["hybridbus"]],
            peer="server.memory_bare",
            target=20.0,
        ),
        _result(
            "server.memory_bare",
            f"bare aiohttp RSS per idle connection ({connections:,})",
            "KiB/conn",
            [memory["bare"]],
            is_peer=True,
        ),
    ]
    log("  " + ", ".join(f"{r.id} {median(r.runs):.4g}" for r in out))
    return out


def _latency_results(
    p50: dict[tuple[str, int], list[float]],
    p99: dict[tuple[str, int], list[float]],
    subscribers: int,
) -> list[Result]:
    out = []
    for rate in LATENCY_RATES:
        at = f"{rate * subscribers // 1000}k"
        for name, runs in (("p50", p50), ("p99", p99)):
            out.append(
                _result(
                    f"server.latency_{name}_{at}",
                    f"hybridbus publish->deliver {name} at {at} deliveries/s",
                    "ms",
                    runs["hybridbus", rate],
                    peer=f"server.latency_{name}_{at}_bare",
                    target=5.0 if name == "p99" and rate == LATENCY_RATES[-1] else None,
                )
            )
            out.append(
                _result(
                    f"server.latency_{name}_{at}_bare",
                    f"bare aiohttp {name}, same rate (client floor)",
                    "ms",
                    runs["bare", rate],
                    is_peer=True,
                )
            )
    return out


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server")
    sub = parser.add_subparsers(dest="command", required=True)
    peer = sub.add_parser("peer")
    peer.add_argument("kind", choices=["bare", "socketio"])
    peer.add_argument("port", type=int)
    client = sub.add_parser("client")
    client.add_argument("kind")
    client.add_argument("port", type=int)
    client.add_argument("mode")
    client.add_argument("options")
    args = parser.parse_args(argv)
    _raise_nofile()
    if args.command == "peer":
        (_serve_bare if args.kind == "bare" else _serve_socketio)(args.port)
        return
    result = run_async(_client_main(args.kind, args.port, args.mode, json.loads(args.options)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("peer", "client"):
        _main(sys.argv[1:])
    else:
        from benchmarks.run import main

        main(["server"])
