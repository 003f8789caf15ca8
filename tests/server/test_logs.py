"""Structured logs: one JSON object per line with the `extra` fields, no credential in any."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest
from tests.logscan import Logs, server_logs
from tests.servers import running_server

from hybridbus.server.logs import JsonFormatter, RedactCredentials, configure_logging, redact


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    record = logging.LogRecord("hybridbus.x", logging.WARNING, __file__, 1, "hi %s", ("you",), None)
    record.port = 8080
    record.addresses = [["127.0.0.1", 8080]]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "hi you"
    assert (data["level"], data["logger"]) == ("warning", "hybridbus.x")
    assert data["port"] == 8080 and data["addresses"] == [["127.0.0.1", 8080]]
    assert data["time"].endswith("+00:00")


def test_exceptions_are_kept_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exception"]


def test_configure_logging_refuses_unknown_settings() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(ValueError, match="log_level"):
            configure_logging("loud", "json")
        with pytest.raises(ValueError, match="log_format"):
            configure_logging("info", "xml")
        assert root.handlers == handlers  # nothing was changed
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# -- credentials never reach a log line ----------------------------------------------------

API_KEY = "hb_" + "k3y" * 15  # the shape `hybridbus.server.access.new_api_key` makes
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsInRlbmFudGlkIjoiYWNtZSJ9"
    ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1pbi10aGlzLXRlc3Q"
)


async def send_raw(port: int, request: bytes) -> bytes:
    """Send `request` on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def logged(logs: Logs, logger: str, count: int) -> list[str]:
    """The lines of `logger`, once there are `count`."""
    async with asyncio.timeout(10):
        while len(lines := [line for line in logs.lines if f'"logger":"{logger}"' in line]) < count:
            await asyncio.sleep(0.01)
    return lines


async def test_an_api_key_in_an_over_long_request_line_is_not_logged() -> None:
    padding = "x" * 9000  # past aiohttp's 8,190-byte request line: a 400 that logs the line
    async with running_server() as server:
        with server_logs() as logs:
            for name in ("token", "key", "api_key"):
                request = f"GET /v1/topics?{name}={API_KEY}&pad={padding} HTTP/1.1\r\n\r\n"
                answer = await send_raw(server.port, request.encode())
                assert answer.split(b" ", 2)[1] == b"400", answer[:100]
            lines = await logged(logs, "aiohttp.server", 3)
            for name in ("token", "key", "api_key"):
                assert any(f"?{name}=[redacted]&pad=" in line for line in lines), lines
    assert logs.leaks([API_KEY]) == []


async def test_an_over_long_authorization_or_api_key_header_is_not_logged() -> None:
    padding = "A" * 9000  # past aiohttp's 8,190-byte header field: a 400 that logs its start
    async with running_server() as server:
        with server_logs() as logs:
            for header in (
                f"Authorization: Bearer {JWT}{padding}",
                f"X-Api-Key: {API_KEY}{padding}",
            ):
                request = f"GET /v1/topics HTTP/1.1\r\nHost: test\r\n{header}\r\n\r\n"
                answer = await send_raw(server.port, request.encode())
                assert answer.split(b" ", 2)[1] == b"400", answer[:100]
            lines = await logged(logs, "aiohttp.server", 2)
            assert all("LineTooLong" in line for line in lines), lines
    assert logs.leaks([API_KEY, JWT, JWT.split(".")[1]]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /v1/topics?token=abc&x=1", "GET /v1/topics?token=[redacted]&x=1"),
        ("/sse?pattern=a&KEY=abc def", "/sse?pattern=a&KEY=[redacted] def"),
        ("b'/v1?api_key=hb_x\\r\\n'", "b'/v1?api_key=[redacted]\\r\\n'"),
        ("Authorization: Bearer abc.def\r\nHost: x", "Authorization: [redacted]\r\nHost: x"),
        ("{'X-Api-Key': 'k', 'Host': 'x'}", "{'X-Api-Key': '[redacted]', 'Host': 'x'}"),
        ("b'Bearer " + JWT + "AAA...'", "b'Bearer [redacted]'"),
        ("b'Basic dXNlcjpwYXNz'", "b'Basic [redacted]'"),
        ("token " + JWT + " refused", "token [redacted] refused"),
        ("b'" + API_KEY + "AAAA...'", "b'hb_[redacted]...'"),
        ('{"type":"connect","token":"alice:60"}', '{"type":"connect","token":"[redacted]"}'),
        ("sqlite:///data redis://bus:pa55@host/0", "sqlite:///data redis://bus:[redacted]@host/0"),
        ("a topic acme/docs/tokens?key, keys=3", "a topic acme/docs/tokens?key, keys=3"),
    ],
)
def test_redact_hides_credentials_and_nothing_else(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


def test_the_filter_redacts_message_args_extra_fields_and_exceptions() -> None:
    try:
        raise ValueError(f"bad header: b'Bearer {JWT}'")
    except ValueError:
        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "GET %s",
            (f"/v1?token={API_KEY}",),
            sys.exc_info(),
        )
    record.url = f"/v1?key={API_KEY}"
    record.headers = {"Authorization": f"Bearer {JWT}", "Host": "x"}
    record.seen = [f"api_key={API_KEY}", 3]
    assert RedactCredentials().filter(record)
    for formatter in (JsonFormatter(), logging.Formatter("%(message)s %(url)s %(headers)s")):
        line = formatter.format(record)
        assert API_KEY[:20] not in line and JWT[:20] not in line, line
        assert "[redacted]" in line
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "GET /v1?token=[redacted]"
    assert data["headers"] == {"Authorization": "[redacted]", "Host": "x"}
    assert data["seen"] == ["api_key=hb_[redacted]", 3]
    assert "ValueError: bad header: b'Bearer [redacted]'" in data["exception"]


def test_the_log_scan_finds_a_secret_that_was_logged() -> None:
    """The scan `tests/gateways/test_security.py` runs on its logs can fail."""
    with server_logs() as logs:
        logging.getLogger("hybridbus.test").warning("the secret is %s", "an-unshaped-secret-01234")
    assert len(logs.leaks(["an-unshaped-secret-01234-and-more"])) == 1
    assert logs.leaks(["something-never-logged"]) == []


# -- the text format (log_format = "text") -------------------------------------------


def text_line(record: logging.LogRecord) -> str:
    """`record` as the handler of `configure_logging(format="text")` writes it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("info", "text")
        return root.handlers[0].format(record)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_text_line_ends_with_the_extra_fields_as_key_value_pairs() -> None:
    record = logging.LogRecord("hybridbus.serve", logging.INFO, __file__, 1, "listening", (), None)
    record.addresses = [["127.0.0.1", 40123]]
    record.engine = "sqlite://./hybridbus-data"
    record.pid = 42
    record.note = 'two "words"'
    line = text_line(record)
    assert "\n" not in line
    assert line.endswith(
        ' INFO hybridbus.serve: listening addresses=[["127.0.0.1",40123]]'
        ' engine=sqlite://./hybridbus-data pid=42 note="two \\"words\\""'
    ), line


def test_a_text_line_keeps_the_traceback_after_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    record.topic = "acme/a"
    first, *rest = text_line(record).splitlines()
    assert first.endswith("x: failed topic=acme/a"), first
    assert rest[-1] == "ValueError: boom"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_with_text_logs_port_0_is_found_in_the_listening_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDBUS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hybridbus", "serve", "--port", "0", "--engine", "memory://",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "HYBRIDBUS_LOG_FORMAT": "text"},
        cwd=tmp_path,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b": listening " not in (line := await process.stderr.readline()):
                assert line, "the server exited without a listening line"
        found = re.search(rb'addresses=\[\["127\.0\.0\.1",(\d+)\]\]', line)
        assert found, line
        reader, writer = await asyncio.open_connection("127.0.0.1", int(found[1]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
    finally:
        process.terminate()
        await process.wait()
