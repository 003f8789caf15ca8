"""Log lines over HTTP: `POST /v1/logs/{service}/{instance}` (gateways/logs_http.py).

Against the real application on a loopback port (`tests.servers.running_server`),
with httpx as the client and the log topic read back over the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.logs.support import history
from tests.servers import Server, running_server

from hybridbus.errors import ErrorCode
from hybridbus.server.access import new_api_key

NDJSON = {"content-type": "application/x-ndjson"}
PLAIN = {"content-type": "text/plain; charset=utf-8"}
TOPIC = "acme/logs/api/i1"
PATH = "/v1/logs/api/i1"


def ndjson(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@contextlib.asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    async with (
        running_server(**settings) as server,
        httpx.AsyncClient(base_url=server.http, timeout=30.0) as client,
    ):
        yield server, client


async def test_each_line_is_a_log_event_appended_in_line_order() -> None:
    async with served() as (server, client):
        body = ndjson(
            {"msg": "started", "level": "info", "port": 8080},
            {"message": "slow call", "level": "WARNING", "logger": "db", "ms": 812},
            {"message": "failed", "severity": "error", "trace_id": "a" * 32, "span_id": "b" * 16},
        )
        response = await client.post(PATH, content=body, headers=NDJSON)
        assert response.status_code == 201, response.text
        answer = response.json()
        assert (answer["accepted"], answer["duplicates"], answer["first"], answer["last"]) == (
            3,
            0,
            1,
            3,
        )
        events = await history(server, TOPIC)
        assert [e["type"] for e in events] == ["log"] * 3
        assert [e["data"]["message"] for e in events] == ["started", "slow call", "failed"]
        assert [e["data"].get("level", "info") for e in events] == ["info", "warn", "error"]
        assert events[0]["data"]["fields"] == {"port": 8080}
        assert events[1]["data"]["logger"] == "db"
        assert events[2]["traceparent"] == f"00-{'a' * 32}-{'b' * 16}-00"
        assert {e["source"] for e in events} == {"/logs/api/i1"}
        # The answer's token resumes right after the last line.
        after = await client.get("/v1/events", params={"pattern": TOPIC, "since": answer["token"]})
        assert after.json()["events"] == []


async def test_text_plain_takes_a_line_per_record_with_a_leading_level() -> None:
    async with served() as (server, client):
        body = b"ERROR: disk full\r\n\n[warn] retrying\nplain words\n{\"msg\": \"json too\"}"
        response = await client.post(PATH, content=body, headers=PLAIN)
        assert response.status_code == 201, response.text
        assert response.json()["accepted"] == 4  # the empty line is skipped
        events = await history(server, TOPIC)
        assert [(e["data"]["message"], e["data"].get("level", "info")) for e in events] == [
            ("disk full", "error"),
            ("retrying", "warn"),
            ("plain words", "info"),
            ("json too", "info"),
        ]


async def test_a_bad_line_is_named_and_nothing_from_it_on_is_appended() -> None:
    async with served() as (server, client):
        body = ndjson({"msg": "one"}, {"msg": "two"}) + b"not json\n" + ndjson({"msg": "four"})
        response = await client.post(PATH, content=body, headers=NDJSON)
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["code"] == ErrorCode.INVALID_INPUT
        assert (problem["line"], problem["accepted"], problem["last"]) == (3, 2, 2)
        assert "line 3" in problem["detail"]
        assert [e["data"]["message"] for e in await history(server, TOPIC)] == ["one", "two"]
        not_utf8 = await client.post(PATH, content=b'{"msg": "\xff"}\n', headers=NDJSON)
        assert (not_utf8.status_code, not_utf8.json()["line"]) == (400, 1)
        assert not_utf8.json()["accepted"] == 0


async def test_a_line_over_the_event_size_is_413_without_reading_on() -> None:
    async with served() as (server, client):
        big = json.dumps({"msg": "x" * (2 << 20)}).encode()
        body = ndjson({"msg": "small"}) + big + b"\n" + ndjson({"msg": "after"})
        response = await client.post(PATH, content=body, headers=NDJSON)
        assert response.status_code == 413, response.text
        problem = response.json()
        assert (problem["code"], problem["line"], problem["accepted"]) == (1004, 2, 1)
        assert [e["data"]["message"] for e in await history(server, TOPIC)] == ["small"]


async def test_a_retried_body_with_its_idempotency_key_lands_once() -> None:
    async with served() as (server, client):
        body = ndjson(*({"msg": f"line {n}"} for n in range(5)))
        headers = {**NDJSON, "Idempotency-Key": "upload-7"}
        first = await client.post(PATH, content=body, headers=headers)
        assert first.status_code == 201, first.text
        again = await client.post(PATH, content=body, headers=headers)
        assert again.status_code == 200, again.text  # every line a duplicate
        assert (again.json()["accepted"], again.json()["duplicates"]) == (5, 5)
        assert again.json()["last"] == first.json()["last"]  # the originals' places
        events = await history(server, TOPIC)
        assert [e["id"] for e in events] == [f"upload-7:{n}" for n in range(1, 6)]
        # Without the key, the same body is new lines.
        plain = await client.post(PATH, content=body, headers=NDJSON)
        assert (plain.status_code, plain.json()["first"]) == (201, 6)
        bad = await client.post(PATH, content=body, headers={**NDJSON, "Idempotency-Key": ""})
        assert (bad.status_code, bad.json()["parameter"]) == (400, "Idempotency-Key")


async def test_a_long_body_is_appended_in_batches_as_it_arrives() -> None:
    # 1,500 lines: the first 1,000 are appended while the body is still being sent.
    async with served() as (server, client):
        appended = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield ndjson(*({"msg": f"line {n}"} for n in range(1000)))
            async with asyncio.timeout(20):
                while len(await history(server, TOPIC)) < 1000:
                    await asyncio.sleep(0.05)
            appended.set()
            yield ndjson(*({"msg": f"line {n}"} for n in range(1000, 1500)))

        response = await client.post(PATH, content=body(), headers=NDJSON)
        assert response.status_code == 201, response.text
        assert appended.is_set()
        assert (response.json()["accepted"], response.json()["last"]) == (1500, 1500)
        events = await history(server, TOPIC)
        assert [e["data"]["message"] for e in events] == [f"line {n}" for n in range(1500)]


async def test_the_publish_rules_tenant_and_rate_apply() -> None:
    admin_key, admin_hash = new_api_key()
    settings: dict[str, Any] = {
        "anonymous_tenant": "acme",
        "roles": {"anonymous": [{"allow": "publish", "topics": "logs/api/#"}]},
        "api_keys": [{"name": "ops", "hash": admin_hash, "admin": True}],
        "publish_rate": 2.0,
        "publish_burst": 2.0,
    }
    async with served(**settings) as (server, client):
        denied = await client.post("/v1/logs/web/i1", content=ndjson({"m": 1}), headers=NDJSON)
        assert (denied.status_code, denied.json()["code"]) == (403, ErrorCode.FORBIDDEN)
        other = await client.post(
            f"{PATH}?tenant=other", content=ndjson({"m": 1}), headers=NDJSON
        )
        assert other.status_code == 403, other.text
        # Over the rate: the first batch (2 lines) is charged and appended, then 429.
        body = ndjson({"msg": "a"}, {"msg": "b"})
        assert (await client.post(PATH, content=body, headers=NDJSON)).status_code == 201
        limited = await client.post(PATH, content=body, headers=NDJSON)
        assert limited.status_code == 429, limited.text
        assert (limited.json()["line"], limited.json()["accepted"]) == (1, 0)
        assert "Retry-After" in limited.headers
        # An admin has no tenant of its own: it names one.
        admin = {**NDJSON, "Authorization": f"Bearer {admin_key}"}
        unnamed = await client.post(PATH, content=body, headers=admin)
        assert (unnamed.status_code, unnamed.json()["parameter"]) == (400, "tenant")
        named = await client.post("/v1/logs/db/x?tenant=beta", content=body, headers=admin)
        assert named.status_code == 201, named.text
        assert len((await server.node.bus.history("beta/logs/db/x")).deliveries) == 2


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (PATH, {"content-type": "application/json"}, 415),
        ("/v1/logs/a+b/i1", NDJSON, 400),  # not one topic segment
    ],
)
async def test_bad_requests_are_refused_before_anything(
    path: str, headers: dict[str, str], status: int
) -> None:
    async with served() as (server, client):
        response = await client.post(path, content=ndjson({"msg": "x"}), headers=headers)
        assert response.status_code == status, response.text
        assert await history(server, TOPIC) == []


async def test_a_body_slower_than_the_body_timeout_is_408_after_the_lines_before() -> None:
    async with served(body_timeout=0.5) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            sent = ndjson({"msg": "one"}, {"msg": "two"}) + b'{"msg": "thr'
            head = (
                f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                f"Content-Length: {len(sent) + 100}\r\n\r\n"
            )
            writer.write(head.encode() + sent)
            await writer.drain()
            async with asyncio.timeout(10):
                answer = (await reader.read(65536)).decode()
        finally:
            writer.close()
        assert answer.startswith("HTTP/1.1 408"), answer
        problem = json.loads(answer.split("\r\n\r\n", 1)[1])
        assert (problem["line"], problem["accepted"]) == (3, 2)
        assert [e["data"]["message"] for e in await history(server, TOPIC)] == ["one", "two"]
