"""Outbound webhooks against the real server: the HTTP API, delivery to real receivers, TOML.

The server runs on a loopback port (`tests.servers.running_server`) with
`webhook_allow_private` on, so that it may POST to the receivers of
`tests/server/test_webhooks_out.py` on 127.0.0.1, which verify every request
with the `standardwebhooks` package and parse it with the `cloudevents` SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from tests.server.test_webhooks_out import Receiver, receiver, status
from tests.servers import Server, running_server

from hybridbus.core.webhooks import new_secret
from hybridbus.server.config import load_config

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"


@contextlib.asynccontextmanager
async def client(server: Server, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=10.0, headers=headers) as c:
        yield c


async def publish(c: httpx.AsyncClient, topic: str, n: int) -> None:
    body = {"specversion": "1.0", "id": f"o{n}", "source": "/shop", "type": "order", "data": n}
    response = await c.post(
        f"/v1/topics/{topic}/events",
        json=body,
        headers={"content-type": "application/cloudevents+json"},
    )
    assert response.status_code in (200, 201), response.text


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def refused(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    said = response.json()
    assert said["code"] == code, said
    return said


async def test_create_deliver_rotate_disable_replay_delete() -> None:
    async with running_server(webhook_allow_private=True) as server, client(server) as c:
        peer = Receiver([])
        await peer.start()
        try:
            body = {"pattern": "orders/#", "url": peer.url, "schedule": [0.2], "jitter": 0}
            made = await c.put("/v1/webhooks/outbound/billing", json=body)
            assert made.status_code == 201, made.text
            assert made.headers["Location"] == "/v1/webhooks/outbound/billing"
            shown = made.json()
            (secret,) = shown["secrets"]  # made by the server, shown this once
            assert secret.startswith("whsec_") and shown["keys"][0].startswith("whsec:")
            assert shown["group"] == "webhook.billing" and shown["pattern"] == "orders/#"
            got = await c.get("/v1/webhooks/outbound/billing")
            listed = await c.get("/v1/webhooks/outbound")
            for text in (got.text, listed.text):
                assert secret not in text and secret[6:] not in text
            assert [w["name"] for w in listed.json()["webhooks"]] == ["billing"]
            peer.verifiers = [Webhook(secret)]

            await publish(c, "acme/orders/1", 1)
            await until(lambda: len(peer.requests) == 1)
            assert peer.event().get_id() == "o1"

            # Rotation: keep the current key by its id, add a new one; both sign.
            key_id = shown["keys"][0]
            rotated = await c.put(
                "/v1/webhooks/outbound/billing", json={**body, "secrets": [key_id, "new"]}
            )
            assert rotated.status_code == 200, rotated.text
            (fresh,) = rotated.json()["secrets"]
            assert rotated.json()["keys"][0] == key_id and len(rotated.json()["keys"]) == 2
            peer.verifiers = [
                Webhook(secret),
                Webhook(fresh),
            ]
            await publish(c, "acme/orders/2", 2)
            await until(lambda: len(peer.requests) == 2)
            assert len(peer.requests[1]["headers"]["webhook-signature"].split()) == 2
            # ... then only the new one (the receiver dropped the old).
            done = await c.put(
                "/v1/webhooks/outbound/billing",
                json={**body, "secrets": [rotated.json()["keys"][1]]},
            )
            assert done.status_code == 200 and "secrets" not in done.json()
            peer.verifiers = peer.verifiers[1:]

            disabled = await c.post("/v1/webhooks/outbound/billing/disable")
            assert disabled.json()["enabled"] is False
            await publish(c, "acme/orders/3", 3)
            await asyncio.sleep(0.3)
            assert len(peer.requests) == 2
            info = (await c.get("/v1/webhooks/outbound/billing")).json()
            assert info["lag"] >= 1 or info["pending"] >= 1
            enabled = await c.post("/v1/webhooks/outbound/billing/enable")
            assert enabled.json()["enabled"] is True
            await until(lambda: len(peer.requests) == 3)

            replayed = await c.post("/v1/webhooks/outbound/billing/replay", json={"time": 0})
            assert replayed.status_code == 200 and replayed.json()["position"]
            await until(lambda: len(peer.requests) == 6)
            assert [peer.event(i).get_id() for i in range(3, 6)] == ["o1", "o2", "o3"]

            attempts = (await c.get("/v1/webhooks/outbound/billing/attempts?limit=2")).json()
            assert len(attempts["attempts"]) == 2 and attempts["total"] == 6
            newest = attempts["attempts"][0]
            assert newest["outcome"] == "delivered" and newest["event_id"] == "o3"
            assert set(newest) >= {"time", "status", "latency", "body", "attempt", "error"}

            deleted = await c.delete("/v1/webhooks/outbound/billing")
            assert deleted.status_code == 204
            refused(await c.get("/v1/webhooks/outbound/billing"), 404, 1401)
            groups = (await c.get("/v1/groups")).json()["groups"]
            assert all(g["name"] != "webhook.billing" for g in groups)
        finally:
            await peer.stop()


async def test_a_410_over_http_disables_and_the_api_says_why() -> None:
    async with running_server(webhook_allow_private=True) as server, client(server) as c:
        secret = new_secret()
        async with receiver([secret]) as peer:
            peer.behaviour = status(410)
            body = {"pattern": "#", "url": peer.url, "secrets": [secret]}
            assert (await c.put("/v1/webhooks/outbound/gone", json=body)).status_code == 201
            await publish(c, "acme/x", 1)

            async def disabled() -> dict[str, Any]:
                while True:
                    shown = (await c.get("/v1/webhooks/outbound/gone")).json()
                    if not shown["enabled"]:
                        return shown  # type: ignore[no-any-return]
                    await asyncio.sleep(0.02)

            async with asyncio.timeout(10):
                shown = await disabled()
            assert shown["disabled_reason"] == "the receiver answered 410 Gone"
            assert shown["pending"] == 1
            # Every attempt is counted, by subscription and outcome, with its answer's time.
            text = (await c.get("/metrics")).text
            counted = re.search(
                r"^hybridbus_webhook_attempts_total"
                r'\{outcome="gone",subscription="([^"]+)"\} (\S+)$',
                text,
                re.MULTILINE,
            )
            assert counted is not None, text
            assert counted[1].endswith("/gone") and float(counted[2]) == 1.0
            timed = re.search(
                r'^hybridbus_webhook_attempt_seconds_count\{subscription="[^"]+/gone"\} (\S+)$',
                text,
                re.MULTILINE,
            )
            assert timed is not None and float(timed[1]) == 1.0


async def test_refusals_ssrf_fields_and_other_tenants() -> None:
    async with running_server() as server, client(server) as c:  # private targets refused
        for url in ("http://127.0.0.1:9/", "http://[::1]/", "http://10.0.0.1/", "file:///x"):
            said = refused(
                await c.put("/v1/webhooks/outbound/x", json={"pattern": "#", "url": url}),
                400,
                1006,
            )
            assert "url" in said["detail"]
        refused(
            await c.put("/v1/webhooks/outbound/x", json={"url": "https://a.example/"}), 400, 1006
        )
        refused(
            await c.put(
                "/v1/webhooks/outbound/x",
                json={"pattern": "#", "url": "https://a.example/", "tenant": "other"},
            ),
            400,
            1000,
        )
        made = await c.put(
            "/v1/webhooks/outbound/x", json={"pattern": "#", "url": "https://a.example/"}
        )
        assert made.status_code == 201, made.text
        refused(await c.get("/v1/webhooks/outbound/nope"), 404, 1401)
        refused(await c.post("/v1/webhooks/outbound/nope/enable"), 404, 1401)
        ordered = await c.put(
            "/v1/webhooks/outbound/x",
            json={"pattern": "#", "url": "https://a.example/", "ordered": False},
        )
        refused(ordered, 400, 1006)
        refused(
            await c.post("/v1/webhooks/outbound/x/replay", json={"position": "a", "time": 1}),
            400,
            1006,
        )


async def test_manage_is_needed_and_other_tenants_see_nothing() -> None:
    from tests.gateways.test_ways_in import SECRET as JWT_SECRET
    from tests.gateways.test_ways_in import token

    rules = {
        "anonymous": [{"allow": "*", "topics": "#"}],
        "user": [{"allow": ["manage"], "topics": "shop/#"}],  # shop/ only
    }
    async with running_server(jwt_secret=JWT_SECRET, roles=rules) as server:
        async with client(server, Authorization=f"Bearer {token()}") as c:
            shop = {"pattern": "shop/#", "url": "https://a.example/"}
            assert (await c.put("/v1/webhooks/outbound/shop", json=shop)).status_code == 201
            wide = {"pattern": "#", "url": "https://a.example/"}
            refused(await c.put("/v1/webhooks/outbound/all", json=wide), 403, 1110)
        async with client(server) as anonymous:  # tenant acme, may manage everything
            assert (await anonymous.put("/v1/webhooks/outbound/all", json=wide)).status_code == 201
        async with client(server, Authorization=f"Bearer {token()}") as c:
            listed = (await c.get("/v1/webhooks/outbound")).json()["webhooks"]
            assert [w["name"] for w in listed] == ["shop"]  # "all" is not shop's to manage
            refused(await c.get("/v1/webhooks/outbound/all"), 404, 1401)
            other = token(tenantid="globex")
        async with client(server, Authorization=f"Bearer {other}") as c:
            assert (await c.get("/v1/webhooks/outbound")).json()["webhooks"] == []
            refused(await c.get("/v1/webhooks/outbound/shop"), 404, 1401)


async def test_toml_subscriptions_and_a_restart_keeps_the_api_ones(tmp_path: Path) -> None:
    secret = new_secret()
    async with receiver([secret]) as peer:
        toml = tmp_path / "hybridbus.toml"
        toml.write_text(
            "webhook_allow_private = true\n"
            "[[outbound_webhooks]]\n"
            'tenant = "acme"\nname = "fixed"\npattern = "orders/#"\n'
            f'url = "{peer.url}"\nsecrets = ["{secret}"]\nmode = "structured"\n'
        )
        config = load_config(toml)
        assert config.outbound_webhooks[0].name == "fixed"
        settings = {
            "outbound_webhooks": config.outbound_webhooks,
            "webhook_allow_private": True,
            "engine": f"sqlite://{tmp_path / 'data'}",
        }
        async with running_server(**settings) as server, client(server) as c:
            fixed = (await c.get("/v1/webhooks/outbound/fixed")).json()
            assert fixed["origin"] == "config" and fixed["mode"] == "structured"
            refused(await c.delete("/v1/webhooks/outbound/fixed"), 403, 1110)
            body = {"pattern": "orders/#", "url": peer.url, "secrets": [secret]}
            assert (await c.put("/v1/webhooks/outbound/made", json=body)).status_code == 201
            await publish(c, "acme/orders/1", 1)
            await until(lambda: len(peer.requests) == 2)
        async with running_server(**settings) as server, client(server) as c:
            names = [w["name"] for w in (await c.get("/v1/webhooks/outbound")).json()["webhooks"]]
            assert names == ["fixed", "made"]
            await publish(c, "acme/orders/2", 2)
            await until(lambda: len(peer.requests) == 4)
            types = {r["headers"]["Content-Type"].split(";")[0] for r in peer.requests}
            assert types == {"application/cloudevents+json", "application/json"}


def test_toml_refuses_a_subscription_without_secrets(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(
        '[[outbound_webhooks]]\ntenant = "acme"\nname = "x"\npattern = "#"\n'
        'url = "https://a.example/"\n'
    )
    with pytest.raises(Exception, match=r"secrets: 1 or 2.*outbound_webhooks\[0\]"):
        load_config(toml)
