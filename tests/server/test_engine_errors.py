"""A server whose engine fails says so in its log, once per failure, with the cause.

Before the data directory was locked, a second process writing it made every
publish of the server fail with "UNIQUE constraint failed: log.position",
and the server logged nothing. The same failure is made here by writing the
next position behind the server's back.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest
from tests.servers import WsClient, event, running_server


async def test_an_engine_error_on_publish_is_logged_once_with_its_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        running_server(engine=f"sqlite://{tmp_path}") as server,
        WsClient.open(server.url) as client,
    ):
        ack = await client.request("publish", topic="docs/1", event=event(id="first"))
        assert ack["result"]["offset"] == 1
        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute("INSERT INTO log VALUES (2, 'x', 1, 0, NULL, x'80', '/rogue', 'r')")
            conn.commit()
        refused = await client.request("publish", topic="docs/1", event=event(id="second"))
        assert (refused["type"], refused["code"], refused["retriable"]) == ("error", 1301, True)
        # The peer learns that the log cannot serve, not the engine's SQL: that stays in the log.
        assert "UNIQUE" not in refused["message"], refused
        assert "log" in refused["message"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "UNIQUE constraint failed: log.position" in errors[0]
