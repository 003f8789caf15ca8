"""Consumer groups over HTTP (gateways/groups.py), against a real server and a real client.

Pull (fetch, ack, nack, extend, term), management, dead letters, permissions,
bad bodies and the group metrics on `/metrics`. Every request goes through
the server's access hook, as in production (`running_server`, httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from tests.servers import Server, event, running_server

from hybridbus.errors import ErrorCode
from hybridbus.server.access import new_api_key
from hybridbus.server.keys import KeySpec
from hybridbus.server.tokens import mint

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"
SECRET = "a-test-secret-of-at-least-32-bytes-long!"
CLOUDEVENT = {"content-type": "application/cloudevents+json"}

ADMIN_KEY, ADMIN_HASH = new_api_key()
ACME_KEY, ACME_HASH = new_api_key()  # role "user": anything in acme
GLOBEX_KEY, GLOBEX_HASH = new_api_key()  # role "user" in globex
READER_KEY, READER_HASH = new_api_key()  # subscribe and history only
CONSUMER_KEY, CONSUMER_HASH = new_api_key()  # consume only
API_KEYS = [
    {"name": "ops", "hash": ADMIN_HASH, "admin": True},
    {"name": "acme", "hash": ACME_HASH, "tenant": "acme", "roles": ["user"]},
    {"name": "globex", "hash": GLOBEX_HASH, "tenant": "globex", "roles": ["user"]},
    {"name": "reader", "hash": READER_HASH, "tenant": "acme", "roles": ["reader"]},
    {"name": "consumer", "hash": CONSUMER_HASH, "tenant": "acme", "roles": ["consumer"]},
]
ROLES = {
    "user": [{"allow": "*", "topics": "#"}],
    "reader": [{"allow": ["subscribe", "history"], "topics": "#"}],
    "consumer": [{"allow": ["consume", "publish"], "topics": "#"}],
}


@asynccontextmanager
async def server_and_client(
    credential: str | None = ACME_KEY, **settings: Any
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """A server with the API keys above (no anonymous callers) and a client of `credential`."""
    settings.setdefault("anonymous_tenant", None)
    settings.setdefault("roles", ROLES)
    settings.setdefault("api_keys", API_KEYS)
    async with running_server(**settings) as server, client(server, credential) as http:
        yield server, http


def client(server: Server, credential: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    return httpx.AsyncClient(base_url=server.http, timeout=30.0, headers=headers)


async def publish(http: httpx.AsyncClient, topic: str, **fields: Any) -> None:
    response = await http.post(
        f"/v1/topics/{topic}/events", content=json.dumps(event(**fields)), headers=CLOUDEVENT
    )
    assert response.status_code == 201, response.text


async def create(
    http: httpx.AsyncClient, name: str, pattern: str, **settings: Any
) -> dict[str, Any]:
    settings.setdefault("start", "earliest")
    response = await http.put(f"/v1/groups/{name}", json={"pattern": pattern, "settings": settings})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def fetch(
    http: httpx.AsyncClient, name: str, max: int = 100, wait: float = 5.0, **more: Any
) -> list[dict[str, Any]]:
    response = await http.post(f"/v1/groups/{name}/fetch", json={"max": max, "wait": wait, **more})
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


async def post(http: httpx.AsyncClient, path: str, body: Any, status: int = 204) -> Any:
    response = await http.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def assert_problem(response: httpx.Response, status: int, code: ErrorCode) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    return body


async def info(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await http.get(f"/v1/groups/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- pull ------------------------------------------------------------------------------


async def test_fetch_then_ack_round_trip() -> None:
    async with server_and_client() as (_, http):
        created = await create(http, "billing", "acme/invoices/#")
        assert (created["name"], created["pattern"], created["pending"]) == (
            "billing", "acme/invoices/#", 0,
        )  # fmt: skip
        for n in range(3):
            await publish(http, f"acme/invoices/{n}", id=f"inv-{n}", data={"n": n})
        got = await fetch(http, "billing", max=10, member="worker-1")
        assert [d["topic"] for d in got] == [f"acme/invoices/{n}" for n in range(3)]
        assert [d["event"]["data"] for d in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(d["attempt"] == 1 and d["offset"] == 1 for d in got)
        assert len({d["dedupe"] for d in got}) == 3
        during = await info(http, "billing")
        assert (during["pending"], during["leased"]) == (3, 3)
        assert [e["member"] for e in during["entries"]] == ["worker-1"] * 3
        await post(http, "/v1/groups/billing/ack", {"ids": [d["id"] for d in got]})
        after = await info(http, "billing")
        assert (after["pending"], after["leased"], after["acked"]) == (0, 0, 3)
        assert after["lag"] == 0
        assert await fetch(http, "billing", wait=0.3) == []  # acked: never again


async def test_a_fetch_answers_at_most_max_and_the_rest_stay_for_the_next() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#", ordered=False)
        for n in range(5):
            await publish(http, f"acme/invoices/{n}")
        first = await fetch(http, "billing", max=2)
        assert len(first) == 2
        rest = await fetch(http, "billing", max=10)
        assert len(rest) == 3
        assert all(d["attempt"] == 1 for d in rest)  # given back untouched, not failed
        assert {d["id"] for d in first}.isdisjoint(d["id"] for d in rest)


async def test_a_fetch_with_nothing_to_deliver_answers_an_empty_list_after_its_wait() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#")
        started = time.monotonic()
        assert await fetch(http, "billing", wait=1.0) == []
        took = time.monotonic() - started
        assert 0.9 <= took < 10.0, took


async def test_a_waiting_fetch_answers_as_soon_as_an_event_comes() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#", start="latest")
        waiting = asyncio.create_task(fetch(http, "billing", wait=20.0))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await publish(http, "acme/invoices/1")
        (got,) = await waiting
        assert got["topic"] == "acme/invoices/1"
        assert time.monotonic() - started < 10.0  # not the 20 s wait


async def test_two_concurrent_fetchers_split_the_events() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#", ordered=False)
        for n in range(10):
            await publish(http, f"acme/invoices/{n}")
        a, b = await asyncio.gather(fetch(http, "billing", max=5), fetch(http, "billing", max=5))
        assert len(a) + len(b) == 10, (a, b)
        ids = [d["id"] for d in a + b]
        assert len(set(ids)) == 10
        assert {d["topic"] for d in a + b} == {f"acme/invoices/{n}" for n in range(10)}


async def test_a_nacked_delivery_comes_back_with_its_error() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#")
        await publish(http, "acme/invoices/1")
        (first,) = await fetch(http, "billing")
        nack = {"id": first["id"], "delay": 0, "error": "the ledger is down"}
        await post(http, "/v1/groups/billing/nack", nack)
        (again,) = await fetch(http, "billing")
        assert (again["topic"], again["attempt"], again["dedupe"]) == (
            "acme/invoices/1", 2, first["dedupe"],
        )  # fmt: skip
        assert again["id"] != first["id"]
        (entry,) = (await info(http, "billing"))["entries"]
        assert (entry["attempts"], entry["error"]) == (2, "the ledger is down")
        # The first delivery is not held any more: nack, extend, term of it are refused.
        for path, body in [("nack", {"id": first["id"]}), ("extend", {"ids": [first["id"]]})]:
            response = await http.post(f"/v1/groups/billing/{path}", json=body)
            assert_problem(response, 409, ErrorCode.DELIVERY_GONE)
        await post(http, "/v1/groups/billing/extend", {"ids": [again["id"]]})
        await post(http, "/v1/groups/billing/ack", {"ids": [again["id"]]})
        assert (await info(http, "billing"))["pending"] == 0
        await post(http, "/v1/groups/billing/ack", {"ids": [again["id"]]})  # settled: a no-op


async def test_deliveries_of_a_client_that_left_mid_wait_are_not_lost() -> None:
    async with server_and_client() as (server, http):
        await create(http, "billing", "acme/invoices/#", start="latest")
        # A client asks for deliveries, waiting long, and hangs up after a moment.
        body = json.dumps({"max": 10, "wait": 25}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(
                b"POST /v1/groups/billing/fetch HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {ACME_KEY}\r\n".encode()
                + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            for _ in range(100):  # its member has joined
                if (await info(http, "billing"))["members"]:
                    break
                await asyncio.sleep(0.05)
            assert (await info(http, "billing"))["members"]
        for _ in range(100):  # the server notices (within a sweep), the member leaves
            if not (await info(http, "billing"))["members"]:
                break
            await asyncio.sleep(0.05)
        assert (await info(http, "billing"))["members"] == []
        await publish(http, "acme/invoices/1")
        started = time.monotonic()
        (got,) = await fetch(http, "billing", wait=10)  # at once, not after ack_wait (30 s)
        assert (got["topic"], got["attempt"]) == ("acme/invoices/1", 1)
        assert time.monotonic() - started < 10.0


async def test_an_answer_that_cannot_be_written_gives_its_deliveries_back() -> None:
    async with server_and_client() as (server, http):
        await create(http, "billing", "acme/invoices/#", start="latest")
        body = json.dumps({"max": 10, "wait": 25}).encode()
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.sendall(
            b"POST /v1/groups/billing/fetch HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ACME_KEY}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        for _ in range(100):
            if (await info(http, "billing"))["members"]:
                break
            await asyncio.sleep(0.05)
        raw.close()  # gone before the event comes: the answer cannot reach it
        await publish(http, "acme/invoices/1")
        (got,) = await fetch(http, "billing", wait=10)
        assert (got["topic"], got["attempt"]) == ("acme/invoices/1", 1)


# -- dead letters ------------------------------------------------------------------------


async def test_term_then_list_show_replay_and_purge_the_dead_letters() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#", ordered=False)
        for n in range(4):
            await publish(http, f"acme/invoices/{n}", id=f"inv-{n}", data={"n": n})
        got = await fetch(http, "billing", max=4)
        assert len(got) == 4
        for d in got:
            await post(http, "/v1/groups/billing/term", {"id": d["id"], "reason": "bad invoice"})
        page = (await http.get("/v1/groups/billing/dead-letters?limit=3")).json()
        assert page["more"] is True
        letters = page["dead_letters"]
        assert [x["topic"] for x in letters] == [f"acme/invoices/{n}" for n in range(3)]
        assert all(x["reason"] == "term" and x["error"] == "bad invoice" for x in letters)
        rest = await http.get(f"/v1/groups/billing/dead-letters?after={letters[-1]['id']}")
        (last,) = rest.json()["dead_letters"]
        assert rest.json()["more"] is False
        ids = [x["id"] for x in [*letters, last]]
        shown = (await http.get(f"/v1/groups/billing/dead-letters/{ids[0]}")).json()
        assert shown["dead_letter"]["id"] == ids[0]
        assert shown["event"]["id"] == "inv-0"
        assert shown["event"]["dlqreason"] == "term"
        assert shown["event"]["dlqtopic"] == "invoices/0"
        assert (await info(http, "billing"))["dead_letters"] == 4

        # To the topic: appended again (not refused as a duplicate); the group takes it anew.
        replayed = await post(
            http, "/v1/groups/billing/dead-letters/replay", {"ids": [ids[0]], "to": "topic"}, 200
        )
        assert replayed == {"replayed": 1}
        history = (await http.get("/v1/topics/acme/invoices/0/events")).json()["events"]
        assert [e["event"]["id"] for e in history] == ["inv-0", "inv-0"]
        assert "dlqreason" not in history[1]["event"]
        (again,) = await fetch(http, "billing")
        assert (again["topic"], again["offset"], again["attempt"]) == ("acme/invoices/0", 2, 1)
        await post(http, "/v1/groups/billing/ack", {"ids": [again["id"]]})

        # Into the group: only this group gets it again, from attempt 1.
        replayed = await post(
            http, "/v1/groups/billing/dead-letters/replay", {"ids": [ids[1]], "to": "group"}, 200
        )
        assert replayed == {"replayed": 1}
        (again,) = await fetch(http, "billing")
        assert (again["topic"], again["attempt"]) == ("acme/invoices/1", 1)
        assert again["event"]["id"] == "inv-1"
        assert "dlqreason" not in again["event"]
        await post(http, "/v1/groups/billing/ack", {"ids": [again["id"]]})
        history = (await http.get("/v1/topics/acme/invoices/1/events")).json()["events"]
        assert len(history) == 1  # nothing appended

        purged = await post(http, "/v1/groups/billing/dead-letters/purge", {"ids": [ids[2]]}, 200)
        assert purged == {"purged": 1}
        purged = await post(http, "/v1/groups/billing/dead-letters/purge", {"all": True}, 200)
        assert purged == {"purged": 1}
        left = (await http.get("/v1/groups/billing/dead-letters")).json()
        assert left == {"dead_letters": [], "more": False}
        response = await http.get(f"/v1/groups/billing/dead-letters/{ids[3]}")
        assert_problem(response, 404, ErrorCode.UNKNOWN_DEAD_LETTER)


# -- management ------------------------------------------------------------------------------


async def test_put_updates_settings_lists_seeks_and_deletes() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#")
        update = {"pattern": "acme/invoices/#", "settings": {"max_deliveries": 9}}
        response = await http.put("/v1/groups/billing", json=update)
        assert response.status_code == 200, response.text
        assert response.json()["settings"]["max_deliveries"] == 9
        conflict = {"pattern": "acme/orders/#"}
        assert_problem(
            await http.put("/v1/groups/billing", json=conflict), 409, ErrorCode.GROUP_CONFLICT
        )
        await create(http, "audit", "acme/#")
        listed = (await http.get("/v1/groups")).json()["groups"]
        assert [g["name"] for g in listed] == ["audit", "billing"]

        for n in range(3):
            await publish(http, f"acme/invoices/{n}")
        listed = (await http.get("/v1/groups")).json()["groups"]
        # Nobody fetched: behind by the 3 events (and by the log's other events, as the
        # API key's audit event: lag is log positions, an upper bound).
        assert all(g["lag"] >= 3 for g in listed), listed
        got = await fetch(http, "billing", max=10)
        assert len(got) == 3
        await post(http, "/v1/groups/billing/ack", {"ids": [d["id"] for d in got]})
        position = (await info(http, "billing"))["position"]
        back = await post(http, "/v1/groups/billing/seek", {"time": 0}, 200)
        assert back["position"] != position
        assert len(await fetch(http, "billing", max=10)) == 3  # replayed from the start
        await post(http, "/v1/groups/billing/seek", {"position": position}, 200)
        assert await fetch(http, "billing", wait=0.3) == []

        response = await http.delete("/v1/groups/billing")
        assert response.status_code == 204
        assert_problem(await http.get("/v1/groups/billing"), 404, ErrorCode.UNKNOWN_GROUP)
        assert [g["name"] for g in (await http.get("/v1/groups")).json()["groups"]] == ["audit"]


async def test_an_admin_names_groups_with_their_tenant() -> None:
    async with server_and_client(ADMIN_KEY) as (server, admin):
        response = await admin.put("/v1/groups/acme%2Fbilling", json={"pattern": "acme/invoices/#"})
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "acme/billing"
        assert response.headers["Location"] == "/v1/groups/acme%2Fbilling"
        other = await admin.put("/v1/groups/acme%2Fsteal", json={"pattern": "globex/#"})
        assert_problem(other, 400, ErrorCode.INVALID_INPUT)
        assert_problem(
            await admin.get("/v1/groups/billing"), 400, ErrorCode.INVALID_SETTINGS
        )  # an admin must say the tenant
        async with client(server, ACME_KEY) as acme:
            assert (await info(acme, "billing"))["name"] == "billing"


# -- permissions -------------------------------------------------------------------------------


async def test_consume_and_manage_are_needed_and_tenants_are_apart() -> None:
    async with server_and_client() as (server, acme):
        await create(acme, "billing", "acme/invoices/#")
        await publish(acme, "acme/invoices/1")
        async with client(server, READER_KEY) as reader:
            for path, body in [("fetch", {"wait": 0}), ("ack", {"ids": ["x-0.1.1"]})]:
                response = await reader.post(f"/v1/groups/billing/{path}", json=body)
                assert_problem(response, 403, ErrorCode.FORBIDDEN)
            assert_problem(await reader.get("/v1/groups/billing"), 403, ErrorCode.FORBIDDEN)
            assert (await reader.get("/v1/groups")).json() == {"groups": []}
        async with client(server, CONSUMER_KEY) as consumer:
            (got,) = await fetch(consumer, "billing")
            await post(consumer, "/v1/groups/billing/ack", {"ids": [got["id"]]})
            assert (await info(consumer, "billing"))["acked"] == 1
            for method, path in [
                ("GET", "/v1/groups/billing/dead-letters"),
                ("POST", "/v1/groups/billing/dead-letters/purge"),
                ("POST", "/v1/groups/billing/seek"),
                ("DELETE", "/v1/groups/billing"),
            ]:
                response = await consumer.request(method, path, json={"all": True})
                assert_problem(response, 403, ErrorCode.FORBIDDEN)
            create_own = {"pattern": "acme/orders/#"}
            response = await consumer.put("/v1/groups/orders", json=create_own)
            assert_problem(response, 403, ErrorCode.FORBIDDEN)  # creating over HTTP: manage
        async with client(server, GLOBEX_KEY) as globex:
            for method, path in [
                ("GET", "/v1/groups/billing"),
                ("POST", "/v1/groups/billing/fetch"),
                ("GET", "/v1/groups/billing/dead-letters"),
                ("DELETE", "/v1/groups/billing"),
            ]:
                response = await globex.request(method, path)
                assert_problem(response, 404, ErrorCode.UNKNOWN_GROUP)
            assert (await globex.get("/v1/groups")).json() == {"groups": []}
            outside = await globex.put("/v1/groups/mine", json={"pattern": "acme/#"})
            assert_problem(outside, 403, ErrorCode.FORBIDDEN)
        async with client(server, None) as nobody:
            response = await nobody.get("/v1/groups")
            assert_problem(response, 401, ErrorCode.UNAUTHORIZED)


# -- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "fetch", {"max": 0}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", {"max": 1001}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", {"wait": 31}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", {"wait": -1}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", {"maximum": 3}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", {"member": "a b"}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", "[1, 2]", 400, ErrorCode.INVALID_INPUT),
        ("POST", "fetch", "{", 400, ErrorCode.INVALID_INPUT),
        ("POST", "ack", {"ids": []}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "ack", {"ids": ["not-an-id"]}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "ack", {}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "nack", {"id": "e-0.1.1", "delay": -2}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "term", {"id": "e-0.1.1"}, 409, ErrorCode.DELIVERY_GONE),
        ("POST", "seek", {}, 400, ErrorCode.INVALID_SETTINGS),
        ("POST", "seek", {"position": "nonsense"}, 400, ErrorCode.INVALID_POSITION),
        ("POST", "dead-letters/replay", {}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "dead-letters/replay", {"all": True, "to": "x"}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "dead-letters/purge", {"ids": ["1.2"], "all": True}, 400, ErrorCode.INVALID_INPUT),
        ("POST", "dead-letters/purge", {"ids": ["9.9"]}, 404, ErrorCode.UNKNOWN_DEAD_LETTER),
        ("PUT", "", {"pattern": "acme/#", "settings": {"ack_wait": -1}}, 400,
         ErrorCode.INVALID_SETTINGS),
        ("PUT", "", {"pattern": "acme/#", "settings": {"colour": 1}}, 400,
         ErrorCode.INVALID_SETTINGS),
        ("PUT", "", {"pattern": "acme/a+"}, 400, ErrorCode.INVALID_PATTERN),
        ("PUT", "", {}, 400, ErrorCode.INVALID_INPUT),
    ],
)  # fmt: skip
async def test_bad_requests_are_problems_naming_their_code(
    method: str, path: str, body: Any, status: int, code: ErrorCode
) -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#")
        content = body if isinstance(body, str) else json.dumps(body)
        url = "/v1/groups/billing" + (f"/{path}" if path else "")
        response = await http.request(method, url, content=content)
        problem = assert_problem(response, status, code)
        if status == 400 and code == ErrorCode.INVALID_INPUT and method == "POST":
            assert problem.get("parameter") == "body" or "id" in problem["detail"], problem


async def test_unknown_and_badly_named_groups() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#")
        assert_problem(await http.get("/v1/groups/nope"), 404, ErrorCode.UNKNOWN_GROUP)
        response = await http.post("/v1/groups/nope/fetch", json={})
        assert_problem(response, 404, ErrorCode.UNKNOWN_GROUP)
        response = await http.put("/v1/groups/bad%20name", json={"pattern": "acme/#"})
        assert_problem(response, 400, ErrorCode.INVALID_SETTINGS)
        big = await http.post("/v1/groups/billing/ack", content=b"[" + b"1," * (1 << 20) + b"1]")
        assert_problem(big, 413, ErrorCode.EVENT_TOO_LARGE)


# -- metrics ---------------------------------------------------------------------------------------


def sample(text: str, name: str, group: str) -> float:
    match = re.search(
        rf'^{name}\{{group="{group}",tenant="acme"\}} (\S+)$', text, re.MULTILINE
    ) or re.search(rf'^{name}\{{tenant="acme",group="{group}"\}} (\S+)$', text, re.MULTILINE)
    assert match is not None, f"{name} of {group} not in /metrics"
    return float(match.group(1))


async def test_the_group_metrics_are_exposed_with_their_values() -> None:
    async with server_and_client() as (_, http):
        await create(http, "billing", "acme/invoices/#", ordered=False)
        for n in range(5):
            await publish(http, f"acme/invoices/{n}")
        text = (await http.get("/metrics")).text
        lag = (await info(http, "billing"))["lag"]
        assert sample(text, "hybridbus_group_lag", "billing") == lag >= 5  # positions behind
        got = await fetch(http, "billing", max=5)
        assert len(got) == 5
        await post(http, "/v1/groups/billing/ack", {"ids": [d["id"] for d in got[:2]]})
        await post(http, "/v1/groups/billing/nack", {"id": got[2]["id"], "delay": 0})
        (again,) = await fetch(http, "billing")  # the only one not leased: a redelivery
        assert (again["topic"], again["attempt"]) == (got[2]["topic"], 2)
        await post(http, "/v1/groups/billing/term", {"id": again["id"]})
        text = (await http.get("/metrics")).text
        assert sample(text, "hybridbus_group_acked_total", "billing") == 2
        assert sample(text, "hybridbus_group_dead_total", "billing") == 1
        assert sample(text, "hybridbus_group_dead_letters", "billing") == 1
        assert sample(text, "hybridbus_group_members", "billing") == 0
        pending = (await info(http, "billing"))["pending"]
        assert sample(text, "hybridbus_group_pending", "billing") == pending == 2
        assert sample(text, "hybridbus_group_leased", "billing") == 2
        # All 5 taken; only the dead letter's copy (on $dlq/...) was appended since.
        assert sample(text, "hybridbus_group_lag", "billing") == 1
        assert sample(text, "hybridbus_group_redelivered_total", "billing") == 1


# -- a waiting fetch ends with the server and with its token ---------------------------------


async def test_a_waiting_fetch_answers_at_once_when_the_server_shuts_down() -> None:
    async with client_of_new_server() as (stop, http):
        await create(http, "billing", "acme/invoices/#", start="latest")
        waiting = asyncio.create_task(fetch(http, "billing", wait=25.0))
        for _ in range(100):
            if (await info(http, "billing"))["members"]:
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await stop()
        assert await waiting == []
        assert time.monotonic() - started < 10.0  # not the 25 s wait, nor shutdown_timeout


@asynccontextmanager
async def client_of_new_server() -> AsyncIterator[
    tuple[Callable[[], Awaitable[None]], httpx.AsyncClient]
]:
    """A client of a server that the test stops itself, with `stop()`."""
    stack = contextlib.AsyncExitStack()
    server = await stack.enter_async_context(
        running_server(anonymous_tenant=None, roles=ROLES, api_keys=API_KEYS)
    )
    async with client(server, ACME_KEY) as http:
        try:
            yield stack.aclose, http
        finally:
            await stack.aclose()


async def test_a_waiting_fetch_ends_when_its_token_expires() -> None:
    async with server_and_client(jwt_secret=SECRET) as (server, acme):
        await create(acme, "billing", "acme/invoices/#")
        token = mint(KeySpec(alg="HS256", secret=SECRET), sub="bob", tenant="acme",
                     roles=["user"], ttl=2)  # fmt: skip
        async with client(server, token) as bob:
            started = time.monotonic()
            response = await bob.post("/v1/groups/billing/fetch", json={"wait": 25})
            assert_problem(response, 401, ErrorCode.TOKEN_EXPIRED)
            assert time.monotonic() - started < 10.0
        assert (await info(acme, "billing"))["members"] == []
