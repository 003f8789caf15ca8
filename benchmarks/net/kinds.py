"""One client adapter per server, speaking only each one's documented wire protocol.

- `Hybridbus`: `hybridbus.v1.json` at `/v1/ws` (docs/protocol.md): connect (anonymous, or
  with an HS256 JWT for `hybridbus-auth`), subscribe (with `since`), publish commands
  coalesced in one frame; answers the heartbeat `{"type":"ping"}` with `{"type":"pong"}`.
- `Centrifugo`: its JSON protocol at `/connection/websocket` (`{"id":1,"connect":{}}`,
  `subscribe` with `recover`/`epoch`/`offset`, client `publish`), server pings `{}`
  answered `{}`; bursts go through its HTTP API `/api/batch` with the API key.
- `Bare`: the bare aiohttp peer (`sub`, `C…`/`M…` frames, `ack`).
- `SocketIO`: raw engine.io v4 / socket.io v5 framing (the `socketio.AsyncClient` costs
  far more per message than the server and would measure itself).
- `Nats`: the raw NATS protocol over a TCP connection.

Every event carries the same data, `{"doc":0,"seq":N,"op":"insert",…,"ts":<send time>}`,
as a CloudEvent (~330 bytes as a hybridbus push). Subscribers never decode JSON: once set
up, a connection's raw reads go to a `Scan`, which counts events by a marker, reads the
`ts` of each for latencies, answers heartbeats and spots errors (`rawws` says why).

With a CA file (`kind_for(..., ca=...)`, the load client's option `"ca"`) every kind but
NATS speaks TLS: `wss://` and `https://`, verifying the server's certificate against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

from benchmarks.net.rawws import RawWs, connect

__all__ = ["MARKER", "Kind", "OnEvents", "Scan", "event_json", "kind_for"]

MARKER: Final = b'"op":"insert"'
_TS: Final = b'"ts":'
_EVENT: Final = (
    '{{"specversion":"1.0","id":"{pid}-{seq:09d}","source":"/bench/publisher",'
    '"type":"com.acme.doc.edited","subject":"doc-0","time":"2025-01-02T03:04:05.678Z",'
    '"data":{{"doc":0,"seq":{seq},"op":"insert","at":42,"text":"hello, world","ts":{ts}}}}}'
)
# The bare / socket.io / NATS payload: a whole hybridbus push line, so every server
# moves the same bytes per event.
_PUSH: Final = (
    '{{"type":"event","pattern":"t","topic":"t","offset":{seq},"shard":0,"position":{seq},'
    '"event":{event}}}'
)
_PID: Final = os.getpid()

# (events counted, their send times or None) for each read of a connection.
OnEvents = Callable[[int, list[float] | None], None]


def event_json(seq: int, ts: float) -> str:
    return _EVENT.format(pid=_PID, seq=seq, ts=repr(ts))


def _straddling(prev: bytes, data: bytes, pattern: bytes) -> int:
    """Occurrences of `pattern` that begin in `prev` and end in `data`."""
    k = len(pattern) - 1
    head = data[:k]
    return (prev[-k:] + head).count(pattern) - head.count(pattern)


class Scan:
    """Reads a connection's raw bytes: events, their `ts`, heartbeats, errors."""

    def __init__(self, kind: Kind, ws: Any, on_events: OnEvents, want_ts: bool) -> None:
        self.kind = kind
        self.ws = ws
        self.on_events = on_events
        self.want_ts = want_ts
        self.prev = b""
        self.rest = b""
        self.error: str | None = None
        self._recovered: list[bool] = []

    @property
    def recovered(self) -> bool:
        """A subscribe reply said `"recovered":true` and none said false."""
        return bool(self._recovered) and all(self._recovered)

    def __call__(self, data: bytes) -> None:
        kind, prev = self.kind, self.prev
        if b'"recovered":' in data:
            self._recovered += [b'"recovered":false' not in data, b'"recovered":true' in data]
        for pattern in kind.error_patterns:
            if pattern in data or _straddling(prev, data, pattern):
                at = max(0, data.find(pattern) - 200)
                self.error = data[at : at + 600].decode(errors="replace")
                self.ws.close()
                return
        ping = kind.ping_pattern
        if ping is not None and (ping in data or _straddling(prev, data, ping)):
            for _ in range(data.count(ping) + _straddling(prev, data, ping)):
                kind.pong(self.ws)
        if self.want_ts:
            buf = self.rest + data
            stamps: list[float] = []
            pos = 0
            find = buf.find
            while (at := find(_TS, pos)) >= 0:
                end = find(b"}", at)
                if end < 0:
                    break
                stamps.append(float(buf[at + 5 : end]))
                pos = end
            self.rest = buf[at:] if at >= 0 else buf[-4:]
            if stamps:
                self.on_events(len(stamps), stamps)
        else:
            n = data.count(kind.count_pattern) + _straddling(prev, data, kind.count_pattern)
            if n:
                self.on_events(n, None)
        self.prev = data[-16:] if len(data) >= 16 else (prev + data)[-16:]


class Kind:
    """The client side of one server: connections, subscriptions, publishing."""

    count_pattern: bytes = MARKER
    ping_pattern: bytes | None = None
    error_patterns: tuple[bytes, ...] = ()
    path = "/"
    subprotocol: str | None = None

    def __init__(self, name: str, port: int, ca: str | None = None) -> None:
        self.name = name
        self.port = port
        # `ca`: the server speaks TLS (wss://, https://) with a certificate that CA signed.
        self.tls = ssl.create_default_context(cafile=ca) if ca else None
        self.http = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
        self.seq = 0
        self.ids = 100
        self.session: Any = None

    async def __aenter__(self) -> Kind:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, ssl=self.tls or True)
        self.session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def channel(self, name: str, history: bool = False) -> str:
        return name

    # -- connections ------------------------------------------------------------------
    async def open(self) -> Any:
        ws = await connect(self.port, self.path, self.subprotocol, self.tls)
        await self.handshake(ws)
        return ws

    async def handshake(self, ws: RawWs) -> None:
        return None

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        """Send a subscribe; without `since`, wait for the reply and return its position."""
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        conn.close()

    def pong(self, ws: Any) -> None:
        return None

    async def receive(self, conn: Any) -> str | None:
        """The next frame's text in set-up mode (answering heartbeats); None when closed."""
        while True:
            data = await conn.recv()
            if data is None or not self.heartbeat(conn, data):
                return data

    def heartbeat(self, conn: Any, data: str) -> bool:
        """Answer a heartbeat in `data`; True when the frame held nothing else."""
        return False

    def failed(self, frame: str) -> bool:
        return any(p.decode() in frame for p in self.error_patterns)

    async def consume(self, conn: Any, on_events: OnEvents, want_ts: bool = False) -> None:
        """Count the events arriving on `conn` until it closes; raise on an error."""
        scan = Scan(self, conn, on_events, want_ts)
        conn.scan(scan)
        await conn.ended
        if scan.error is not None:
            raise RuntimeError(f"{self.name}: {scan.error}")

    # -- publishing -------------------------------------------------------------------
    async def open_publisher(self) -> Any:
        return await self.open()

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        """Publish `count` events; return once the server took them (with its last position)."""
        raise NotImplementedError

    async def publish_one(self, pub: Any, channel: str, ts: float) -> None:
        """Publish one event in a frame of its own, without waiting for its answer."""
        raise NotImplementedError

    async def drain_answers(self, pub: Any) -> None:
        """Read (and check) the answers to `publish_one` until the connection closes."""
        while (data := await self.receive(pub)) is not None:
            if self.failed(data):
                raise RuntimeError(f"{self.name} publish: {data[:300]}")

    def _event(self, ts: float) -> str:
        self.seq += 1
        return event_json(self.seq, ts)


class Hybridbus(Kind):
    ping_pattern = b'{"type":"ping"}'
    error_patterns = (b'"type":"error"', b'"type":"unsubscribed"', b'"type":"disconnect"')
    path = "/v1/ws"
    subprotocol = "hybridbus.v1.json"
    users = 0

    async def handshake(self, ws: RawWs) -> None:
        if self.name == "hybridbus-auth":
            import jwt

            from benchmarks.net.procs import BENCH_SECRET

            self.users += 1
            now = int(time.time())
            claims = {
                "sub": f"user-{_PID}-{self.users}",
                "tenantid": "bench",
                "roles": ["editor"],
                "iat": now,
                "exp": now + 3600,
            }
            token = jwt.encode(claims, BENCH_SECRET, algorithm="HS256")
            ws.send(json.dumps({"type": "connect", "id": 1, "token": token}))
        else:
            ws.send('{"type":"connect","id":1}')
        reply = await ws.recv()
        if reply is None or '"type":"reply"' not in reply:
            raise RuntimeError(f"hybridbus connect: {reply and reply[:300]}")

    def pong(self, ws: Any) -> None:
        ws.send('{"type":"pong"}')

    def heartbeat(self, conn: Any, data: str) -> bool:
        if '{"type":"ping"}' not in data:
            return False
        self.pong(conn)
        return data.strip() == '{"type":"ping"}'

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        command: dict[str, Any] = {"type": "subscribe", "id": self.next_id(), "pattern": channel}
        if since is not None:
            command["since"] = since
        conn.send(json.dumps(command, separators=(",", ":")))
        if since is not None:
            return None
        while True:
            frame = await self.receive(conn)
            if frame is None or self.failed(frame):
                raise RuntimeError(f"hybridbus subscribe: {frame and frame[:300]}")
            for line in frame.split("\n"):
                if line.startswith('{"type":"reply"'):
                    return json.loads(line)["result"]["position"]

    def _command(self, channel: str, ts: float) -> str:
        event = self._event(ts)
        return f'{{"type":"publish","id":{self.next_id()},"topic":"{channel}","event":{event}}}'

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        ts = time.time()
        pub.send("\n".join(self._command(channel, ts) for _ in range(count)))
        replies = 0
        last = ""
        while replies < count:
            frame = await self.receive(pub)
            if frame is None or self.failed(frame):
                raise RuntimeError(f"hybridbus publish: {frame and frame[:300]}")
            replies += frame.count('"type":"reply"')
            last = frame
        tail = last[last.rfind('{"type":"reply"') :].split("\n", 1)[0]
        return json.loads(tail)["result"]["token"]

    async def publish_one(self, pub: Any, channel: str, ts: float) -> None:
        pub.send(self._command(channel, ts))


class Centrifugo(Kind):
    # In this benchmark nothing else sent to a subscriber holds an empty object: every
    # `{}` is a server ping (alone in a frame or coalesced with pushes).
    ping_pattern = b"{}"
    error_patterns = (b'"error":{', b'"disconnect":{', b'"unsubscribe":{')
    path = "/connection/websocket"

    def channel(self, name: str, history: bool = False) -> str:
        return f"hist:{name}" if history else name

    async def handshake(self, ws: RawWs) -> None:
        ws.send('{"id":1,"connect":{"name":"bench"}}')
        reply = await ws.recv()
        if reply is None or '"connect":' not in reply:
            raise RuntimeError(f"centrifugo connect: {reply and reply[:300]}")

    def pong(self, ws: Any) -> None:
        ws.send("{}")

    def heartbeat(self, conn: Any, data: str) -> bool:
        if "{}" not in data:
            return False
        lines = data.split("\n")
        for line in lines:
            if line == "{}":
                self.pong(conn)
        return all(line in ("{}", "") for line in lines)

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        sub: dict[str, Any] = {"channel": channel}
        if since is not None:
            sub.update(recover=True, epoch=since["epoch"], offset=since["offset"])
        ident = self.next_id()
        conn.send(json.dumps({"id": ident, "subscribe": sub}, separators=(",", ":")))
        if since is not None:
            return None
        prefix = f'{{"id":{ident},'
        while True:
            frame = await self.receive(conn)
            if frame is None or self.failed(frame):
                raise RuntimeError(f"centrifugo subscribe: {frame and frame[:300]}")
            for line in frame.split("\n"):
                if line.startswith(prefix):
                    result = json.loads(line)["subscribe"]
                    return {"epoch": result.get("epoch", ""), "offset": result.get("offset", 0)}

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        """Through the HTTP API: one `/api/batch` of `count` publish commands."""
        from benchmarks.net.procs import API_KEY

        ts = time.time()
        commands = ",".join(
            f'{{"publish":{{"channel":"{channel}","data":{self._event(ts)}}}}}'
            for _ in range(count)
        )
        async with self.session.post(
            f"{self.http}/api/batch",
            data='{"commands":[' + commands + "]}",
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        ) as response:
            body = await response.text()
        if response.status != 200 or '"error"' in body:
            raise RuntimeError(f"centrifugo /api/batch: {response.status} {body[:300]}")
        last = json.loads(body)["replies"][-1]["publish"]
        return {"epoch": last.get("epoch", ""), "offset": last.get("offset", 0)}

    async def publish_one(self, pub: Any, channel: str, ts: float) -> None:
        """A client publish over its WebSocket (allowed by `client.insecure`)."""
        event = self._event(ts)
        pub.send(f'{{"id":{self.next_id()},"publish":{{"channel":"{channel}","data":{event}}}}}')


class Bare(Kind):
    path = "/ws"

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        conn.send("sub")
        if await conn.recv() != "ok":
            raise RuntimeError("bare subscribe")
        return None

    def _lines(self, count: int, ts: float) -> str:
        return "\n".join(_PUSH.format(seq=self.seq, event=self._event(ts)) for _ in range(count))

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        prefix = "M" if channel == "per-message" else "C"
        pub.send(prefix + self._lines(count, time.time()))
        while (answer := await pub.recv()) != "ack":
            if answer is None:
                raise RuntimeError("bare publish: closed")

    async def publish_one(self, pub: Any, channel: str, ts: float) -> None:
        pub.send("M" + self._lines(1, ts))


class SocketIO(Kind):
    count_pattern = b'["event",'
    ping_pattern = b"\x81\x012"  # an engine.io ping: a text frame "2"
    path = "/socket.io/?EIO=4&transport=websocket"

    async def handshake(self, ws: RawWs) -> None:
        opened = await ws.recv()
        if not (opened or "").startswith("0"):
            raise RuntimeError("engine.io open")
        ws.send("40")
        if not (await ws.recv() or "").startswith("40"):
            raise RuntimeError("socket.io connect")

    def pong(self, ws: Any) -> None:
        ws.send("3")

    def heartbeat(self, conn: Any, data: str) -> bool:
        if data != "2":
            return False
        self.pong(conn)
        return True

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        conn.send('421["sub"]')
        if not (await self.receive(conn) or "").startswith("431"):
            raise RuntimeError("socket.io sub")
        return None

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        ts = time.time()
        lines = [_PUSH.format(seq=self.seq, event=self._event(ts)) for _ in range(count)]
        pub.send("421" + json.dumps(["pub", lines]))
        while not (await self.receive(pub) or "431").startswith("431"):
            pass


class _NatsConn(asyncio.Protocol):
    """A raw NATS connection with the same surface as `RawWs` (recv lines, scan, send)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self._buf = b""
        self._scanner: Callable[[bytes], None] | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._scanner is not None:
            if b"PING\r\n" in data:
                self.write(b"PONG\r\n")
            self._scanner(data)
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\r\n")
        for line in lines:
            if line == b"PING":
                self.write(b"PONG\r\n")
            elif line.startswith((b"-ERR", b"PONG", b"INFO", b"+OK")):
                self.lines.put_nowait(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def until(self, prefix: bytes) -> None:
        while not (line := await asyncio.wait_for(self.lines.get(), 60)).startswith(prefix):
            if line.startswith(b"-ERR"):
                raise RuntimeError(f"nats: {line!r}")

    def scan(self, scanner: Callable[[bytes], None]) -> None:
        self._scanner = scanner
        if self._buf:
            scanner(self._buf)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.ended.done():
            self.ended.set_result(None)
        self.lines.put_nowait(b"-ERR closed")


class Nats(Kind):
    """Raw NATS: one connection and one `SUB` per subscriber; `PUB` bursts then `PING`."""

    error_patterns = (b"-ERR",)

    async def __aenter__(self) -> Kind:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def open(self) -> Any:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_NatsConn, "127.0.0.1", self.port)
        await conn.until(b"INFO")
        conn.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await conn.until(b"PONG")
        return conn

    async def subscribe(self, conn: Any, channel: str, since: Any = None) -> Any:
        conn.write(f"SUB {channel} 1\r\nPING\r\n".encode())
        await conn.until(b"PONG")
        return None

    async def drain_answers(self, pub: Any) -> None:
        await pub.until(b"-ERR")  # only an error (or the close) ends it
        raise RuntimeError("nats publisher: error or closed")

    def _pub(self, channel: str, ts: float) -> bytes:
        payload = _PUSH.format(seq=self.seq + 1, event=self._event(ts)).encode()
        return b"PUB %s %d\r\n%s\r\n" % (channel.encode(), len(payload), payload)

    async def publish_burst(self, pub: Any, count: int, channel: str = "t") -> Any:
        ts = time.time()
        pub.write(b"".join(self._pub(channel, ts) for _ in range(count)) + b"PING\r\n")
        await pub.until(b"PONG")

    async def publish_one(self, pub: Any, channel: str, ts: float) -> None:
        pub.write(self._pub(channel, ts))


def kind_for(name: str, port: int, ca: str | None = None) -> Kind:
    """The client of server `name` on `port`; with `ca`, over TLS trusting that CA file."""
    if name.startswith("hybridbus"):
        return Hybridbus(name, port, ca)
    classes: dict[str, type[Kind]] = {
        "centrifugo": Centrifugo,
        "bare": Bare,
        "socketio": SocketIO,
        "nats": Nats,
    }
    return classes[name](name, port, ca)
