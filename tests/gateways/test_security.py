"""The access model end to end, over real sockets: tokens, keys, tenants, rules, revocation, limits.

Every test runs the real application (`tests.servers.running_server`) on a
loopback port and talks to it the way a client would: the `websockets`
library for the protocol (`WsClient`), httpx for the HTTP API and SSE. Tokens
are real JWTs (`hybridbus.server.tokens.mint`, or PyJWT and hand-made ones for
the forgeries), signed with real RSA, EC and Ed25519 keys from `cryptography`.
What each test asserts is what docs/security.md promises, close codes and
error codes included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from tests.gateways.support import SseReader
from tests.logscan import server_logs
from tests.servers import Server, WsClient, event, running_server

from hybridbus.errors import ErrorCode
from hybridbus.server.access import new_api_key
from hybridbus.server.keys import KeySpec
from hybridbus.server.tokens import mint

pytestmark = pytest.mark.timeout(30)

PROBLEM = "application/problem+json"
CLOUDEVENT = {"content-type": "application/cloudevents+json"}
SECRET = "a-test-secret-of-at-least-32-bytes-long!"
OTHER_SECRET = "another-secret-of-at-least-32-bytes-long"
HS = KeySpec(alg="HS256", secret=SECRET)
# The role every token of these tests has unless it says otherwise: anything in its tenant.
USER_ROLES: dict[str, list[dict[str, Any]]] = {"user": [{"allow": "*", "topics": "#"}]}

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

ADMIN_KEY, ADMIN_HASH = new_api_key()
ACME_KEY, ACME_HASH = new_api_key()
GLOBEX_KEY, GLOBEX_HASH = new_api_key()
API_KEYS = [
    {"name": "ops", "hash": ADMIN_HASH, "admin": True},
    {"name": "billing", "hash": ACME_HASH, "tenant": "acme"},
    {"name": "globex-billing", "hash": GLOBEX_HASH, "tenant": "globex"},
]


# -- keys and tokens --------------------------------------------------------------------


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims(**fields: Any) -> dict[str, Any]:
    """Valid claims for alice of acme (5 minutes); a field given as None is left out."""
    now = time.time()
    base: dict[str, Any] = {
        "sub": "alice",
        "tenantid": "acme",
        "roles": ["user"],
        "iat": int(now),
        "exp": now + 300,
    }
    base.update(fields)
    return {name: value for name, value in base.items() if value is not None}


def hs256(payload: dict[str, Any], *, secret: str = SECRET, kid: str | None = None) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": kid} if kid else None)


def token(sub: str = "alice", tenant: str = "acme", **fields: Any) -> str:
    """A valid HS256 token of the default server key (no kid)."""
    return hs256(claims(sub=sub, tenantid=tenant, **fields))


def jwk(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK (RFC 7517) of `key`, named `kid`."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        entry: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    else:
        entry = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "EdDSA"
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    """Write the key set and make sure its mtime moves on (the ring compares it)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps({"keys": list(keys)}))
    mtime = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(mtime, mtime))


@pytest.fixture(autouse=True)
def no_credential_in_the_logs() -> Iterator[None]:
    """Every line the server logs in these tests (any level, its own formatter and filters)
    holds none of their secrets, nor the first 20 characters of one, nor any JWT or API key."""
    pems = [private_pem(key).splitlines()[1] for key in (RSA_KEY, EC_KEY)]
    secrets = [SECRET, OTHER_SECRET, ADMIN_KEY, ACME_KEY, GLOBEX_KEY, *pems]
    with server_logs() as logs:
        yield
    leaks = logs.leaks(secrets)
    assert not leaks, f"{len(leaks)} log lines hold a credential, e.g. {leaks[0][:2000]}"


# -- servers and clients -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def secured(**settings: Any) -> AsyncIterator[Server]:
    """A server with the HS256 test secret, no anonymous clients, the role `user`, API keys."""
    settings.setdefault("jwt_secret", SECRET)
    settings.setdefault("anonymous_tenant", None)
    settings.setdefault("roles", USER_ROLES)
    settings.setdefault("api_keys", API_KEYS)
    async with running_server(**settings) as server:
        yield server


def connected(
    server: Server, credential: str | None = None
) -> contextlib.AbstractAsyncContextManager[WsClient]:
    """A protocol client whose connect (with `credential`, if any) was accepted."""
    if credential is None:
        return WsClient.open(server.url)
    return WsClient.open(server.url, token=credential)


async def refused(server: Server, **connect_fields: Any) -> tuple[int | None, dict[str, Any]]:
    """Send a connect that must be refused: (the close code, the `disconnect` message)."""
    async with asyncio.timeout(3), WsClient.open(server.url, connect_first=False) as client:
        await client.send(client.command("connect", **connect_fields))
        closed = await client.closed()
    assert not client.replies, client.replies  # a refused connect is never answered
    disconnects = [p for p in client.pushes if p["type"] == "disconnect"]
    assert len(disconnects) == 1, client.pushes
    return closed.code, disconnects[0]


async def closed_with(client: WsClient, seconds: float = 3.0) -> tuple[int | None, dict[str, Any]]:
    """Read until the server closes `client` (within `seconds`): (code, `disconnect`)."""
    async with asyncio.timeout(seconds):
        closed = await client.closed()
    disconnects = [p for p in client.pushes if p["type"] == "disconnect"]
    assert len(disconnects) == 1, client.pushes
    return closed.code, disconnects[0]


async def alive(client: WsClient) -> bool:
    async with asyncio.timeout(3):
        return (await client.request("ping"))["type"] == "reply"


def is_error(answer: dict[str, Any], code: ErrorCode, *, retriable: bool = False) -> bool:
    return answer["type"] == "error" and answer["code"] == code and answer["retriable"] is retriable


def http(server: Server, credential: str | None = None) -> httpx.AsyncClient:
    """An HTTP client of `server`, presenting `credential` as the bearer (if any)."""
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    return httpx.AsyncClient(base_url=server.http, timeout=5.0, headers=headers)


async def post(client: httpx.AsyncClient, topic: str, **fields: Any) -> httpx.Response:
    return await client.post(
        f"/v1/topics/{topic}/events", content=json.dumps(event(**fields)), headers=CLOUDEVENT
    )


def assert_problem(response: httpx.Response, status: int, code: ErrorCode) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    return body


# -- 1. refused tokens -----------------------------------------------------------------------


def forged(kid: str | None = "hs") -> str:
    return hs256(claims(), secret=OTHER_SECRET, kid=kid)


def tampered() -> str:
    header, _, signature = hs256(claims(), kid="hs").split(".")
    return f"{header}.{b64json(claims(tenantid='globex'))}.{signature}"


def unsigned() -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': 'hs'})}.{b64json(claims())}."


def unsigned_capitalized() -> str:
    return f"{b64json({'alg': 'None', 'typ': 'JWT'})}.{b64json(claims())}."


def unknown_kid() -> str:
    return hs256(claims(), kid="retired")


def hmac_over_the_rsa_public_key() -> str:
    """HS256 "signed" with the RSA key's public PEM: the classic algorithm confusion."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa'})}.{b64json(claims())}"
    mac = hmac.new(public_pem(RSA_KEY).encode(), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64(mac.digest())}"


def rs256_naming_the_hmac_key() -> str:
    return jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "hs"})


def expired(kid: str | None = "hs") -> str:
    now = time.time()
    return hs256(claims(iat=int(now) - 120, exp=now - 60), kid=kid)


def not_yet_valid() -> str:
    return hs256(claims(nbf=time.time() + 60), kid="hs")


def without_tenant() -> str:
    return hs256(claims(tenantid=None), kid="hs")


def system_tenant() -> str:
    return hs256(claims(tenantid="$audit"), kid="hs")


def without_exp() -> str:
    return hs256(claims(exp=None), kid="hs")


REFUSALS: list[tuple[Callable[[], str], int]] = [
    (forged, 4501),
    (tampered, 4501),
    (unsigned, 4501),
    (unsigned_capitalized, 4501),
    (unknown_kid, 4501),
    (hmac_over_the_rsa_public_key, 4501),
    (rs256_naming_the_hmac_key, 4501),
    (expired, 4004),
    (not_yet_valid, 4501),
    (without_tenant, 4501),
    (system_tenant, 4501),
    (without_exp, 4501),
    (lambda: "garbage", 4501),
    (lambda: "a.b.c", 4501),
]


@pytest.mark.parametrize(
    ("make", "code"), REFUSALS, ids=[make.__name__.strip("<>") for make, _ in REFUSALS]
)
async def test_a_refused_token_closes_the_connection_with_its_documented_code(
    make: Callable[[], str], code: int
) -> None:
    keys = [
        {"kid": "hs", "alg": "HS256", "secret": SECRET},
        {"kid": "rsa", "alg": "RS256", "public_key": public_pem(RSA_KEY)},
    ]
    async with secured(jwt_secret=None, jwt_keys=keys) as server:
        # The control: a good token of each key is accepted by the same server.
        async with connected(server, hs256(claims(), kid="hs")) as good:
            assert await alive(good)
        rsa_token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa"})
        async with connected(server, rsa_token) as good:
            assert await alive(good)

        closed, disconnect = await refused(server, token=make())
        assert closed == code
        assert disconnect["code"] == code
        assert disconnect["reconnect"] is (code == 4004)  # 4004: get a new token, reconnect
        assert SECRET not in disconnect["reason"]


async def test_no_token_is_refused_4501_unless_anonymous_clients_are_configured() -> None:
    async with secured() as server:
        closed, disconnect = await refused(server)
        assert (closed, disconnect["code"], disconnect["reconnect"]) == (4501, 4501, False)
        async with connected(server, token()) as client:  # a token still connects
            assert await alive(client)


# -- 2. keys and rotation --------------------------------------------------------------------


async def test_two_configured_keys_are_live_at_once_each_with_its_own_algorithm() -> None:
    old = KeySpec(kid="old", alg="HS256", secret=SECRET)
    new = KeySpec(kid="new", alg="ES256", private_key=private_pem(EC_KEY))
    keys = [
        {"kid": "old", "alg": "HS256", "secret": SECRET},
        {"kid": "new", "alg": "ES256", "public_key": public_pem(EC_KEY)},
    ]
    async with secured(jwt_secret=None, jwt_keys=keys) as server:
        async with (
            connected(server, mint(old, sub="alice", tenant="acme", roles=["user"])) as a,
            connected(server, mint(new, sub="bob", tenant="acme", roles=["user"])) as b,
        ):
            await a.request("subscribe", pattern="x")
            assert (await b.request("publish", topic="x", event=event("e1")))["type"] == "reply"
            assert (await a.push())["event"]["id"] == "e1"
            assert await alive(a) and await alive(b)
        # The key fixes the algorithm: an ES256 token naming the HS256 key is refused.
        wrong = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "old"})
        assert (await refused(server, token=wrong))[0] == 4501


async def test_a_jwks_rotation_takes_the_new_key_while_old_connections_stay(
    tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk(EC_KEY, "A"))
    a_token = jwt.encode(claims(sub="alice"), EC_KEY, algorithm="ES256", headers={"kid": "A"})
    b_token = jwt.encode(claims(sub="bob"), ED_KEY, algorithm="EdDSA", headers={"kid": "B"})
    async with (
        secured(jwt_secret=None, jwks_file=str(jwks)) as server,
        connected(server, a_token) as on_a,
    ):
        assert (await refused(server, token=b_token))[0] == 4501  # B is not published yet
        write_jwks(jwks, jwk(EC_KEY, "A"), jwk(ED_KEY, "B"))
        await asyncio.sleep(1.1)  # the ring looks at the file at most once a second
        async with connected(server, b_token) as on_b:
            assert await alive(on_b)
            assert await alive(on_a)  # the connection made with A is untouched
            async with connected(server, a_token) as again:  # and A still verifies
                assert await alive(again)


async def test_a_broken_jwks_file_keeps_the_last_good_keys_and_a_removed_key_is_refused(
    tmp_path: Path,
) -> None:
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk(EC_KEY, "A"), jwk(ED_KEY, "B"))
    a_token = jwt.encode(claims(sub="alice"), EC_KEY, algorithm="ES256", headers={"kid": "A"})
    b_token = jwt.encode(claims(sub="bob"), ED_KEY, algorithm="EdDSA", headers={"kid": "B"})
    async with secured(jwt_secret=None, jwks_file=str(jwks)) as server:
        jwks.write_text('{"keys": [')  # half-written
        os.utime(jwks, ns=(jwks.stat().st_mtime_ns + 10**9,) * 2)
        await asyncio.sleep(1.1)
        async with connected(server, a_token) as a, connected(server, b_token) as b:
            assert await alive(a) and await alive(b)
        write_jwks(jwks, jwk(ED_KEY, "B"))  # the old key A is retired
        await asyncio.sleep(1.1)
        assert (await refused(server, token=a_token))[0] == 4501
        async with connected(server, b_token) as b:
            assert await alive(b)


# -- 3. expiry and refresh -------------------------------------------------------------------


async def test_a_refresh_keeps_the_connection_and_a_lapsed_token_closes_4004() -> None:
    async with secured() as server:
        expires = time.time() + 1.5
        async with (
            connected(server, token(exp=expires, sid="s-1")) as keeps,
            connected(server, token(exp=expires, sid="s-2")) as lapses,
        ):
            reply = await keeps.request("refresh", token=token(exp=expires + 60, sid="s-1"))
            assert reply["type"] == "reply", reply
            assert reply["result"]["expires"] == pytest.approx(expires + 60)

            code, disconnect = await closed_with(lapses, seconds=4.0)
            at = time.time()
            assert code == 4004
            assert disconnect["code"] == 4004 and disconnect["reconnect"] is True
            assert expires <= at < expires + 1.5, at - expires
            # Past the first token's expiry the refreshed connection still answers.
            assert time.time() > expires
            assert await alive(keeps)

            # A refresh may not change the user: the connection is closed 4502.
            await keeps.send(keeps.command("refresh", token=token(sub="bob")))
            code, disconnect = await closed_with(keeps)
            assert (code, disconnect["code"], disconnect["reconnect"]) == (4502, 4502, False)


async def test_a_refresh_with_another_tenant_or_an_expired_token_closes_the_connection() -> None:
    async with secured() as server:
        async with connected(server, token()) as client:
            await client.send(client.command("refresh", token=token(tenant="globex")))
            assert (await closed_with(client))[0] == 4502
        async with connected(server, token()) as client:
            await client.send(client.command("refresh", token=expired(None)))
            assert (await closed_with(client))[0] == 4004
        async with connected(server, token()) as client:
            await client.send(client.command("refresh", token=forged(None)))
            assert (await closed_with(client))[0] == 4501


# -- 4. tenants -------------------------------------------------------------------------------


async def test_tenants_never_see_each_other_over_the_wire() -> None:
    async with (
        secured() as server,
        connected(server, token("alice", "acme")) as acme,
        connected(server, token("alice", "globex")) as globex,  # the same user id elsewhere
    ):
        for client in (acme, globex):
            assert (await client.request("subscribe", pattern="#"))["type"] == "reply"
        for name, client in (("a1", acme), ("g1", globex), ("a2", acme), ("g2", globex)):
            ack = await client.request("publish", topic="x", event=event(name))
            assert ack["type"] == "reply", ack
        async with asyncio.timeout(3):
            acme_seen = [await acme.push() for _ in range(2)]
            globex_seen = [await globex.push() for _ in range(2)]
        assert [e["event"]["id"] for e in acme_seen] == ["a1", "a2"]
        assert [e["event"]["id"] for e in globex_seen] == ["g1", "g2"]
        assert {e["topic"] for e in acme_seen + globex_seen} == {"x"}  # relative to the tenant
        # Nothing of the other tenant arrived meanwhile (a ping round trip reads on).
        assert await alive(acme) and await alive(globex)
        assert not [p for p in acme.pushes + globex.pushes if p["type"] == "event"]

        history = await acme.request("history", pattern="#")
        assert [e["event"]["id"] for e in history["result"]["events"]] == ["a1", "a2"]
        assert {e["topic"] for e in history["result"]["events"]} == {"x"}
        # Both tenants' events are on the one bus, each under its tenant.
        everything = await server.node.bus.history("#")
        assert sorted(d.topic for d in everything.deliveries) == ["acme/x"] * 2 + ["globex/x"] * 2


async def test_a_tenant_api_key_names_only_its_own_tenant_s_topics() -> None:
    async with secured() as server, http(server, ACME_KEY) as acme:
        for topic in ("globex/x", "acmeco/x", "$audit/acme/revoke"):
            response = await acme.get(f"/v1/topics/{topic}/events")
            assert_problem(response, 403, ErrorCode.FORBIDDEN)
            assert_problem(await post(acme, topic), 403, ErrorCode.FORBIDDEN)
        for pattern in ("#", "+/x", "globex/#", "$audit/#"):
            response = await acme.get("/v1/events", params={"pattern": pattern})
            assert_problem(response, 403, ErrorCode.FORBIDDEN)
        response = await acme.get("/v1/sse", params={"pattern": "+/x"})
        assert_problem(response, 403, ErrorCode.FORBIDDEN)
        assert (await post(acme, "acme/x", id="k1")).status_code == 201
        page = (await acme.get("/v1/events", params={"pattern": "acme/#"})).json()
        assert [(e["topic"], e["event"]["id"]) for e in page["events"]] == [("acme/x", "k1")]
        # The same with the key in X-Api-Key.
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0) as plain:
            headers = {"X-Api-Key": ACME_KEY}
            response = await plain.get("/v1/topics/globex/x/events", headers=headers)
            assert_problem(response, 403, ErrorCode.FORBIDDEN)
            response = await plain.get("/v1/topics/acme/x/events", headers=headers)
            assert response.status_code == 200, response.text


async def test_listing_topics_never_reveals_another_tenant() -> None:
    async with (
        secured() as server,
        http(server, ADMIN_KEY) as admin,
        http(server, ACME_KEY) as acme,
    ):
        for topic in ("acme/x", "acmeco/secret-plans", "globex/merger"):
            assert (await post(admin, topic)).status_code == 201
        response = await acme.get("/v1/topics", params={"prefix": "acme/"})
        assert response.status_code == 200, response.text
        assert [t["topic"] for t in response.json()["topics"]] == ["acme/x"]
        for prefix in (None, "", "acme", "a", "globex/"):
            params = {} if prefix is None else {"prefix": prefix}
            response = await acme.get("/v1/topics", params=params)
            if response.status_code == 200:
                names = [t["topic"] for t in response.json()["topics"]]
                assert all(name.startswith("acme/") for name in names), (prefix, names)
            else:
                assert_problem(response, 403, ErrorCode.FORBIDDEN)


# -- 5. rules ---------------------------------------------------------------------------------

EDITOR_ROLES: dict[str, list[dict[str, Any]]] = {
    "editor": [
        {"allow": ["subscribe", "history", "presence"], "topics": "docs/#"},
        {"deny": "*", "topics": "docs/secret/#"},
    ]
}


async def test_rules_decide_each_operation_over_the_wire() -> None:
    async with secured(roles=EDITOR_ROLES) as server:
        async with connected(server, token(roles=["editor"])) as client:
            for pattern in ("docs/42/edits", "docs/42", "docs/42/#", "docs/public/+"):
                assert (await client.request("subscribe", pattern=pattern))["type"] == "reply"
            # A pattern that could match a topic under the denied docs/secret/# is refused,
            # never narrowed: docs/# and docs/+/edits (docs/secret/edits), and docs/+ too
            # (docs/secret: `#` matches zero segments as well, protocol.md §3.4).
            refused_patterns = ("docs/#", "docs/+", "docs/+/edits", "docs/secret/x", "#", "+/x")
            for pattern in (*refused_patterns, "users/alice"):
                answer = await client.request("subscribe", pattern=pattern)
                assert is_error(answer, ErrorCode.FORBIDDEN), (pattern, answer)
            # No publish rule: no publish.
            answer = await client.request("publish", topic="docs/42", event=event())
            assert is_error(answer, ErrorCode.FORBIDDEN), answer
            assert (await client.request("history", pattern="docs/42/+"))["type"] == "reply"
            assert is_error(await client.request("history", pattern="docs/#"), 1110)
            assert (await client.request("presence", topic="docs/42"))["type"] == "reply"
            assert is_error(await client.request("presence", topic="docs/secret/1"), 1110)
            assert await alive(client)  # every refusal left the connection open
        # Nothing was published by the refused publish.
        assert (await server.node.bus.history("#")).deliveries == []


async def test_rules_decide_the_http_api_for_a_jwt_bearer_the_same_way() -> None:
    async with (
        secured(roles=EDITOR_ROLES) as server,
        http(server, token(roles=["editor"])) as client,
    ):
        response = await client.get("/v1/topics/acme/docs/42/presence")
        assert response.status_code == 200, response.text
        response = await client.get("/v1/topics/acme/docs/secret/1/presence")
        assert_problem(response, 403, ErrorCode.FORBIDDEN)
        response = await client.get("/v1/events", params={"pattern": "acme/docs/42/#"})
        assert response.status_code == 200, response.text
        for pattern in (
            "acme/docs/#",
            "acme/docs/+/edits",
            "acme/docs/secret/+",
            "globex/x",
            "#",
        ):
            response = await client.get("/v1/events", params={"pattern": pattern})
            assert_problem(response, 403, ErrorCode.FORBIDDEN)
        response = await client.get("/v1/topics/acme/docs/secret/1/events")
        assert_problem(response, 403, ErrorCode.FORBIDDEN)
        assert_problem(await post(client, "acme/docs/42"), 403, ErrorCode.FORBIDDEN)
        # ?token= (for EventSource) is the same credential.
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0) as plain:
            params = {"pattern": "acme/docs/#", "token": token(roles=["editor"])}
            assert_problem(await plain.get("/v1/events", params=params), 403, 1110)
            params["pattern"] = "acme/docs/42/#"
            assert (await plain.get("/v1/events", params=params)).status_code == 200


# -- 6. revocation ----------------------------------------------------------------------------


async def test_revocations_close_live_connections_refuse_new_ones_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    settings: dict[str, Any] = {"engine": "sqlite://" + str(tmp_path / "data")}
    lost = token(sid="s-lost")
    kept = token(sid="s-kept")
    old_bob = token("bob", iat=int(time.time()))
    async with secured(**settings) as server, http(server, ADMIN_KEY) as admin:
        async with (
            connected(server, lost) as lost_client,
            connected(server, kept) as kept_client,
            connected(server, old_bob) as bob_client,
        ):
            started = time.monotonic()
            body = {"kind": "session", "value": "s-lost", "tenant": "acme", "reason": "laptop"}
            response = await admin.post("/v1/revocations", json=body)
            assert response.status_code == 201, response.text
            code, disconnect = await closed_with(lost_client, seconds=2.0)
            elapsed = time.monotonic() - started
            assert (code, disconnect["code"], disconnect["reconnect"]) == (4502, 4502, False)
            assert elapsed < 1.0, elapsed
            assert await alive(kept_client)  # another session of the same user is untouched
            assert await alive(bob_client)

            # A tenant's own API key revokes a user inside its tenant.
            async with http(server, ACME_KEY) as acme:
                response = await acme.post("/v1/revocations", json={"kind": "user", "value": "bob"})
                assert response.status_code == 201, response.text
                revocation = response.json()
                assert revocation["tenant"] == "acme" and revocation["kind"] == "user"
            assert (await closed_with(bob_client, seconds=2.0))[0] == 4502

        assert (await refused(server, token=lost))[0] == 4502
        assert (await refused(server, token=token(sid="s-lost")))[0] == 4502  # any token of it
        assert (await refused(server, token=old_bob))[0] == 4502
        new_bob = token("bob", iat=int(revocation["at"]) + 1)  # a login after the revocation
        async with connected(server, kept) as client, connected(server, new_bob) as bob:
            assert await alive(client) and await alive(bob)
        # The same user of another tenant was not revoked.
        async with connected(server, token("bob", "globex", iat=int(time.time()))) as other:
            assert await alive(other)
        # HTTP refuses revoked credentials too: 403 REVOKED.
        async with http(server, lost) as revoked:
            response = await revoked.get("/v1/topics/acme/x/events")
            assert_problem(response, 403, ErrorCode.REVOKED)

    # A new server on the same data: the revocations were stored in the engine.
    async with secured(**settings) as server:
        assert (await refused(server, token=lost))[0] == 4502
        assert (await refused(server, token=old_bob))[0] == 4502
        async with connected(server, kept) as client, connected(server, new_bob) as bob:
            assert await alive(client) and await alive(bob)


async def test_only_admins_and_a_tenant_s_own_keys_may_revoke() -> None:
    body = {"kind": "session", "value": "s-1", "tenant": "globex"}
    async with secured() as server, connected(server, token("eve", "globex", sid="s-1")) as eve:
        async with http(server, ACME_KEY) as acme:
            assert_problem(await acme.post("/v1/revocations", json=body), 403, 1110)
        async with http(server, token("mallory", "globex")) as user:  # a plain user of globex
            assert_problem(await user.post("/v1/revocations", json=body), 403, 1110)
        async with http(server, token("root", "acme")) as user:  # a user in its own tenant
            response = await user.post("/v1/revocations", json={**body, "tenant": "acme"})
            assert_problem(response, 403, ErrorCode.FORBIDDEN)
        async with http(server, token("key:billing", "globex")) as user:  # named like a key
            assert_problem(await user.post("/v1/revocations", json=body), 403, 1110)
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0) as nobody:
            response = await nobody.post("/v1/revocations", json=body)
            assert response.status_code == 401, response.text
        assert await alive(eve)  # none of those revoked anything
        async with http(server, GLOBEX_KEY) as globex:
            assert (await globex.post("/v1/revocations", json=body)).status_code == 201
        assert (await closed_with(eve))[0] == 4502


async def test_an_admin_token_may_revoke_anywhere() -> None:
    async with secured() as server, connected(server, token("eve", "globex", sid="s-9")) as eve:
        async with http(server, token("root", "ops", admin=True)) as root:
            body = {"kind": "session", "value": "s-9", "tenant": "globex"}
            assert (await root.post("/v1/revocations", json=body)).status_code == 201
        assert (await closed_with(eve))[0] == 4502


# -- 7. rate limits ---------------------------------------------------------------------------


async def publish_many(client: WsClient, count: int, prefix: str) -> list[dict[str, Any]]:
    """Send `count` publishes in one frame; their answers, in order."""
    commands = [
        client.command("publish", topic="x", event=event(f"{prefix}{n}")) for n in range(count)
    ]
    await client.send(*commands)
    async with asyncio.timeout(3):
        return [await client.answer(c["id"]) for c in commands]


async def test_a_tenant_over_its_publish_rate_does_not_slow_another_tenant() -> None:
    async with (
        # A slow refill (one event per 5 s): the bucket stays empty for the whole test.
        secured(tenant_publish_rate=0.2, tenant_publish_burst=20) as server,
        connected(server, token("alice", "acme")) as acme,
        connected(server, token("bob", "acme")) as acme_too,
        connected(server, token("carol", "globex")) as globex,
    ):
        flooding = asyncio.create_task(publish_many(acme, 100, "a"))
        globex_answers = await publish_many(globex, 15, "g")
        acme_answers = await flooding
        assert all(a["type"] == "reply" for a in globex_answers), globex_answers
        ok = [a for a in acme_answers if a["type"] == "reply"]
        limited = [a for a in acme_answers if a["type"] == "error"]
        assert 20 <= len(ok) <= 21, len(ok)
        assert limited and all(is_error(a, ErrorCode.RATE_LIMITED, retriable=True) for a in limited)
        assert await alive(acme)  # refused publishes leave the connection open
        # The tenant's bucket is shared by all its connections.
        answer = await acme_too.request("publish", topic="x", event=event())
        assert is_error(answer, ErrorCode.RATE_LIMITED, retriable=True), answer
        # And by its HTTP callers: 429 with Retry-After.
        async with http(server, ACME_KEY) as client:
            response = await post(client, "acme/x")
            assert_problem(response, 429, ErrorCode.RATE_LIMITED)
            assert int(response.headers["Retry-After"]) >= 1
        async with http(server, GLOBEX_KEY) as client:  # globex has 5 of its 20 left
            assert (await post(client, "globex/x")).status_code == 201


async def test_the_per_connection_publish_rate_limits_one_connection_only() -> None:
    async with (
        secured(publish_rate=5, publish_burst=5) as server,
        connected(server, token("alice")) as fast,
        connected(server, token("alice")) as other,
    ):
        answers = await publish_many(fast, 20, "f")
        ok = [a for a in answers if a["type"] == "reply"]
        assert 5 <= len(ok) <= 8, len(ok)
        assert all(
            is_error(a, ErrorCode.RATE_LIMITED, retriable=True)
            for a in answers
            if a["type"] == "error"
        )
        assert await alive(fast)
        assert all(a["type"] == "reply" for a in await publish_many(other, 5, "o"))


async def test_an_http_caller_over_the_publish_rate_gets_429_with_retry_after() -> None:
    async with secured(publish_rate=2, publish_burst=2) as server, http(server, ACME_KEY) as api:
        statuses = []
        for _ in range(6):
            response = await post(api, "acme/x")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert_problem(response, 429, ErrorCode.RATE_LIMITED)
                assert int(response.headers["Retry-After"]) >= 1
        assert statuses[:2] == [201, 201]
        assert 429 in statuses, statuses


async def test_an_http_batch_costs_one_publish_per_event_and_is_refused_whole() -> None:
    batch = {"content-type": "application/cloudevents-batch+json"}
    async with secured(publish_rate=1, publish_burst=5) as server, http(server, ACME_KEY) as api:

        async def send(count: int) -> httpx.Response:
            body = json.dumps([event() for _ in range(count)])
            return await api.post("/v1/topics/acme/b/events", content=body, headers=batch)

        too_big = await send(6)  # more than the burst can ever hold
        assert_problem(too_big, 429, ErrorCode.LIMIT_EXCEEDED)
        assert (await send(3)).status_code == 201
        refused_batch = await send(3)  # 2 tokens left: none went to the refused batch
        assert_problem(refused_batch, 429, ErrorCode.RATE_LIMITED)
        history = await api.get("/v1/topics/acme/b/events")
        assert len(history.json()["events"]) == 3  # nothing of the refused batches


# -- 8. limits --------------------------------------------------------------------------------


async def test_connections_per_user_are_limited_and_freed_when_one_closes() -> None:
    async with (
        secured(max_connections_per_user=2) as server,
        connected(server, token("alice")) as first,
    ):
        async with connected(server, token("alice")):
            closed, disconnect = await refused(server, token=token("alice"))
            assert (closed, disconnect["code"], disconnect["reconnect"]) == (4005, 4005, True)
            async with connected(server, token("bob")) as bob:  # other users are unaffected
                assert await alive(bob)
            async with connected(server, token("alice", "globex")) as namesake:
                assert await alive(namesake)
        async with asyncio.timeout(3):
            while server.node.connections > 1:  # the second one is gone on the server
                await asyncio.sleep(0.01)
        async with connected(server, token("alice")) as again:
            assert await alive(again) and await alive(first)


async def test_subscriptions_per_connection_are_limited() -> None:
    async with secured(max_subscriptions=2) as server, connected(server, token()) as client:
        for pattern in ("a", "b"):
            assert (await client.request("subscribe", pattern=pattern))["type"] == "reply"
        answer = await client.request("subscribe", pattern="c")
        assert answer["type"] == "error" and answer["code"] == ErrorCode.TOO_MANY_SUBSCRIPTIONS
        assert await alive(client)
        assert (await client.request("unsubscribe", pattern="a"))["type"] == "reply"
        assert (await client.request("subscribe", pattern="c"))["type"] == "reply"


# -- 9. API keys, audit, SSE ------------------------------------------------------------------


async def audit_events(client: httpx.AsyncClient, kinds: set[str]) -> list[dict[str, Any]]:
    """The `$audit/#` events, read until every audit type in `kinds` is there (3 s at most)."""
    async with asyncio.timeout(3):
        while True:
            response = await client.get("/v1/events", params={"pattern": "$audit/#"})
            assert response.status_code == 200, response.text
            events: list[dict[str, Any]] = response.json()["events"]
            if kinds <= {e["event"]["type"].removeprefix("io.hybridbus.audit.") for e in events}:
                return events
            await asyncio.sleep(0.05)


async def test_an_admin_key_acts_anywhere_and_reads_the_audit_trail() -> None:
    async with secured() as server, http(server, ADMIN_KEY) as admin:
        assert (await post(admin, "globex/x", id="adm-1")).status_code == 201
        body = {"kind": "token", "value": "jti-1", "tenant": "acme", "reason": "leaked"}
        assert (await admin.post("/v1/revocations", json=body)).status_code == 201
        events = await audit_events(admin, {"admin.publish", "revoke", "key.use"})
        by_kind = {e["event"]["type"].removeprefix("io.hybridbus.audit."): e for e in events}
        assert by_kind["admin.publish"]["topic"] == "$audit/globex/admin.publish"
        assert by_kind["admin.publish"]["event"]["data"]["topic"] == "globex/x"
        assert by_kind["revoke"]["topic"] == "$audit/acme/revoke"
        revoke = by_kind["revoke"]["event"]["data"]
        assert (revoke["kind"], revoke["value"], revoke["by"]["user"]) == (
            "token",
            "jti-1",
            "key:ops",
        )
        assert by_kind["key.use"]["topic"] == "$audit/_admin/key.use"
        assert by_kind["key.use"]["event"]["data"]["key"] in ("ops", "key:ops")
        assert all(e["event"]["source"].startswith("/hybridbus/") for e in events)
        # `#` does not match the system's topics, even for an admin.
        page = (await admin.get("/v1/events", params={"pattern": "#"})).json()
        assert [e["topic"] for e in page["events"]] == ["globex/x"]

        # Nobody else reads the audit: a tenant key, a JWT (`$audit/#` is relative: acme/$audit/#).
        async with http(server, ACME_KEY) as acme:
            for pattern in ("$audit/#", "$audit/acme/revoke"):
                response = await acme.get("/v1/events", params={"pattern": pattern})
                assert_problem(response, 403, ErrorCode.FORBIDDEN)
        async with connected(server, token()) as client:
            answer = await client.request("history", pattern="$audit/#")  # acme/$audit/#
            assert answer["type"] == "error" or answer["result"]["events"] == [], answer
            answer = await client.request("subscribe", pattern="#")
            assert answer["type"] == "reply"
            assert (await client.request("history", pattern="#"))["result"]["events"] == []


async def test_an_admin_token_reads_absolute_topics_over_the_wire() -> None:
    async with (
        secured() as server,
        http(server, ADMIN_KEY) as admin,
        connected(server, token("root", "ops", admin=True)) as root,
    ):
        assert (await root.request("subscribe", pattern="$audit/acme/#"))["type"] == "reply"
        body = {"kind": "user", "value": "zed", "tenant": "acme"}
        assert (await admin.post("/v1/revocations", json=body)).status_code == 201
        async with asyncio.timeout(3):
            push = await root.push()
        assert push["topic"] == "$audit/acme/revoke"


async def test_bad_http_credentials_are_401_with_www_authenticate() -> None:
    unknown, _ = new_api_key()
    async with secured() as server, httpx.AsyncClient(base_url=server.http, timeout=5) as client:
        attempts: list[dict[str, str]] = [
            {"Authorization": f"Bearer {unknown}"},
            {"X-Api-Key": unknown},
            {"Authorization": f"Basic {ACME_KEY}"},
            {"Authorization": "Bearer"},
            {"Authorization": ACME_KEY},
            {"Authorization": f"Bearer {forged(None)}"},
            {},  # no credentials and no anonymous tenant
        ]
        for headers in attempts:
            response = await client.get("/v1/topics/acme/x/events", headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), headers
            assert 1100 <= response.json()["code"] <= 1103, response.json()
        response = await client.get(
            "/v1/topics/acme/x/events", headers={"Authorization": f"Bearer {expired(None)}"}
        )
        assert_problem(response, 401, ErrorCode.TOKEN_EXPIRED)
        # The control: the known key with the same header forms is accepted.
        for headers in ({"Authorization": f"Bearer {ACME_KEY}"}, {"X-Api-Key": ACME_KEY}):
            response = await client.get("/v1/topics/acme/x/events", headers=headers)
            assert response.status_code == 200, response.text


async def test_sse_takes_a_token_in_the_query_and_refuses_a_forbidden_pattern() -> None:
    async with secured() as server, http(server, ADMIN_KEY) as admin:
        async with (
            httpx.AsyncClient(base_url=server.http, timeout=5.0) as client,
            client.stream(
                "GET", "/v1/sse", params={"pattern": "acme/x", "token": token()}
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()

            async def next_line() -> str | None:
                try:
                    return await anext(lines)
                except StopAsyncIteration:
                    return None

            sse = SseReader(next_line)
            async with asyncio.timeout(3):
                subscribed = await sse.next()
                assert subscribed is not None and subscribed.event == "subscribed"
                assert (await post(admin, "globex/x", id="not-yours")).status_code == 201
                assert (await post(admin, "acme/x", id="yours")).status_code == 201
                [got] = await sse.events(1)
            assert got.json()["id"] == "yours"
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0) as client:
            for pattern in ("globex/x", "#", "+/x"):
                params = {"pattern": pattern, "token": token()}
                assert_problem(await client.get("/v1/sse", params=params), 403, 1110)
            params = {"pattern": "acme/x", "token": forged(None)}
            assert (await client.get("/v1/sse", params=params)).status_code == 401


# -- 10. anonymous clients --------------------------------------------------------------------


async def test_anonymous_clients_only_when_configured_and_only_where_the_role_says() -> None:
    roles = {**USER_ROLES, "anonymous": [{"allow": ["subscribe", "history"], "topics": "news/#"}]}
    async with (
        secured(anonymous_tenant="public", roles=roles) as server,
        connected(server) as anonymous,
        http(server, ADMIN_KEY) as admin,
    ):
        assert (await anonymous.request("subscribe", pattern="news/#"))["type"] == "reply"
        for pattern in ("#", "weather/+", "+/x"):
            assert is_error(await anonymous.request("subscribe", pattern=pattern), 1110), pattern
        answer = await anonymous.request("publish", topic="news/1", event=event())
        assert is_error(answer, ErrorCode.FORBIDDEN), answer
        assert is_error(await anonymous.request("presence", topic="news/1"), 1110)
        assert (await post(admin, "public/news/1", id="n1")).status_code == 201
        assert (await post(admin, "acme/news/1", id="acme-news")).status_code == 201
        async with asyncio.timeout(3):
            push = await anonymous.push()
        assert (push["topic"], push["event"]["id"]) == ("news/1", "n1")
        history = await anonymous.request("history", pattern="news/#")
        assert [e["event"]["id"] for e in history["result"]["events"]] == ["n1"]
        assert await alive(anonymous)
        # Over HTTP, no credentials is the same anonymous caller in tenant `public`.
        async with httpx.AsyncClient(base_url=server.http, timeout=5.0) as nobody:
            response = await nobody.get("/v1/events", params={"pattern": "public/news/#"})
            assert response.status_code == 200, response.text
            assert [e["event"]["id"] for e in response.json()["events"]] == ["n1"]
            for pattern in ("acme/news/#", "public/#"):
                response = await nobody.get("/v1/events", params={"pattern": pattern})
                assert_problem(response, 403, ErrorCode.FORBIDDEN)
            assert_problem(await post(nobody, "public/news/1"), 403, ErrorCode.FORBIDDEN)
        # A token still gets its own tenant and rules.
        async with connected(server, token()) as alice:
            assert (await alice.request("subscribe", pattern="#"))["type"] == "reply"


async def test_an_anonymous_client_without_anonymous_rules_may_connect_but_do_nothing() -> None:
    async with (
        secured(anonymous_tenant="public") as server,
        connected(server) as anonymous,
    ):
        for pattern in ("news/#", "x"):
            assert is_error(await anonymous.request("subscribe", pattern=pattern), 1110)
        assert is_error(await anonymous.request("publish", topic="x", event=event()), 1110)
        assert is_error(await anonymous.request("history", pattern="x"), 1110)
        assert await alive(anonymous)


# -- issue 8, item 5: a topic listing shows only what the caller may read ---------------------


async def test_a_topic_listing_shows_only_topics_the_caller_may_subscribe_to_or_read() -> None:
    topics = ["acme/docs/1", "acme/docs/secret/plan", "acme/hr/salaries", "acme/users/alice/x"]
    roles = {**EDITOR_ROLES, "own": [{"allow": ["history"], "topics": "users/{sub}/#"}]}
    async with secured(roles=roles) as server, http(server, ADMIN_KEY) as admin:
        for topic in topics:
            assert (await post(admin, topic)).status_code == 201
        seen: dict[str, list[str]] = {}
        for name, roles_of in (("editor", ["editor"]), ("own", ["own"]), ("none", [])):
            async with http(server, token(roles=roles_of)) as client:
                response = await client.get("/v1/topics", params={"prefix": "acme/"})
                assert response.status_code == 200, response.text
                assert not response.json()["more"]
                seen[name] = [t["topic"] for t in response.json()["topics"]]
        assert seen == {"editor": ["acme/docs/1"], "own": ["acme/users/alice/x"], "none": []}
        # A tenant key without roles may do everything in its tenant: it sees everything.
        async with http(server, ACME_KEY) as acme:
            response = await acme.get("/v1/topics", params={"prefix": "acme/"})
            assert [t["topic"] for t in response.json()["topics"]] == topics


async def test_hidden_topics_never_make_a_listing_page_short() -> None:
    """Pages are full while `more` is true, however many hidden topics lie between."""
    async with secured(roles=EDITOR_ROLES) as server, http(server, ADMIN_KEY) as admin:
        # By name: a, b, then the 40 hidden secret/..., then t, u, z, then hr and x, hidden.
        visible = [f"acme/docs/{name}" for name in "abtuz"]
        hidden = [f"acme/docs/secret/{n:03}" for n in range(40)] + ["acme/hr/1", "acme/x"]
        for topic in visible + hidden:
            assert (await post(admin, topic)).status_code == 201
        async with http(server, token(roles=["editor"])) as client:
            names, after, pages = [], "", []
            while True:
                params = {"prefix": "acme/", "limit": "2", "after": after}
                page = (await client.get("/v1/topics", params=params)).json()
                pages.append(len(page["topics"]))
                names += [t["topic"] for t in page["topics"]]
                if not page["more"]:
                    break
                after = page["topics"][-1]["topic"]
        assert sorted(names) == sorted(visible) and len(set(names)) == len(names)
        assert pages == [2, 2, 1]


# -- issue 8, item 6: revocations are bounded ----------------------------------------------------

DAY = 86400


async def test_a_revocation_lasts_at_most_the_longest_token_lifetime_and_a_user_s_that_long() -> (
    None
):
    async with secured(jwt_leeway=5) as server, http(server, ACME_KEY) as acme:
        # The flood of the issue: until = 1e308 (never pruned) is held to lifetime + leeway.
        response = await acme.post(
            "/v1/revocations", json={"kind": "token", "value": "t1", "until": 1e308}
        )
        assert response.status_code == 201, response.text
        kept = response.json()
        assert kept["until"] == pytest.approx(kept["at"] + DAY + 5)
        # A user revocation outlives every token of the user issued before it.
        soon = time.time() + 60
        body = {"kind": "user", "value": "bob", "until": soon}
        kept = (await acme.post("/v1/revocations", json=body)).json()
        assert kept["until"] == pytest.approx(kept["at"] + DAY + 5)
        # What the engine stored is what was answered.
        stored = {r.value: r for r in await server.node.bus.engine.revocations()}
        assert stored["bob"].until == kept["until"]
        # A short one is kept as asked; no until: the horizon.
        body = {"kind": "session", "value": "s1", "until": soon}
        assert (await acme.post("/v1/revocations", json=body)).json()["until"] == soon
        kept = (await acme.post("/v1/revocations", json={"kind": "session", "value": "s2"})).json()
        assert kept["until"] == pytest.approx(kept["at"] + DAY + 5)


@pytest.mark.parametrize(
    "until",
    [
        *(b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"),  # not finite, not JSON
        *(b'"soon"', b"true", b"0", b"-5"),
        b"1000",  # a time long past: the revocation would do nothing
    ],
)
async def test_a_non_finite_huge_or_past_until_is_refused_400(until: bytes) -> None:
    body = b'{"kind": "token", "value": "t1", "until": ' + until + b"}"
    headers = {"content-type": "application/json"}
    async with secured() as server, http(server, ACME_KEY) as acme:
        response = await acme.post("/v1/revocations", content=body, headers=headers)
        assert_problem(response, 400, ErrorCode.INVALID_INPUT)
        assert await server.node.bus.engine.revocations() == []


async def test_the_revocation_endpoint_is_rate_limited_per_tenant_with_retry_after() -> None:
    async with (
        secured(revoke_rate=0.5, revoke_burst=3) as server,
        http(server, ACME_KEY) as acme,
        http(server, ADMIN_KEY) as admin,
    ):
        for n in range(3):
            body = {"kind": "token", "value": f"t{n}"}
            assert (await acme.post("/v1/revocations", json=body)).status_code == 201
        response = await acme.post("/v1/revocations", json={"kind": "token", "value": "t3"})
        problem = assert_problem(response, 429, ErrorCode.RATE_LIMITED)
        assert problem["retriable"] is True
        # The burst is spent: the next revocation comes 1 / 0.5 = 2 s after it, less the
        # milliseconds this test took, so the whole seconds to wait round up to 2.
        assert response.headers["Retry-After"] == "2"
        # Another tenant's key and an admin are not slowed by acme's flood.
        async with http(server, GLOBEX_KEY) as globex:
            body = {"kind": "token", "value": "t0"}
            assert (await globex.post("/v1/revocations", json=body)).status_code == 201
        body = {"kind": "token", "value": "t3", "tenant": "acme"}
        assert (await admin.post("/v1/revocations", json=body)).status_code == 201
        assert len(await server.node.bus.engine.revocations()) == 5


async def test_a_tenant_holds_at_most_max_revocations_per_tenant_then_409() -> None:
    async with (
        secured(max_revocations_per_tenant=2) as server,
        http(server, ACME_KEY) as acme,
        http(server, ADMIN_KEY) as admin,
    ):
        for value in ("t1", "t2"):
            body = {"kind": "token", "value": value}
            assert (await acme.post("/v1/revocations", json=body)).status_code == 201
        response = await acme.post("/v1/revocations", json={"kind": "token", "value": "t3"})
        problem = assert_problem(response, 409, ErrorCode.TOO_MANY_REVOCATIONS)
        assert problem["retriable"] is False and "max_revocations_per_tenant" in problem["detail"]
        # Revoking a held key again adds nothing: taken. An admin still revokes inside acme.
        body = {"kind": "token", "value": "t1", "reason": "again"}
        assert (await acme.post("/v1/revocations", json=body)).status_code == 201
        body = {"kind": "user", "value": "mallory", "tenant": "acme"}
        assert (await admin.post("/v1/revocations", json=body)).status_code == 201
        assert len(await server.node.bus.engine.revocations()) == 3


async def test_a_token_living_longer_than_max_token_lifetime_is_refused_1105() -> None:
    now = int(time.time())
    year = token(iat=now, exp=now + 365 * DAY)  # the long-lived token a revocation must outlast
    no_iat = token(iat=None)
    async with secured() as server:
        code, disconnect = await refused(server, token=year)
        assert code == 4501 and "max_token_lifetime" in disconnect["reason"]
        async with http(server, year) as client:
            response = await client.get("/v1/topics/acme/x/events")
            assert_problem(response, 401, ErrorCode.TOKEN_LIFETIME_EXCEEDED)
        async with http(server, no_iat) as client:
            response = await client.get("/v1/topics/acme/x/events")
            assert "iat" in assert_problem(response, 401, ErrorCode.TOKEN_INVALID)["detail"]
        async with connected(server, token(iat=now, exp=now + DAY)) as client:  # at the limit
            assert await alive(client)
    # A server configured for longer tokens takes it.
    async with secured(max_token_lifetime=366 * DAY) as server, connected(server, year) as client:
        assert await alive(client)
