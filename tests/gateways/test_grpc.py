"""The gRPC API (docs/grpc.md) against the real server: events, recovery, Ingest, refusals.

The Python client is the stub generated from protos/ (`tests.gateways.grpc_support`);
the last tests drive grpcurl — a Go client reading the same .proto files with its own
parser — so the service is tested with a second toolchain, not only the Python one.
What every way in shares (expiry, revocation, the per-user count, the rate) is in
tests/gateways/test_ways_in.py, with gRPC among the ways.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import jwt
import pytest
from tests.gateways.grpc_support import (
    PROTOS,
    GrpcClient,
    as_json,
    event,
    grpc_port,
    grpcurl,
    publish_request,
    refused,
)
from tests.servers import Server, running_server
from tests.servers import event as ce

from hybridbus.core.codecs import decode_json, encode_json
from hybridbus.core.event import event_from_dict
from hybridbus.core.identity import Identity
from hybridbus.core.revocation import Revocation
from hybridbus.errors import ErrorCode
from hybridbus.gateways.grpc_gen import bus_pb2
from hybridbus.serve import GRPC_PORT_KEY

pytestmark = pytest.mark.timeout(60)

SECRET = "a-test-secret-of-at-least-32-bytes-long!"


def token(sub: str = "alice", tenant: str = "acme", **claims: Any) -> str:
    now = time.time()
    payload = {"sub": sub, "tenantid": tenant, "roles": ["user"], "iat": int(now), "exp": now + 300}
    return jwt.encode({**payload, **claims}, SECRET, algorithm="HS256")


def serving(**settings: Any) -> Any:
    settings.setdefault("grpc_port", 0)
    return running_server(**settings)


async def read(call: Any) -> Any:
    async with asyncio.timeout(10):
        got = await call.read()
    assert got is not grpc.aio.EOF, "the stream ended"
    return got


# -- events ---------------------------------------------------------------------------------


RICH = ce(
    "rich-1",
    subject="doc 42",
    time="2026-12-05T10:11:12.345678Z",
    datacontenttype="application/json",
    dataschema="https://example.com/schema",
    partitionkey="p1",
    sequence="7",
    lamport=2**40,  # past a protobuf Integer: carried as text
    expirytime="2027-01-01T00:00:00Z",
    color="blue",
    count=3,
    flag=True,
    data={"text": "héllo", "nested": [1, 2.5, None, {"k": False}]},
)


@pytest.mark.parametrize(
    "sent",
    [
        RICH,
        ce("bytes-1", data_base64=base64.b64encode(b"\x00\xff binary").decode()),
        ce("text-1", datacontenttype="text/plain", data="plain text, not JSON"),
        ce("string-1", data="a JSON string"),
        ce("none-1"),
    ],
    ids=["attributes", "binary", "text", "json-string", "no-data"],
)
async def test_an_event_published_over_grpc_is_the_same_event_everywhere(
    sent: dict[str, Any],
) -> None:
    expected = event_from_dict(sent)
    async with serving() as server, GrpcClient.open(server) as client:
        ack = await client.publish("acme/docs/42", sent)
        assert (ack.topic, ack.offset, ack.duplicate) == ("acme/docs/42", 1, False)
        assert ack.token == f"{ack.epoch}-{ack.position}"
        page = await client.history("acme/docs/42")
        assert [event(d) for d in page.events] == [expected]
        assert page.events[0].token == ack.token and page.position == ack.token
        async with httpx.AsyncClient(base_url=server.http) as http:  # and over HTTP
            got = (await http.get("/v1/topics/acme/docs/42/events")).json()
        assert decode_json(json.dumps(got["events"][0]["event"])) == expected
        again = await client.publish("acme/docs/42", sent)
        assert again.duplicate and again.offset == 1


async def test_an_event_published_elsewhere_arrives_over_grpc_unchanged() -> None:
    async with serving() as server, GrpcClient.open(server) as client:
        async with httpx.AsyncClient(base_url=server.http) as http:
            body = encode_json(event_from_dict(RICH))
            headers = {"content-type": "application/cloudevents+json"}
            response = await http.post("/v1/topics/acme/a/events", content=body, headers=headers)
            assert response.status_code == 201
        (delivered,) = (await client.history("acme/#")).events
        assert as_json(delivered) == body


# -- subscribe: exact recovery ---------------------------------------------------------------


async def test_subscribe_resumes_exactly_after_any_deliverys_token() -> None:
    async with serving(engine="memory://?shards=4") as server, GrpcClient.open(server) as client:
        start = (await client.history("acme/#", limit=0)).position
        topics = [f"acme/t{n % 3}/x" for n in range(9)]
        for n, topic in enumerate(topics):
            await client.publish(topic, ce(f"e{n}"))
        call = client.subscribe("acme/+/x", since=start)
        first = await read(call)
        assert first.WhichOneof("kind") == "subscribed"
        assert first.subscribed.recovered and first.subscribed.position == start
        got = [(await read(call)).delivery for _ in topics]
        call.cancel()
        assert sorted(event(d).id for d in got) == sorted(f"e{n}" for n in range(9))
        for cut in (0, 4, 8):  # from each delivery's token: exactly what followed it
            again = client.subscribe("acme/+/x", since=got[cut].token)
            assert (await read(again)).subscribed.recovered
            live = f"live-{cut}"
            await client.publish("acme/t0/x", ce(live))
            rest = []
            while not rest or event(rest[-1]).id != live:
                rest.append((await read(again)).delivery)
            again.cancel()
            assert [event(d).id for d in rest] == [event(d).id for d in got[cut + 1 :]] + [live]
            got.append(rest[-1])


async def test_a_token_of_another_epoch_says_recovered_false() -> None:
    async with serving() as server, GrpcClient.open(server) as client:
        await client.publish("acme/a", ce("e1"))
        call = client.subscribe("acme/a", since="AAAAAAAAAAA-5")
        subscribed = (await read(call)).subscribed
        assert not subscribed.recovered
        await client.publish("acme/a", ce("e2"))
        assert event((await read(call)).delivery).id in ("e1", "e2")
        call.cancel()


# -- ingest ---------------------------------------------------------------------------------


async def test_ingest_appends_every_event_in_order_and_answers_once() -> None:
    async with serving() as server, GrpcClient.open(server) as client:
        count = 2000

        async def events() -> Any:
            for n in range(count):
                yield publish_request(f"acme/logs/api/{n % 2}", ce(f"line-{n}", data={"n": n}))

        answer = await client.ingest(events())
        assert (answer.accepted, answer.duplicates) == (count, 0)
        assert answer.last.topic == "acme/logs/api/1" and answer.last.offset == count // 2
        ids = [event(d).id for d in (await client.history("acme/logs/api/#", limit=1000)).events]
        rest = (await client.history("acme/logs/api/#", limit=1000, since=answer.last.token)).events
        assert not rest
        page2 = await client.history(
            "acme/logs/api/#", since=(await client.history("acme/logs/#", limit=1000)).position
        )
        ids += [event(d).id for d in page2.events]
        assert ids[:1000] == [f"line-{n}" for n in range(1000)]
        assert server.sample("hybridbus_publishes_total", gateway="grpc") == count
        again = await client.ingest(events())  # sent again: answered, not appended twice
        assert (again.accepted, again.duplicates) == (count, count)


async def test_ingest_ends_at_a_bad_event_after_appending_the_ones_before() -> None:
    async with serving() as server, GrpcClient.open(server) as client:
        bad = publish_request("acme/logs", ce("bad"))
        bad.event.attributes["lamport"].ce_string = "-1"  # not a non-negative integer

        async def events() -> Any:
            for n in range(5):
                yield bad if n == 3 else publish_request("acme/logs", ce(f"ok-{n}"))

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ingest(events())
        said = refused(caught.value)
        assert said.status == grpc.StatusCode.INVALID_ARGUMENT
        assert said.code == ErrorCode.INVALID_EVENT
        assert said.trailers["hybridbus-index"] == "3"
        assert said.trailers["hybridbus-accepted"] == "3"
        assert said.trailers["hybridbus-attribute"] == "lamport"
        ids = [event(d).id for d in (await client.history("acme/logs")).events]
        assert ids == ["ok-0", "ok-1", "ok-2"]


async def test_ingest_takes_batches_and_subscribe_gives_them_with_the_same_tokens() -> None:
    """`events` packs many events in one Ingest message (the refusal index counts events);
    Subscribe with `batch` packs deliveries, each with the token a one-by-one stream gives."""
    async with serving() as server, GrpcClient.open(server) as client:
        start = (await client.history("acme/logs/b", limit=0)).position
        bad = publish_request("acme/logs/b", ce("bad")).event
        bad.attributes["lamport"].ce_string = "-1"

        def batch(first: int, count: int) -> Any:
            return [publish_request("acme/logs/b", ce(f"b-{n}")).event
                    for n in range(first, first + count)]  # fmt: skip

        async def messages() -> Any:
            yield bus_pb2.PublishRequest(topic="acme/logs/b", events=batch(0, 300))
            yield bus_pb2.PublishRequest(
                topic="acme/logs/b", event=batch(300, 1)[0], events=batch(301, 199)
            )

        answer = await client.ingest(messages())
        assert (answer.accepted, answer.last.offset) == (500, 500)

        async def with_a_bad_one() -> Any:
            yield bus_pb2.PublishRequest(topic="acme/logs/b", events=[*batch(500, 5), bad])

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ingest(with_a_bad_one())
        said = refused(caught.value)
        assert (said.trailers["hybridbus-index"], said.trailers["hybridbus-accepted"]) == ("5", "5")

        async def read(batch: int) -> list[tuple[str, str]]:
            request = bus_pb2.SubscribeRequest(pattern="acme/logs/b", since=start, batch=batch)
            got: list[tuple[str, str]] = []
            responses = 0
            async for response in client.stub.Subscribe(request, metadata=client.metadata):
                kind = response.WhichOneof("kind")
                if kind == "subscribed":
                    continue
                responses += 1
                packed = kind == "deliveries"
                items = response.deliveries.deliveries if packed else [response.delivery]
                got += [(event(d).id, d.token) for d in items]
                if len(got) == 505:
                    break
            assert responses <= (505 if batch <= 1 else 505 // batch + 8), responses
            return got

        one_by_one, packed = await read(0), await read(100)
        assert packed == one_by_one
        assert [i for i, _ in packed] == [f"b-{n}" for n in range(505)]


async def test_ingest_over_the_rate_waits_instead_of_failing() -> None:
    async with serving(publish_rate=20.0, publish_burst=10.0) as server:
        async with GrpcClient.open(server, None) as client:

            async def events() -> Any:
                for n in range(40):
                    yield publish_request("acme/logs", ce(f"r-{n}"))

            started = time.monotonic()
            answer = await client.ingest(events())
            took = time.monotonic() - started
        assert answer.accepted == 40
        assert took >= 1.2, took  # 30 past the burst at 20/s: 1.5 s at least
        # A single publish now is refused with the HTTP API's answer: 1121, retry-after.
        said = None
        async with GrpcClient.open(server) as client:
            for n in range(30):  # 20/s: one refused before a second is over
                try:
                    await client.publish("acme/logs", ce(f"over-{n}"))
                except grpc.aio.AioRpcError as exc:
                    said = refused(exc)
                    break
        assert said is not None
        assert (said.status, said.code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 1121)
        assert said.trailers["retry-after"] == "1"
        assert said.trailers["hybridbus-retriable"] == "true"


async def test_revocation_ends_an_ingest_with_what_was_accepted() -> None:
    settings = {"jwt_secret": SECRET, "anonymous_tenant": None}
    async with serving(**settings) as server, GrpcClient.open(server, token(jti="t-9")) as client:
        sent = asyncio.Event()
        more = asyncio.Event()

        async def events() -> Any:
            yield publish_request("acme/logs", ce("before"))
            sent.set()
            await more.wait()
            yield publish_request("acme/logs", ce("after"))

        call = client.ingest(events())
        await sent.wait()
        await asyncio.sleep(0.3)  # "before" is appended
        now = time.time()
        revocation = Revocation(kind="token", tenant="acme", value="t-9", until=now + 600, at=now)
        node = server.node
        await node.guard.revoke(node.guard.admit(_admin()), revocation)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with asyncio.timeout(3):
                await call
        more.set()
        said = refused(caught.value)
        assert (said.status, said.code) == (grpc.StatusCode.PERMISSION_DENIED, 1104)
        assert said.trailers["hybridbus-accepted"] == "1"


def _admin() -> Identity:
    return Identity(tenant="acme", user="ops", admin=True)


# -- refusals -------------------------------------------------------------------------------


async def test_refusals_are_statuses_with_the_hybridbus_code() -> None:
    settings = {"jwt_secret": SECRET, "anonymous_tenant": None}
    forged = jwt.encode({"sub": "eve", "tenantid": "acme"}, "another-secret-of-32-bytes-or-more!")
    cases = [
        (None, "publish", "acme/a", grpc.StatusCode.UNAUTHENTICATED, 1100),
        (forged, "publish", "acme/a", grpc.StatusCode.UNAUTHENTICATED, 1102),
        (token(), "publish", "other/a", grpc.StatusCode.PERMISSION_DENIED, 1110),
        (token(), "history", "other/#", grpc.StatusCode.PERMISSION_DENIED, 1110),
        (token(), "subscribe", "other/#", grpc.StatusCode.PERMISSION_DENIED, 1110),
        (token(), "publish", "acme/a/+", grpc.StatusCode.INVALID_ARGUMENT, 1002),
        (token(), "subscribe", "acme/#/x", grpc.StatusCode.INVALID_ARGUMENT, 1003),
        (token(), "history", "acme/#", grpc.StatusCode.INVALID_ARGUMENT, 1005),  # since
        (token(exp=time.time() - 5), "history", "acme/#", grpc.StatusCode.UNAUTHENTICATED, 1101),
    ]
    async with serving(**settings) as server:
        for credential, call, target, status, code in cases:
            async with GrpcClient.open(server, credential) as client:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await attempt(client, call, target)
                said = refused(caught.value)
                assert (said.status, said.code) == (status, code), (call, target, said)
                assert said.details


async def attempt(client: GrpcClient, call: str, target: str) -> None:
    if call == "publish":
        await client.publish(target, ce())
    elif call == "history":
        await client.history(target, since="not-a-token")
    else:
        await client.subscribe(target).read()


async def test_the_grpc_port_is_off_unless_set_and_a_taken_one_fails_the_start() -> None:
    async with running_server() as server:
        assert GRPC_PORT_KEY not in server.app
    async with serving() as first:
        taken = grpc_port(first)
        with pytest.raises(OSError, match="gRPC"):
            async with serving(grpc_port=taken):
                pass


def test_serve_says_how_to_build_the_generated_code_when_it_is_missing() -> None:
    script = (
        "import sys\n"
        "sys.modules['hybridbus.gateways.grpc_gen'] = None  # as if never generated\n"
        "from hybridbus.cli import main\n"
        "sys.exit(main(['serve', '--engine', 'memory://', '--port', '0', '--grpc-port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1, done
    assert "make grpc" in done.stderr, done.stderr


# -- a second toolchain: grpcurl (Go), from the .proto files -------------------------------------


def run_grpcurl(server: Server, method: str, data: str, *extra: str) -> list[dict[str, Any]]:
    """Call `method` with grpcurl (plaintext, the protos/ files, no reflection); its answers."""
    command = [
        grpcurl(),
        "-plaintext",
        "-import-path",
        str(PROTOS),
        "-proto",
        "hybridbus/v1/bus.proto",
        "-d",
        "@",
        *extra,
        f"127.0.0.1:{grpc_port(server)}",
        f"hybridbus.v1.Bus/{method}",
    ]
    done = subprocess.run(command, input=data, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    text, found, at = done.stdout, [], 0
    while (at := _skip_space(text, at)) < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def grpcurl_event(id: str, **data: Any) -> dict[str, Any]:
    """A CloudEvent as grpcurl's JSON mapping of io.cloudevents.v1.CloudEvent spells it."""
    return {
        "id": id,
        "source": "/grpcurl",
        "specVersion": "1.0",
        "type": "test.event",
        "attributes": {
            "subject": {"ceString": "from Go"},
            "time": {"ceTimestamp": "2026-12-05T10:00:00Z"},
            "datacontenttype": {"ceString": "application/json"},
            "priority": {"ceInteger": 5},
        },
        "textData": json.dumps(data),
    }


@pytest.mark.slow
async def test_grpcurl_publishes_ingests_and_subscribes_from_the_proto_files() -> None:
    settings = {"jwt_secret": SECRET, "anonymous_tenant": None}
    auth = ("-H", f"authorization: Bearer {token()}")
    async with serving(**settings) as server:
        loop = asyncio.get_running_loop()

        def call(method: str, data: Any, *extra: str) -> Any:
            lines = data if isinstance(data, str) else json.dumps(data)
            return loop.run_in_executor(None, run_grpcurl, server, method, lines, *auth, *extra)

        (ack,) = await call("Publish", {"topic": "acme/go/1", "event": grpcurl_event("g1", n=1)})
        assert ack["topic"] == "acme/go/1" and ack["offset"] == "1" and ack["token"]
        stream = "\n".join(
            json.dumps({"topic": f"acme/go/{n % 2}", "event": grpcurl_event(f"g{n}", n=n)})
            for n in range(2, 12)
        )
        (answer,) = await call("Ingest", stream)
        assert answer["accepted"] == "10" and answer["last"]["topic"] == "acme/go/1"
        # Subscribe from the token after g1: exactly g2..g11, in order, each with its token.
        subscribed, *deliveries = await _subscribe_until(server, ack["token"], 10, auth)
        assert subscribed["subscribed"]["recovered"] is True
        events = [d["delivery"] for d in deliveries]
        assert [e["event"]["id"] for e in events] == [f"g{n}" for n in range(2, 12)]
        assert events[-1]["token"] == answer["last"]["token"]
        assert json.loads(events[0]["event"]["textData"]) == {"n": 2}
        assert events[0]["event"]["attributes"]["priority"] == {"ceInteger": 5}
        # What Go sent is the event every other way in serves.
        async with GrpcClient.open(server, token()) as client:
            (first,) = (await client.history("acme/go/1", limit=1)).events
        got = event(first)
        assert (got.subject, got.extensions, got.data) == ("from Go", {"priority": 5}, {"n": 1})
        assert got.time == datetime(2026, 12, 5, 10, tzinfo=UTC)
        # A refusal reaches grpcurl as a status with the code in the trailers.
        command = [
            grpcurl(), "-plaintext", "-import-path", str(PROTOS), "-proto",
            "hybridbus/v1/bus.proto", "-v", "-d", '{"topic": "other/x", "event": {}}',
            *auth, f"127.0.0.1:{grpc_port(server)}", "hybridbus.v1.Bus/Publish",
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        async with asyncio.timeout(20):
            said = (await process.communicate())[0].decode()
        assert process.returncode != 0, said
        assert "PermissionDenied" in said and "hybridbus-code: 1110" in said, said


async def _subscribe_until(
    server: Server, since: str, count: int, auth: tuple[str, str]
) -> list[dict[str, Any]]:
    """grpcurl's Subscribe from `since`, read until `count` deliveries came, then stopped."""
    command = [
        grpcurl(), "-plaintext", "-import-path", str(PROTOS), "-proto", "hybridbus/v1/bus.proto",
        "-format-error", *auth, "-d", json.dumps({"pattern": "acme/go/+", "since": since}),
        f"127.0.0.1:{grpc_port(server)}", "hybridbus.v1.Bus/Subscribe",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    decoder = json.JSONDecoder()
    text, found = "", []
    try:
        async with asyncio.timeout(20):
            while len(found) < count + 1:
                chunk = await process.stdout.read(65536)
                assert chunk, (await process.stderr.read()).decode()  # type: ignore[union-attr]
                text += chunk.decode()
                while (at := _skip_space(text, 0)) < len(text):
                    try:
                        value, end = decoder.raw_decode(text, at)
                    except json.JSONDecodeError:
                        break
                    found.append(value)
                    text = text[end:]
    finally:
        process.terminate()
        await process.wait()
    return found


@pytest.mark.parametrize("method", ["Publish", "Ingest", "Subscribe", "History"])
async def test_a_message_that_does_not_parse_is_invalid_argument_1000(method: str) -> None:
    # It was UNKNOWN (Publish, History, Subscribe: grpc's own "Unexpected DecodeError",
    # logged as a servicer failure) or INTERNAL (Ingest).
    async with serving() as server:
        target = f"127.0.0.1:{grpc_port(server)}"
        async with grpc.aio.insecure_channel(target) as channel:
            path = f"/hybridbus.v1.Bus/{method}"
            junk = b"\x0a\x05ab"  # field 1, 5 bytes long, then 2 of them
            if method == "Ingest":
                answer = channel.stream_unary(path)(iter([junk]), timeout=5)
            elif method == "Subscribe":
                answer = channel.unary_stream(path)(junk, timeout=5).read()
            else:
                answer = channel.unary_unary(path)(junk, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await answer
        said = refused(caught.value)
        assert (said.status, said.code) == (grpc.StatusCode.INVALID_ARGUMENT, 1000), said
        if method == "Ingest":
            assert (said.trailers["hybridbus-index"], said.trailers["hybridbus-accepted"]) == (
                "0",
                "0",
            )
