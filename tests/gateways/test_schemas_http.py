"""The schema registry over HTTP (gateways/schemas.py), and the check on every way in.

Against a real server: register, list, show, test, modes, permissions (`manage`
on `$schemas/<type>`), admins naming `<tenant>/<type>`; then events of a type
with a schema published over HTTP (structured, binary, batch) and over the
WebSocket protocol (the Python client) are refused naming the path, or accepted
carrying `dataschema`; and the schemas survive a restart on sqlite.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import Server, event, running_server

import hybridbus.client
from hybridbus.errors import ErrorCode, RemoteError
from hybridbus.server.access import new_api_key
from hybridbus.server.keys import KeySpec
from hybridbus.server.tokens import mint

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"
SECRET = "a-test-secret-of-at-least-32-bytes-long!"
ADMIN_KEY, ADMIN_HASH = new_api_key()
ACME_KEY, ACME_HASH = new_api_key()  # role "user": anything in acme, manage included
GLOBEX_KEY, GLOBEX_HASH = new_api_key()
WRITER_KEY, WRITER_HASH = new_api_key()  # publish and subscribe in acme: no manage
SCHEMER_KEY, SCHEMER_HASH = new_api_key()  # manage on $schemas/# only
API_KEYS = [
    {"name": "ops", "hash": ADMIN_HASH, "admin": True},
    {"name": "acme", "hash": ACME_HASH, "tenant": "acme", "roles": ["user"]},
    {"name": "globex", "hash": GLOBEX_HASH, "tenant": "globex", "roles": ["user"]},
    {"name": "writer", "hash": WRITER_HASH, "tenant": "acme", "roles": ["writer"]},
    {"name": "schemer", "hash": SCHEMER_HASH, "tenant": "acme", "roles": ["schemer"]},
]
ROLES = {
    "user": [{"allow": "*", "topics": "#"}],
    "writer": [{"allow": ["publish", "subscribe", "history"], "topics": "#"}],
    "schemer": [{"allow": ["manage"], "topics": "$schemas/#"}],
}
ORDER = "com.acme.order"
SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}},
        }
    },
}
GOOD = {"items": [{"qty": 1}]}
BAD = {"items": [{"qty": 1}, {"qty": 2}, {"qty": 0}]}
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[Server]:
    """A server with the API keys above and no anonymous callers."""
    settings.setdefault("anonymous_tenant", None)
    settings.setdefault("jwt_secret", SECRET)
    settings.setdefault("roles", ROLES)
    settings.setdefault("api_keys", API_KEYS)
    async with running_server(**settings) as server:
        yield server


def client(server: Server, key: str | None = ACME_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=server.http, timeout=30.0, headers=headers)


def problem(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


async def register(http: httpx.AsyncClient, type: str, schema: Any, status: int = 201) -> Any:
    response = await http.post(f"/v1/schemas/{type}", json={"schema": schema})
    assert response.status_code == status, response.text
    return response.json()


async def test_register_list_show_and_test() -> None:
    async with served() as server, client(server) as http:
        assert (await http.get("/v1/schemas")).json() == {"schemas": []}
        problem(await http.get(f"/v1/schemas/{ORDER}"), 404, ErrorCode.UNKNOWN_SCHEMA)
        created = await register(http, ORDER, SCHEMA)
        assert created["version"] == 1 and created["schema"] == SCHEMA
        assert created["uri"] == f"hybridbus:schemas/acme/{ORDER}/1"
        again = await register(http, ORDER, json.loads(json.dumps(SCHEMA)), 200)
        assert again == created
        listing = (await http.get("/v1/schemas")).json()["schemas"]
        assert listing == [
            {
                "name": ORDER,
                "tenant": "acme",
                "type": ORDER,
                "mode": "backward",
                "latest": 1,
                "uri": created["uri"],
            }
        ]
        shown = (await http.get(f"/v1/schemas/{ORDER}")).json()
        assert [v["version"] for v in shown["versions"]] == [1]
        assert (await http.get(f"/v1/schemas/{ORDER}/latest")).json() == created
        assert (await http.get(f"/v1/schemas/{ORDER}/1")).json() == created
        problem(await http.get(f"/v1/schemas/{ORDER}/2"), 404, ErrorCode.UNKNOWN_SCHEMA)
        problem(await http.get(f"/v1/schemas/{ORDER}/two"), 400, ErrorCode.INVALID_SCHEMA)
        tested = await http.post(f"/v1/schemas/{ORDER}/test", json={"data": BAD})
        assert tested.json() == {
            "valid": False,
            "version": 1,
            "uri": created["uri"],
            "path": "data.items[2].qty",
            "error": "0 is less than the minimum of 1",
        }
        sample = event(type=ORDER, data=GOOD)
        tested = await http.post(f"/v1/schemas/{ORDER}/test", json={"event": sample})
        assert tested.json()["valid"] is True
        problem(await http.post(f"/v1/schemas/{ORDER}/test", json={}), 400, 1000)
        assert (await http.get("/v1/topics?prefix=acme/")).json()["topics"] == []  # nothing sent


async def test_modes_and_incompatible_versions() -> None:
    async with served() as server, client(server) as http:
        await register(http, ORDER, SCHEMA)
        narrower = {**SCHEMA, "additionalProperties": False}
        refused = await http.post(f"/v1/schemas/{ORDER}", json={"schema": narrower})
        body = problem(refused, 409, ErrorCode.SCHEMA_INCOMPATIBLE)
        assert body["path"] == "#/additionalProperties"
        assert "ADDITIONAL_PROPERTIES_REMOVED" in body["detail"]
        response = await http.put(f"/v1/schemas/{ORDER}/mode", json={"mode": "forward"})
        assert response.json()["mode"] == "forward"
        assert (await register(http, ORDER, narrower))["version"] == 2
        bad_mode = await http.put(f"/v1/schemas/{ORDER}/mode", json={"mode": "sideways"})
        problem(bad_mode, 400, ErrorCode.INVALID_SCHEMA)
        not_schema = await http.post(f"/v1/schemas/{ORDER}", json={"schema": {"type": 5}})
        assert "#/type" in problem(not_schema, 400, ErrorCode.INVALID_SCHEMA)["detail"]
        no_body = await http.post(f"/v1/schemas/{ORDER}", content=b"[")
        problem(no_body, 400, 1000)
        bad_name = await http.post("/v1/schemas/a%20b", json={"schema": True})
        problem(bad_name, 400, ErrorCode.INVALID_SCHEMA)


async def test_who_may_do_what() -> None:
    async with served() as server:
        async with client(server, WRITER_KEY) as writer:
            refused = await writer.post(f"/v1/schemas/{ORDER}", json={"schema": SCHEMA})
            problem(refused, 403, ErrorCode.FORBIDDEN)
            mode = await writer.put(f"/v1/schemas/{ORDER}/mode", json={"mode": "none"})
            problem(mode, 403, ErrorCode.FORBIDDEN)
        async with client(server, SCHEMER_KEY) as schemer:
            await register(schemer, ORDER, SCHEMA)  # manage on $schemas/# is enough
        async with client(server, WRITER_KEY) as writer:  # reading needs no manage
            assert (await writer.get(f"/v1/schemas/{ORDER}/1")).status_code == 200
        async with client(server, GLOBEX_KEY) as globex:  # another tenant sees nothing
            assert (await globex.get("/v1/schemas")).json() == {"schemas": []}
            problem(await globex.get(f"/v1/schemas/{ORDER}"), 404, ErrorCode.UNKNOWN_SCHEMA)
        async with client(server, None) as nobody:
            problem(await nobody.get("/v1/schemas"), 401, ErrorCode.UNAUTHORIZED)
        async with client(server, ADMIN_KEY) as admin:
            names = [t["name"] for t in (await admin.get("/v1/schemas")).json()["schemas"]]
            assert names == [f"acme/{ORDER}"]
            shown = await admin.get(f"/v1/schemas/acme%2F{ORDER}/latest")
            assert shown.json()["tenant"] == "acme"
            await register(admin, f"globex%2F{ORDER}", True)
            problem(await admin.get(f"/v1/schemas/{ORDER}"), 400, 1000)  # no tenant named
        async with client(server, GLOBEX_KEY) as globex:
            assert [t["type"] for t in (await globex.get("/v1/schemas")).json()["schemas"]] == [
                ORDER
            ]


async def test_every_way_in_checks_and_names_the_path() -> None:
    async with served() as server, client(server) as http:
        created = await register(http, ORDER, SCHEMA)
        uri = created["uri"]
        topic = "/v1/topics/acme/orders/1/events"
        # HTTP, structured mode
        refused = await http.post(
            topic, content=json.dumps(event(type=ORDER, data=BAD)), headers=STRUCTURED
        )
        body = problem(refused, 400, ErrorCode.SCHEMA_VIOLATION)
        assert body["path"] == "data.items[2].qty" and body["attribute"] == "data"
        assert body["detail"].startswith("data.items[2].qty: 0 is less than the minimum of 1")
        ok = await http.post(
            topic, content=json.dumps(event("s", type=ORDER, data=GOOD)), headers=STRUCTURED
        )
        assert ok.status_code == 201, ok.text
        # HTTP, binary mode
        binary = {
            "ce-specversion": "1.0",
            "ce-source": "/b",
            "ce-type": ORDER,
            "content-type": "application/json",
        }
        refused = await http.post(topic, content=json.dumps(BAD), headers={**binary, "ce-id": "b0"})
        assert problem(refused, 400, ErrorCode.SCHEMA_VIOLATION)["path"] == "data.items[2].qty"
        ok = await http.post(topic, content=json.dumps(GOOD), headers={**binary, "ce-id": "b"})
        assert ok.status_code == 201, ok.text
        # HTTP, a batch: all or nothing, the bad one's index named
        batch = [event("k1", type=ORDER, data=GOOD), event("k2", type=ORDER, data={"items": "no"})]
        refused = await http.post(topic, content=json.dumps(batch), headers=BATCH)
        body = problem(refused, 400, ErrorCode.SCHEMA_VIOLATION)
        assert (body["index"], body["path"]) == (1, "data.items")
        # WebSocket, the Python client
        token = mint(KeySpec(alg="HS256", secret=SECRET), sub="ann", tenant="acme", roles=["user"])
        async with hybridbus.client.connect(server.url, token=token) as ws:
            with pytest.raises(RemoteError) as caught:
                await ws.publish("orders/1", event("w0", type=ORDER, data=BAD))
            assert caught.value.code == ErrorCode.SCHEMA_VIOLATION
            assert "data.items[2].qty" in str(caught.value)
            await ws.publish("orders/1", event("w", type=ORDER, data=GOOD))
            await ws.publish("orders/1", event("other", type="com.acme.other", data=BAD))
        history = (await http.get("/v1/events?pattern=acme/orders/1")).json()
        kept = {d["event"]["id"]: d["event"].get("dataschema") for d in history["events"]}
        assert kept == {"s": uri, "b": uri, "w": uri, "other": None}


async def test_the_schemas_survive_a_restart(tmp_path: Path) -> None:
    engine = f"sqlite://{tmp_path / 'data'}"
    async with served(engine=engine) as server, client(server) as http:
        await register(http, ORDER, SCHEMA)
        await http.put(f"/v1/schemas/{ORDER}/mode", json={"mode": "full"})
    async with served(engine=engine) as server, client(server) as http:
        shown = (await http.get(f"/v1/schemas/{ORDER}")).json()
        assert (shown["mode"], shown["latest"]) == ("full", 1)
        refused = await http.post(
            "/v1/topics/acme/o/events",
            content=json.dumps(event(type=ORDER, data=BAD)),
            headers=STRUCTURED,
        )
        assert problem(refused, 400, ErrorCode.SCHEMA_VIOLATION)["path"] == "data.items[2].qty"
