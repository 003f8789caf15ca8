"""docs/protocol.md stays true: its examples, byte examples and tables match the code.

Every example of the page goes through the real codecs: each JSON line of a
code block (an event, or a message — and the same message as MessagePack),
the example session, the hex dumps of frames and of the MessagePack event, and
every inline `{"type":…}` that is not a shape (`string`, `int`… in place of values).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hybridbus.core.codecs import decode_json, decode_msgpack, encode_json, encode_msgpack
from hybridbus.core.event import Event
from hybridbus.errors import ErrorCode, InvalidEvent, ProtocolError
from hybridbus.proto.client import (
    ClientEvent,
    ClientSession,
    Failed,
    HistoryPage,
    Received,
    Replied,
)
from hybridbus.proto.codec import JSON, MSGPACK
from hybridbus.proto.codes import CloseCode, reconnect_allowed, retriable
from hybridbus.proto.frames import (
    ClientMessage,
    Connect,
    ConnectResult,
    History,
    Ping,
    PingResult,
    Pong,
    Publish,
    ServerPing,
    Subscribe,
    Unsubscribe,
)
from hybridbus.proto.session import ServerSession, State

SPEC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()


def example_frames() -> list[tuple[str, bytes]]:
    """The example session's frames: ("C→S" or "S→C", the frame's bytes)."""
    block = SPEC.split("## 12. A full example session (JSON)", 1)[1]
    block = block.split("```text\n", 1)[1].split("```", 1)[0]
    frames: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(("C→S  ", "S→C  ")):
            frames.append((line[:3], [line[5:]]))
        else:
            assert line.startswith("     "), line
            frames[-1][1].append(line[5:])
    return [(way, "\n".join(lines).encode()) for way, lines in frames]


def test_the_example_session_is_made_of_exact_frames() -> None:
    frames = example_frames()
    assert len(frames) >= 15
    for way, data in frames:
        if way == "C→S":
            messages = [JSON.encode(m) for m in JSON.decode_commands(data)]
        else:
            messages = [JSON.encode(m) for m in JSON.decode_server(data)]
        assert JSON.frame(messages) == data


def issue(client: ClientSession, command: ClientMessage) -> None:
    """Make `client` send `command` through its API (a pong it sends on its own)."""
    if isinstance(command, Connect):
        client.connect(
            token=command.token, name=command.name, version=command.version, device=command.device
        )
    elif isinstance(command, Subscribe):
        client.subscribe(command.pattern, since=command.since)
    elif isinstance(command, Unsubscribe):
        client.unsubscribe(command.pattern)
    elif isinstance(command, Publish):
        event = JSON.decode_event(command.event)
        client.publish(command.topic, event, exclude_self=command.exclude_self)
    elif isinstance(command, History):
        client.history(command.pattern, since=command.since, limit=command.limit)
    elif isinstance(command, Ping):
        client.ping()
    else:
        assert isinstance(command, Pong)


def test_the_example_session_is_what_the_sessions_say() -> None:
    """The ClientSession sends exactly the example's client frames, the ServerSession takes
    them in that order, and the ClientSession makes sense of the server's frames."""
    client = ClientSession(JSON, now=0.0)
    server = ServerSession(JSON, now=0.0)
    seen: list[ClientEvent] = []
    for way, data in example_frames():
        if way == "C→S":
            commands = JSON.decode_commands(data)
            for command in commands:
                issue(client, command)
            assert client.data_to_send() == data
            handed_out = server.receive_data(data, 1.0)
            assert handed_out == [c for c in commands if not isinstance(c, Pong)]
            if server.state is State.CONNECTING:
                server.accept(ConnectResult(client="c-5f2a", version="0.1.0", tenant="acme"))
            assert not server.closed
        else:
            seen.extend(client.receive_data(data, 1.0))
    received = [e for e in seen if isinstance(e, Received)]
    assert [(r.topic, r.position, str(r.token)) for r in received] == [
        ("docs/42", 41, "Hk2x-41"),
        ("docs/7", 43, "Hk2x-43"),
    ]
    failed = [e for e in seen if isinstance(e, Failed)]
    assert [(f.id, f.code) for f in failed] == [(5, ErrorCode.INVALID_PATTERN)]
    pages = [e.result for e in seen if isinstance(e, Replied) and isinstance(e.result, HistoryPage)]
    assert [[i.offset for i in p.events] for p in pages] == [[16, 17]]
    assert client.in_flight == {}
    assert client.closed
    assert client.close_code == CloseCode.SHUTDOWN


def test_the_byte_examples() -> None:
    json_frame = JSON.frame([JSON.encode(Pong()), JSON.encode(Ping(id=6))])
    assert json_frame.hex(" ") in " ".join(
        SPEC.split("A client frame with a `pong` and a `ping` command", 1)[1]
        .split("```")[1]
        .split()
    )
    assert MSGPACK.frame([MSGPACK.encode(Ping(id=6))]).hex(" ") == (
        "91 82 a4 74 79 70 65 a4 70 69 6e 67 a2 69 64 06"
    )
    both = MSGPACK.frame([MSGPACK.encode_reply(6, PingResult()), MSGPACK.encode(ServerPing())])
    assert " ".join(both.hex(" ").split()) in " ".join(SPEC.split())


def table_rows(heading: str) -> dict[str, list[str]]:
    """Rows of the first table after `heading`, keyed by their first cell."""
    section = SPEC.split(heading, 1)[1]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| code") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
        elif rows and not line.startswith("|"):
            break
    return rows


def test_every_error_code_is_in_the_table_with_its_retriable_flag() -> None:
    rows = table_rows("## 10. Error codes")
    for code in ErrorCode:
        row = rows[str(int(code))]
        assert row[1] == f"`{code.name}`"
        if row[2] in ("yes", "no"):
            assert (row[2] == "yes") == retriable(code), code
    assert set(rows) == {str(int(c)) for c in ErrorCode}


def test_every_close_code_is_in_the_table_with_its_reconnect_rule() -> None:
    rows = table_rows("## 11. Close codes")
    for code in CloseCode:
        if code is CloseCode.NORMAL:
            assert rows["1000"][2] == "no"
            continue
        row = rows[str(int(code))]
        assert row[1] == f"`{code.name}`"
        assert (row[2] == "yes") == reconnect_allowed(code), code
    for standard in ("1001", "1006", "1011", "1012", "1013"):
        assert reconnect_allowed(int(standard))
    assert not reconnect_allowed(1000)


@pytest.mark.parametrize("name", ["ServerSession", "ClientSession", "encode_push", "data_to_send"])
def test_the_spec_names_the_api(name: str) -> None:
    assert name in SPEC


# Every example of the page, through the real codecs -------------------------------------

# Words that mark an inline `{"type":…}` as a shape (field: type), not an example to run.
SHAPE_WORDS = ("string", "int", "bool", "float", "ClientInfo", "…")


def code_blocks() -> list[tuple[str, str, str]]:
    """(section heading, language, text) of every fenced code block, dedented."""
    blocks: list[tuple[str, str, str]] = []
    heading = ""
    lines = iter(SPEC.splitlines())
    for line in lines:
        if line.startswith("#"):
            heading = line
        fence = line.lstrip()
        if not fence.startswith("```"):
            continue
        indent = len(line) - len(fence)
        body = []
        for inner in lines:
            if inner.strip() == "```":
                break
            body.append(inner[indent:])
        blocks.append((heading, fence[3:].strip(), "\n".join(body)))
    return blocks


def hex_bytes(text: str) -> bytes:
    """The bytes of a hex dump: each line's leading two-digit hex tokens (then the comment)."""
    out = bytearray()
    for line in text.splitlines():
        for token in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            out.append(int(token, 16))
    return bytes(out)


def events_in(value: object) -> list[dict[str, Any]]:
    """Every CloudEvent (an object with `specversion`) inside a decoded JSON value."""
    if isinstance(value, dict):
        if "specversion" in value:
            return [value]
        return [e for v in value.values() for e in events_in(v)]
    if isinstance(value, list):
        return [e for v in value for e in events_in(v)]
    return []


def check_event(raw: dict[str, Any]) -> Event:
    """A documented JSON event: decoded, re-encoded to itself, the same in MessagePack."""
    text = json.dumps(raw, separators=(",", ":"))
    event = decode_json(text.encode())
    assert json.loads(encode_json(event)) == raw
    assert decode_msgpack(encode_msgpack(event)) == event
    # §3.3: a MessagePack map with the JSON attribute names is the same event.
    assert decode_msgpack(msgspec.msgpack.encode(raw)) == event
    return event


def check_message(line: str) -> None:
    """A documented JSON message: a command or a server message, re-encoded to itself, and
    the same message in MessagePack."""
    raw = json.loads(line)
    for event in events_in(raw):
        check_event(event)
    data = line.encode()
    try:
        decoded: list[Any] = list(JSON.decode_commands(data))
        packed: list[Any] = list(MSGPACK.decode_commands(msgspec.msgpack.encode([raw])))
    except ProtocolError:
        decoded = list(JSON.decode_server(data))
        packed = list(MSGPACK.decode_server(msgspec.msgpack.encode([raw])))
    assert len(decoded) == len(packed) == 1
    assert json.loads(JSON.encode(decoded[0])) == raw
    assert type(packed[0]) is type(decoded[0])


def test_every_example_of_the_page_goes_through_the_codecs() -> None:
    checked = {"json": 0, "session": 0, "json frame": 0, "msgpack frame": 0, "msgpack event": 0}
    json_events: dict[str, list[Event]] = {}
    for heading, language, text in code_blocks():
        if language == "json":
            for line in filter(str.strip, text.splitlines()):
                raw = json.loads(line)  # a placeholder such as {…} fails here
                if "specversion" in raw:
                    json_events.setdefault(heading, []).append(check_event(raw))
                else:
                    check_message(line)
                checked["json"] += 1
        elif language == "python":
            continue  # code, not frames: run by the documentation's own test
        elif "C→S" in text:
            for _, frame in example_frames():
                for line in frame.decode().split("\n"):
                    check_message(line)
            checked["session"] += 1
        else:
            assert language == "text", (heading, language)
            data = hex_bytes(text)
            assert data, f"a text block of {heading!r} that is neither a session nor a hex dump"
            if data.startswith(b"{"):
                # A JSON frame: its first line shows it with \n for the newline.
                shown = text.splitlines()[0].replace("\\n", "\n").encode()
                assert data == shown
                for line in data.decode().split("\n"):
                    check_message(line)
                checked["json frame"] += 1
            elif data[0] in (0x90, 0xDC, 0xDD) or 0x91 <= data[0] <= 0x9F:
                try:
                    messages: list[Any] = list(MSGPACK.decode_commands(data))
                except ProtocolError:
                    messages = list(MSGPACK.decode_server(data))
                assert MSGPACK.frame([MSGPACK.encode(m) for m in messages]) == data
                checked["msgpack frame"] += 1
            else:
                # A MessagePack event, as a server sends it: the JSON example of its section.
                event = decode_msgpack(data)
                assert encode_msgpack(event) == data
                assert event in json_events[heading], heading
                flat = msgspec.msgpack.decode(data)
                flat.update(flat.pop("x-extensions", {}))
                assert decode_msgpack(msgspec.msgpack.encode(flat)) == event
                checked["msgpack event"] += 1
    assert checked["json"] >= 3 and checked["session"] == 1, checked
    assert checked["json frame"] >= 1 and checked["msgpack frame"] >= 2, checked
    assert checked["msgpack event"] >= 1, checked


def test_every_inline_message_is_an_example_or_a_shape() -> None:
    inline = re.findall(r"`(\{\"type\":[^`]*\})`", SPEC)
    assert len(inline) >= 8
    for text in inline:
        try:
            json.loads(text)
        except ValueError:
            assert any(word in text for word in SHAPE_WORDS), text
            continue
        check_message(text)


def test_the_msgpack_event_example_follows_section_3_3() -> None:
    """What §3.3 says of MessagePack events is what the codec does."""
    base = {"id": "1", "source": "/s", "type": "t"}
    for refused in (
        {**base, "x-extensions": {"tenantid": "acme"}},  # own extensions are top-level keys
        {**base, "sequence": 7},  # a string
        {**base, "data_base64": "aGk="},  # MessagePack has bin instead
        {**base, "a": "x", "x-extensions": {"a": "y"}},  # one name, one place
    ):
        with pytest.raises(InvalidEvent):
            decode_msgpack(msgspec.msgpack.encode(refused))
    when = "2026-11-23T11:02:07Z"
    as_text = decode_msgpack(msgspec.msgpack.encode({**base, "time": when}))
    as_stamp = decode_msgpack(msgspec.msgpack.encode({**base, "time": as_text.time}))
    assert as_text == as_stamp
    assert decode_msgpack(msgspec.msgpack.encode({**base, "data": b"\x00"})).data == b"\x00"
