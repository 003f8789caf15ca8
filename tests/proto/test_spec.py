"""docs/protocol.md stays true: its example session, byte examples and tables match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridbus.errors import ErrorCode
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
