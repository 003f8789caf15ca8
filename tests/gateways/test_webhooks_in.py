"""Inbound webhooks against the real server: signed requests in, events appended, refusals coded.

The requests are signed by a library nobody here wrote (`standardwebhooks`
from PyPI) or by hand as GitHub signs them, and sent with httpx to the real
application on a loopback port (`tests.servers.running_server`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from tests.servers import Server, running_server

from hybridbus.core.webhook_routes import Endpoint
from hybridbus.core.webhooks import (
    HmacScheme,
    new_keypair,
    new_secret,
    signing_key,
    standard_headers,
)
from hybridbus.errors import ErrorCode

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"
SECRET = new_secret()


def billing(**fields: Any) -> Endpoint:
    """The test endpoint: Standard Webhooks, `billing/{type}` from `$.type`, subject `$.data.id`."""
    fields.setdefault("name", "billing")
    fields.setdefault("tenant", "acme")
    fields.setdefault("secrets", [SECRET])
    fields.setdefault("topic", "billing/{type}")
    fields.setdefault("type", "$.type")
    fields.setdefault("subject", "$.data.id")
    return Endpoint(**fields)


def signed(
    body: bytes,
    secret: str = SECRET,
    msg_id: str | None = None,
    when: datetime | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Headers of a request the `standardwebhooks` package signed."""
    when = when or datetime.now(tz=UTC)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),  # type: ignore[arg-type]
        "content-type": content_type,
    }


@contextlib.asynccontextmanager
async def client(server: Server, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=10.0, headers=headers) as c:
        yield c


async def events(server: Server, pattern: str = "acme/#") -> list[dict[str, Any]]:
    async with client(server) as c:
        response = await c.get("/v1/events", params={"pattern": pattern})
    assert response.status_code == 200, response.text
    return [item["event"] for item in response.json()["events"]]


def refused(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    said = response.json()
    assert said["code"] == code and said["status"] == status, said
    return said


INVOICE = json.dumps({"type": "invoice.paid", "data": {"id": "in_1", "amount": 5}}).encode()


async def test_a_signed_webhook_is_appended_once_and_its_retries_are_duplicates() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        headers = signed(INVOICE, msg_id="msg_1")
        first = await c.post("/v1/webhooks/acme/billing", content=INVOICE, headers=headers)
        assert first.status_code == 200, first.text
        ack = first.json()
        assert ack["topic"] == "acme/billing/invoice.paid" and ack["duplicate"] is False
        assert (ack["id"], ack["offset"]) == ("msg_1", 1)
        # The platform retries (a new attempt: a new timestamp and signature, the same id).
        later = datetime.now(tz=UTC) + timedelta(seconds=30)
        retry = signed(INVOICE, msg_id="msg_1", when=later)
        again = await c.post("/v1/webhooks/acme/billing", content=INVOICE, headers=retry)
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] is True and again.json()["offset"] == 1
        (event,) = await events(server)
        assert event["id"] == "msg_1" and event["source"] == "/webhooks/acme/billing"
        assert (event["type"], event["subject"]) == ("invoice.paid", "in_1")
        assert event["data"] == json.loads(INVOICE)
        assert event["datacontenttype"] == "application/json"
        assert server.sample("hybridbus_publishes_total", gateway="webhook") == 2
        assert server.sample("hybridbus_duplicates_total", gateway="webhook") == 1


async def test_a_body_that_is_not_json_is_kept_as_bytes_with_its_content_type() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        body = b"\x00\x01 not json \xff"
        headers = signed(body, content_type="application/octet-stream; x=1")
        response = await c.post("/v1/webhooks/acme/billing", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["topic"] == "acme/billing/io.hybridbus.webhook"  # the default type
        (event,) = await events(server)
        assert base64.b64decode(event["data_base64"]) == body
        assert event["datacontenttype"] == "application/octet-stream; x=1"
        assert "subject" not in event


async def test_forgeries_are_401_counted_and_never_published() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        url = "/v1/webhooks/acme/billing"
        forged = signed(INVOICE, secret=new_secret())  # another secret
        said = refused(await c.post(url, content=INVOICE, headers=forged), 401, 1130)
        assert said["type"].endswith("signature-invalid")
        tampered = signed(INVOICE)  # the right secret, another body
        response = await c.post(url, content=INVOICE + b" ", headers=tampered)
        assert "WWW-Authenticate" not in response.headers  # no bearer token would help
        refused(response, 401, 1130)
        unsigned = {"content-type": "application/json"}
        refused(await c.post(url, content=INVOICE, headers=unsigned), 401, 1130)
        assert await events(server) == []
        assert (
            server.sample("hybridbus_webhook_refused_total", endpoint="acme/billing", code="1130")
            == 3
        )


async def test_a_replay_outside_the_window_is_refused_with_its_own_code() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        old = datetime.now(tz=UTC) - timedelta(minutes=6)
        headers = signed(INVOICE, when=old)
        response = await c.post("/v1/webhooks/acme/billing", content=INVOICE, headers=headers)
        refused(response, 401, int(ErrorCode.TIMESTAMP_OUT_OF_WINDOW))
        early = signed(INVOICE, when=datetime.now(tz=UTC) + timedelta(minutes=6))
        response = await c.post("/v1/webhooks/acme/billing", content=INVOICE, headers=early)
        refused(response, 401, 1131)
        assert await events(server) == []


async def test_ed25519_and_a_rotation_over_the_admin_api() -> None:
    private, public = new_keypair()
    async with running_server() as server, client(server) as c:
        old, new = new_secret(), new_secret()
        rule = {"topic": "shop/{type}", "type": "$.type"}
        made = await c.put(
            "/v1/webhooks/endpoints/shop", json={**rule, "secrets": [old, new, public]}
        )
        assert made.status_code == 201, made.text
        url = "/v1/webhooks/acme/shop"
        now = int(time.time())
        for key in (old, new, private):  # during the rotation: both secrets, and the ed25519 key
            headers = standard_headers(uuid.uuid4().hex, now, INVOICE, [signing_key(key)])
            response = await c.post(url, content=INVOICE, headers=headers)
            assert response.status_code == 200, response.text
        # The rotation ends: only the new secret.
        replaced = await c.put("/v1/webhooks/endpoints/shop", json={**rule, "secrets": [new]})
        assert replaced.status_code == 200, replaced.text
        stale = signed(INVOICE, secret=old)
        refused(await c.post(url, content=INVOICE, headers=stale), 401, 1130)
        response = await c.post(url, content=INVOICE, headers=signed(INVOICE, secret=new))
        assert response.status_code == 200, response.text
        assert len(await events(server)) == 4


async def test_a_github_style_hmac_request() -> None:
    github = Endpoint(
        name="github",
        tenant="acme",
        scheme="hmac",
        secrets=["It's a Secret to Everybody"],
        hmac=HmacScheme(header="X-Hub-Signature-256", prefix="sha256="),
        topic="{app}/{type}",
        values={"app": "github"},
        type="header:X-GitHub-Event",
        id="header:X-GitHub-Delivery",
        subject="$.repository.full_name",
    )
    async with running_server(webhooks=[github]) as server, client(server) as c:
        body = json.dumps({"action": "opened", "repository": {"full_name": "octo/hello"}}).encode()
        digest = hmac.new(b"It's a Secret to Everybody", body, hashlib.sha256).hexdigest()
        headers = {
            "X-Hub-Signature-256": f"sha256={digest}",
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Content-Type": "application/json",
        }
        response = await c.post("/v1/webhooks/acme/github", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["topic"] == "acme/github/pull_request"
        again = await c.post("/v1/webhooks/acme/github", content=body, headers=headers)
        assert again.json()["duplicate"] is True  # GitHub's redelivery keeps the delivery id
        (event,) = await events(server)
        assert event["id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
        assert (event["type"], event["subject"]) == ("pull_request", "octo/hello")
        bad = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
        refused(await c.post("/v1/webhooks/acme/github", content=body, headers=bad), 401, 1130)


async def test_limits_size_rate_and_unknown_endpoints() -> None:
    small = billing(name="small", max_body_size=1024)
    slow = billing(name="slow", rate=1.0, burst=2.0)
    async with running_server(webhooks=[small, slow]) as server, client(server) as c:
        big = json.dumps({"type": "x", "pad": "y" * 2000}).encode()
        refused(
            await c.post("/v1/webhooks/acme/small", content=big, headers=signed(big)), 413, 1004
        )
        for _ in range(2):  # the burst
            ok = await c.post("/v1/webhooks/acme/slow", content=INVOICE, headers=signed(INVOICE))
            assert ok.status_code == 200, ok.text
        response = await c.post("/v1/webhooks/acme/slow", content=INVOICE, headers=signed(INVOICE))
        said = refused(response, 429, int(ErrorCode.RATE_LIMITED))
        assert said["retriable"] is True and response.headers["Retry-After"] == "1"
        refused(
            await c.post("/v1/webhooks/acme/nope", content=INVOICE, headers=signed(INVOICE)),
            404,
            1132,
        )
        refused(
            await c.post("/v1/webhooks/other/small", content=INVOICE, headers=signed(INVOICE)),
            404,
            1132,
        )
        assert server.sample("hybridbus_webhook_refused_total", endpoint="", code="1132") == 2
        assert (
            server.sample("hybridbus_webhook_refused_total", endpoint="acme/slow", code="1121") == 1
        )


async def test_failed_checks_past_the_threshold_are_audited_once() -> None:
    async with running_server(webhooks=[billing()], webhook_audit_failures=2) as server:
        async with client(server) as c:
            for _ in range(5):
                forged = signed(INVOICE, secret=new_secret())
                response = await c.post(
                    "/v1/webhooks/acme/billing", content=INVOICE, headers=forged
                )
                refused(response, 401, 1130)
        bus = server.node.bus
        async with asyncio.timeout(5):
            while not (page := await bus.history("$audit/acme/webhook.refused")).deliveries:
                await asyncio.sleep(0.02)
        (delivery,) = page.deliveries
        data = delivery.event.data
        assert data["endpoint"] == "billing" and data["count"] == 3
        assert data["last"]["code"] == 1130 and data["last"]["remote"] == "127.0.0.1"


# -- the admin API ------------------------------------------------------------------------------

RULES = {
    "anonymous": [{"allow": "*", "topics": "#"}],
    # Operators of the shop's hooks: manage and read under shop/, nothing else.
    "user": [{"allow": ["manage", "history"], "topics": "shop/#"}],
}


async def test_the_admin_api_needs_manage_and_never_shows_a_secret() -> None:
    from tests.gateways.test_ways_in import SECRET as JWT_SECRET
    from tests.gateways.test_ways_in import token

    async with running_server(jwt_secret=JWT_SECRET, roles=RULES) as server:
        bearer = {"Authorization": f"Bearer {token()}"}  # tenant acme, role user
        async with client(server, **bearer) as c:
            secret = new_secret()
            body = {"secrets": [secret], "topic": "shop/{type}", "type": "$.type"}
            made = await c.put("/v1/webhooks/endpoints/shop", json=body)
            assert made.status_code == 201, made.text
            assert made.headers["Location"] == "/v1/webhooks/endpoints/shop"
            shown = made.json()
            assert shown["pattern"] == "acme/shop/#" and shown["url"] == "/v1/webhooks/acme/shop"
            assert "secrets" not in shown and shown["keys"][0].startswith("whsec:")
            listed = (await c.get("/v1/webhooks/endpoints")).json()["endpoints"]
            assert [e["name"] for e in listed] == ["shop"]
            got = await c.get("/v1/webhooks/endpoints/shop")
            for text in (made.text, got.text, json.dumps(listed)):
                assert secret not in text and secret[6:] not in text
            # Outside shop/: no manage, refused (and nothing stored).
            wide = {**body, "topic": "{type}"}
            refused(await c.put("/v1/webhooks/endpoints/wide", json=wide), 403, 1110)
            refused(await c.get("/v1/webhooks/endpoints/wide"), 404, 1132)
        async with client(server) as anonymous:  # tenant acme, may do everything there
            made = await anonymous.put("/v1/webhooks/endpoints/all", json={"secrets": [secret]})
            assert made.status_code == 201, made.text
        async with client(server, **bearer) as c:
            # The user may not see (nor delete) an endpoint it may not manage.
            listed = (await c.get("/v1/webhooks/endpoints")).json()["endpoints"]
            assert [e["name"] for e in listed] == ["shop"]
            refused(await c.delete("/v1/webhooks/endpoints/all"), 404, 1132)
            assert (await c.delete("/v1/webhooks/endpoints/shop")).status_code == 204
            refused(await c.get("/v1/webhooks/endpoints/shop"), 404, 1132)
            response = await c.post(
                "/v1/webhooks/acme/shop", content=INVOICE, headers=signed(INVOICE, secret=secret)
            )
            refused(response, 404, 1132)  # deleted: its URL answers no more


async def test_bad_endpoints_are_400_naming_the_body_and_configured_ones_are_fixed() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        for bad in (
            {"secrets": ["not-a-key"]},
            {"secrets": [new_secret()], "type": "type"},
            {"secrets": [new_secret()], "topic": "a/{b}"},
            {"secrets": [new_secret()], "name": "x"},
            {"secrets": []},
            [1, 2],
        ):
            said = refused(await c.put("/v1/webhooks/endpoints/x", json=bad), 400, 1000)
            assert said["parameter"] == "body", said
            assert "not-a-key" not in said["detail"]
        refused(await c.put("/v1/webhooks/endpoints/x", content=b"{"), 400, 1000)
        said = refused(
            await c.put("/v1/webhooks/endpoints/billing", json={"secrets": [SECRET]}), 403, 1110
        )
        assert "settings file" in said["detail"]
        refused(await c.delete("/v1/webhooks/endpoints/billing"), 403, 1110)
        (shown,) = (await c.get("/v1/webhooks/endpoints")).json()["endpoints"]
        assert shown["origin"] == "config"


async def test_endpoints_made_over_the_api_survive_a_restart(tmp_path: Path) -> None:
    engine = f"sqlite://{tmp_path / 'data'}"
    secret = new_secret()
    async with running_server(engine=engine) as server, client(server) as c:
        made = await c.put("/v1/webhooks/endpoints/kept", json={"secrets": [secret], "rate": 100})
        assert made.status_code == 201, made.text
        gone = await c.put("/v1/webhooks/endpoints/gone", json={"secrets": [secret]})
        assert gone.status_code == 201
        assert (await c.delete("/v1/webhooks/endpoints/gone")).status_code == 204
    async with running_server(engine=engine) as server, client(server) as c:
        names = [e["name"] for e in (await c.get("/v1/webhooks/endpoints")).json()["endpoints"]]
        assert names == ["kept"]
        response = await c.post(
            "/v1/webhooks/acme/kept", content=INVOICE, headers=signed(INVOICE, secret=secret)
        )
        assert response.status_code == 200, response.text
        assert response.json()["topic"] == "acme/webhooks/kept"
        # The groups of the bus do not see the registry.
        assert server.node.bus.groups.all() == []


async def test_a_tenants_endpoint_only_ever_publishes_into_its_tenant() -> None:
    from tests.gateways.test_ways_in import ADMIN_HASH, ADMIN_KEY

    keys = [{"name": "ops", "hash": ADMIN_HASH, "admin": True}]
    async with running_server(api_keys=keys) as server:
        secret = new_secret()
        async with client(server, Authorization=f"Bearer {ADMIN_KEY}") as admin:
            body = {"secrets": [secret], "topic": "{type}", "type": "$.type"}
            made = await admin.put("/v1/webhooks/endpoints/globex%2Fhooks", json=body)
            assert made.status_code == 201, made.text
            assert made.json()["name"] == "globex/hooks"
            refused(await admin.put("/v1/webhooks/endpoints/hooks", json=body), 400, 1000)
        async with client(server) as c:
            for kind in ("../acme/x", "acme/x", "$audit", "#", "+"):
                payload = json.dumps({"type": kind}).encode()
                headers = signed(payload, secret=secret)
                response = await c.post(
                    "/v1/webhooks/globex/hooks", content=payload, headers=headers
                )
                assert response.status_code == 200, response.text
                topic = response.json()["topic"]
                assert topic.startswith("globex/") and topic.count("/") == 1, topic
            # The same name in another tenant is another endpoint (none here).
            refused(
                await c.post(
                    "/v1/webhooks/acme/hooks", content=b"{}", headers=signed(b"{}", secret=secret)
                ),
                404,
                1132,
            )
        assert await events(server, "acme/#") == []


async def test_bad_requests_never_crash_the_server() -> None:
    async with running_server(webhooks=[billing()]) as server, client(server) as c:
        url = "/v1/webhooks/acme/billing"
        deep = b"[" * 100_000 + b"]" * 100_000
        cases: list[dict[str, Any]] = [
            {"content": deep, "headers": signed(deep)},
            {
                "content": INVOICE,
                "headers": {
                    "webhook-id": "m",
                    "webhook-timestamp": "1e9",
                    "webhook-signature": "v1,",
                },
            },
            {
                "content": INVOICE,
                "headers": {**signed(INVOICE), "webhook-signature": "v1," + "A" * 8000},
            },
            {"content": INVOICE, "headers": {**signed(INVOICE), "webhook-timestamp": "-5"}},
            {"content": INVOICE, "headers": {**signed(INVOICE), "content-type": b"\xff/\xfe"}},
        ]
        for case in cases:
            response = await c.post(url, **case)
            assert response.status_code in (200, 401, 413), response.text
            assert response.status_code == 200 or response.headers["content-type"].startswith(
                PROBLEM
            )
        # The deep body was authentic: it is kept as bytes, not parsed.
        page = await server.node.bus.history("acme/#")
        assert any(d.event.data == deep for d in page.deliveries)
        assert (await c.get("/v1/events", params={"pattern": "acme/#"})).status_code == 200
