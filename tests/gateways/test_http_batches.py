"""An HTTP batch is appended in one engine call: all of it, or — the engine failing — none.

The real server on sqlite; the engine failure is a real one (a trigger that
aborts the insert of one event of the batch).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import httpx
import pytest
from tests.server.test_publish_batches import Calls
from tests.servers import event, running_server

from hybridbus.core.codecs import JSON_BATCH_CONTENT_TYPE

pytestmark = pytest.mark.timeout(30)
BATCH = {"content-type": JSON_BATCH_CONTENT_TYPE}


async def test_a_batch_is_one_append_and_all_or_nothing(tmp_path: Path) -> None:
    async with (
        running_server(engine=f"sqlite://{tmp_path}") as server,
        httpx.AsyncClient(base_url=server.http, timeout=10.0) as http,
    ):
        calls = Calls(server.node.bus.engine)
        url = "/v1/topics/acme/docs/1/events"
        batch = [event(id=f"ok-{n}") for n in range(10)]
        response = await http.post(url, json=batch, headers=BATCH)
        assert response.status_code == 201, response.text
        acks = response.json()["acks"]
        assert [a["offset"] for a in acks] == list(range(1, 11))
        assert calls.batches == [10] and calls.single == 0

        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.id LIKE 'bad%' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        mixed = [event(id=f"next-{n}") for n in range(10)]
        mixed[7] = event(id="bad")
        response = await http.post(url, json=mixed, headers=BATCH)
        assert response.status_code == 503, response.text
        page = (await http.get(url, params={"limit": 100})).json()
        assert [e["offset"] for e in page["events"]] == list(range(1, 11))  # none of it

        with contextlib.closing(sqlite3.connect(tmp_path / "hybridbus.db")) as conn:
            conn.execute("DROP TRIGGER boom")
        response = await http.post(url, json=mixed, headers=BATCH)
        assert response.status_code == 201, response.text
        assert [a["offset"] for a in response.json()["acks"]] == list(range(11, 21))
