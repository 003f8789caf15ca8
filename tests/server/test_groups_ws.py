"""Consumer groups over the WebSocket protocol from a raw `websockets` client (protocol.md §5.9).

A real server (`running_server`), a client written from the protocol page
alone (`tests.servers.WsClient`): joining, `group_event` pushes with delivery
ids, ack / nack / extend / term, the error codes, two members splitting a
group, and leases of a closed connection going to the other member after
`ack_wait`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.servers import JSON, MSGPACK, WsClient, event, running_server

from hybridbus.core.codecs import decode_msgpack, encode_msgpack
from hybridbus.core.log import Delivery, StoredDelivery
from hybridbus.server.auth import Identity

SHORT = {"ack_wait": 0.5, "ordered": False}


class ByRole:
    """The token is the name of the connection's one role, in tenant `acme`."""

    async def authenticate(self, token: str | None, device: str | None) -> Identity:
        return Identity(tenant="acme", user=token, roles=(token or "none",))


async def join(client: WsClient, group: str = "billing", **fields: Any) -> dict[str, Any]:
    fields.setdefault("pattern", "invoices/#")
    fields = {k: v for k, v in fields.items() if v is not None}
    reply = await client.request("group_join", group=group, **fields)
    assert reply["type"] == "reply", reply
    return dict(reply["result"])


async def publish(client: WsClient, topic: str, id: str) -> None:
    reply = await client.request("publish", topic=topic, event=event(id, data={"n": id}))
    assert reply["type"] == "reply", reply


async def group_events(client: WsClient, count: int) -> list[dict[str, Any]]:
    return [await client.push("group_event") for _ in range(count)]


async def error_code(client: WsClient, type: str, **fields: Any) -> int:
    reply = await client.request(type, **fields)
    assert reply["type"] == "error", reply
    return int(reply["code"])


async def test_join_push_and_ack_round_trip() -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        result = await join(c, settings=SHORT)
        assert result["group"] == "billing"
        assert result["pattern"] == "invoices/#"
        assert result["member"]
        for n in range(3):
            await publish(c, f"invoices/{n}", f"e{n}")
        pushes = await group_events(c, 3)
        assert sorted(p["event"]["id"] for p in pushes) == ["e0", "e1", "e2"]
        for p in pushes:
            assert p["group"] == "billing"
            assert p["topic"].startswith("invoices/")  # relative to the tenant
            assert p["attempt"] == 1
            assert p["offset"] == 1
            assert len(p["dedupe"]) == 32
            assert p["delivery"].count(".") == 2
        reply = await c.request("ack", group="billing", deliveries=[p["delivery"] for p in pushes])
        assert reply == {"type": "reply", "id": reply["id"], "result": {}}
        info = await server.node.bus.groups.info("acme/billing")
        assert (info.pending, info.acked) == (0, 3)
        # An ack of settled ids is a no-op, not an error.
        reply = await c.request("ack", group="billing", deliveries=[pushes[0]["delivery"]])
        assert reply["type"] == "reply"


async def test_the_join_reply_comes_before_the_pushes_of_a_backlog() -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        for n in range(5):
            await publish(c, f"invoices/{n}", f"e{n}")
        message = c.command(
            "group_join", group="old", pattern="invoices/#", settings={"start": "earliest"}
        )
        await c.send(message)
        seen: list[str] = []
        async with asyncio.timeout(10):
            while len([m for m in seen if m == "group_event"]) < 5:
                for m in await c.read():
                    seen.append(m["type"] if m["type"] != "reply" else f"reply {m['id']}")
        assert seen.index(f"reply {message['id']}") < seen.index("group_event")


async def test_nack_extend_and_term() -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        await join(c, settings=SHORT)
        await publish(c, "invoices/1", "n1")
        first = await c.push("group_event")
        reply = await c.request("extend", group="billing", deliveries=[first["delivery"]])
        assert reply["type"] == "reply"
        reply = await c.request(
            "nack", group="billing", delivery=first["delivery"], delay=0, error="boom"
        )
        assert reply["type"] == "reply"
        again = await c.push("group_event")
        assert again["event"]["id"] == "n1"
        assert again["attempt"] == 2
        assert again["dedupe"] == first["dedupe"]
        assert again["delivery"] != first["delivery"]
        # The first attempt's id no longer settles anything.
        assert await error_code(c, "nack", group="billing", delivery=first["delivery"]) == 1403
        assert await error_code(c, "term", group="billing", delivery=first["delivery"]) == 1403
        reply = await c.request("term", group="billing", delivery=again["delivery"], reason="bad")
        assert reply["type"] == "reply"
        info = await server.node.bus.groups.info("acme/billing")
        assert (info.pending, info.dead_letters) == (0, 1)
        [dead] = server.node.bus.groups.dead_letters("acme/billing")
        assert (dead.reason, dead.error, dead.attempts) == ("term", "bad", 2)


async def test_errors_carry_their_codes() -> None:
    roles = {
        "worker": [{"allow": "*", "topics": "#"}],
        "reader": [{"allow": ["subscribe", "publish"], "topics": "#"}],
    }
    async with running_server(roles=roles, authenticator=ByRole()) as server:
        async with WsClient.open(server.url, token="worker") as c:
            # 1401: no such group, and no pattern to create it with.
            assert await error_code(c, "group_join", group="nope") == 1401
            # 1006: bad settings, bad names.
            assert (
                await error_code(
                    c, "group_join", group="g", pattern="a/#", settings={"ack_wait": -1}
                )
                == 1006
            )
            assert (
                await error_code(c, "group_join", group="g", pattern="a/#", settings={"x": 1})
                == 1006
            )
            assert await error_code(c, "group_join", group="bad name", pattern="a/#") == 1006
            await join(c, "g", pattern="a/#")
            # 1013: the same group twice on one connection; 1014: leaving one not joined.
            assert await error_code(c, "group_join", group="g", pattern="a/#") == 1013
            assert await error_code(c, "group_leave", group="other") == 1014
            # 1000: not a delivery id; 1401 for a group that does not exist.
            assert await error_code(c, "ack", group="g", deliveries=["x"]) == 1000
            assert await error_code(c, "ack", group="none", deliveries=["e-0.1.1"]) == 1401
            # 1012: a field the protocol does not know, or an empty list.
            assert await error_code(c, "ack", group="g", deliveries=[]) == 1012
            assert await error_code(c, "group_leave", group="g", extra=1) == 1012
            # 1402: the group exists over another pattern (from another connection).
            async with WsClient.open(server.url, token="worker") as other:
                assert await error_code(other, "group_join", group="g", pattern="b/#") == 1402
            reply = await c.request("group_leave", group="g")
            assert reply["type"] == "reply"
            await join(c, "g", pattern=None)  # joins again; no pattern needed once it exists
        # 1110: the rules do not allow `consume`.
        async with WsClient.open(server.url, token="reader") as r:
            assert await error_code(r, "group_join", group="g") == 1110
            assert await error_code(r, "group_join", group="h", pattern="a/#") == 1110
            assert await error_code(r, "ack", group="g", deliveries=["e-0.1.1"]) == 1110


async def test_a_connection_joins_at_most_100_groups() -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        commands = [c.command("group_join", group=f"g{n}", pattern=f"t/{n}/#") for n in range(101)]
        await c.send(*commands)
        answers = [await c.answer(m["id"]) for m in commands]
        assert [a["type"] for a in answers[:100]] == ["reply"] * 100
        assert answers[100]["type"] == "error"
        assert answers[100]["code"] == 1015
        reply = await c.request("group_leave", group="g0")
        assert reply["type"] == "reply"
        await join(c, "g100", pattern="t/100/#")


async def test_a_join_with_the_groups_own_settings_needs_no_manage() -> None:
    roles = {"worker": [{"allow": ["publish", "consume"], "topics": "#"}]}
    async with (
        running_server(roles=roles, authenticator=ByRole()) as server,
        WsClient.open(server.url, token="worker") as c,
    ):
        await join(c, settings={"ack_wait": 2, "start": "earliest"})  # creates it: consume
        await c.request("group_leave", group="billing")
        await join(c, settings={"ack_wait": 2, "start": "latest"})  # the same: consume
        await c.request("group_leave", group="billing")
        # Other settings are a change: that needs `manage`.
        assert (
            await error_code(
                c, "group_join", group="billing", pattern="invoices/#", settings={"ack_wait": 3}
            )
            == 1110
        )


async def test_two_connections_split_the_events_of_a_group() -> None:
    async with (
        running_server() as server,
        WsClient.open(server.url) as a,
        WsClient.open(server.url) as b,
    ):
        await join(a, settings=SHORT)
        await join(b, settings=SHORT)
        async with WsClient.open(server.url) as publisher:
            commands = [
                publisher.command("publish", topic=f"invoices/{n}", event=event(f"s{n}"))
                for n in range(20)
            ]
            await publisher.send(*commands)
            for command in commands:
                assert (await publisher.answer(command["id"]))["type"] == "reply"
        got: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

        async def drain(name: str, client: WsClient) -> None:
            while True:
                push = await client.push("group_event")
                got[name].append(push)
                await client.send(
                    client.command("ack", group="billing", deliveries=[push["delivery"]])
                )

        tasks = [asyncio.create_task(drain("a", a)), asyncio.create_task(drain("b", b))]
        try:
            async with asyncio.timeout(10):
                while len(got["a"]) + len(got["b"]) < 20:
                    await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ids = [p["event"]["id"] for p in got["a"] + got["b"]]
        assert sorted(ids) == sorted(f"s{n}" for n in range(20))  # each once
        assert got["a"] and got["b"]  # both had a share


async def test_leases_of_a_closed_connection_go_to_the_other_member_after_ack_wait() -> None:
    async with running_server() as server, WsClient.open(server.url) as b:
        async with WsClient.open(server.url) as a:
            await join(a, settings=SHORT)
            published_at = time.monotonic()  # before any lease began
            for n in range(3):
                await publish(a, f"invoices/{n}", f"h{n}")
            held = await group_events(a, 3)
            await join(b)
        # `a` is gone holding 3 leases: they come to `b` once ack_wait (0.5 s) is over.
        again = await group_events(b, 3)
        waited = time.monotonic() - published_at
        assert sorted(p["event"]["id"] for p in again) == ["h0", "h1", "h2"]
        assert all(p["attempt"] == 2 for p in again)
        assert {p["dedupe"] for p in again} == {p["dedupe"] for p in held}
        assert waited >= 0.5  # no lease ended before its ack_wait
        # An id of `a`'s attempt settles nothing now; `b`'s are acked from a third connection.
        async with WsClient.open(server.url) as c:
            assert (
                await error_code(c, "nack", group="billing", delivery=held[0]["delivery"]) == 1403
            )
            reply = await c.request(
                "ack", group="billing", deliveries=[p["delivery"] for p in again]
            )
            assert reply["type"] == "reply"
        info = await server.node.bus.groups.info("acme/billing")
        assert (info.pending, info.acked) == (0, 3)


async def test_a_member_that_left_gets_nothing_more_and_others_ack_by_id() -> None:
    async with running_server() as server, WsClient.open(server.url) as a:
        await join(a, settings=SHORT)
        await publish(a, "invoices/1", "l1")
        held = await a.push("group_event")
        reply = await a.request("group_leave", group="billing")
        assert reply["type"] == "reply"
        await publish(a, "invoices/2", "l2")
        await a.request("ping")
        assert not [p for p in a.pushes if p["type"] == "group_event"]
        # Settling by id needs no membership: a fresh connection acks what `a` held.
        async with WsClient.open(server.url) as c:
            reply = await c.request("ack", group="billing", deliveries=[held["delivery"]])
            assert reply["type"] == "reply"
        info = await server.node.bus.groups.info("acme/billing")
        # l2 waits in the log for the next member (a group without members does not read).
        assert (info.acked, info.pending, info.members, info.lag) == (1, 0, [], 1)


@pytest.mark.parametrize("leave_in_same_frame", [True, False])
async def test_leave_while_the_join_is_under_way_answers_both(leave_in_same_frame: bool) -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        joining = c.command("group_join", group="quick", pattern="q/#")
        leaving = c.command("group_leave", group="quick")
        if leave_in_same_frame:
            await c.send(joining, leaving)
        else:
            await c.send(joining)
            await c.send(leaving)
        assert (await c.answer(joining["id"]))["type"] == "reply"
        assert (await c.answer(leaving["id"]))["type"] == "reply"
        info = await server.node.bus.groups.info("acme/quick")
        assert info.members == []


async def test_group_pushes_in_msgpack() -> None:
    async with running_server() as server, WsClient.open(server.url, MSGPACK) as c:
        await join(c, settings=SHORT)
        await publish(c, "invoices/9", "m9")
        push = await c.push("group_event")
        assert push["event"]["id"] == "m9"
        assert push["event"]["data"] == {"n": "m9"}
        reply = await c.request("ack", group="billing", deliveries=[push["delivery"]])
        assert reply["type"] == "reply"


async def test_a_deleted_group_ends_the_membership_with_group_left() -> None:
    async with running_server() as server, WsClient.open(server.url) as c:
        await join(c, settings=SHORT)
        await server.node.bus.groups.delete("acme/billing")
        left = await c.push("group_left")
        assert (left["group"], left["code"]) == ("billing", 1401)
        # The membership is over: leaving it now is "not a member" (1014), joining works again.
        assert await error_code(c, "group_leave", group="billing") == 1014
        await join(c, settings=SHORT)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_msgpack_member_is_pushed_the_stored_event_bytes_as_they_are(
    engine: str, tmp_path: Path
) -> None:
    """The log's MessagePack of an event is what a MessagePack member gets (no re-encoding).

    The stored map here has an extension as a top-level key, which the log
    and the wire both take (protocol.md §3.3) but an encoding of the decoded
    event would put under `x-extensions`: the push carries the map as stored.
    """
    url = "memory://" if engine == "memory" else f"sqlite://{tmp_path}"
    stored = msgspec.msgpack.encode(
        {"id": "s1", "source": "/test", "type": "t", "data": {"n": 1}, "traceparent": "00-ab"}
    )
    decoded = decode_msgpack(stored)
    assert decoded.extensions == {"traceparent": "00-ab"}
    assert encode_msgpack(decoded) != stored  # the server's own encoding would differ
    async with running_server(engine=url) as server:
        await server.node.bus.engine.append("acme/invoices/1", decoded, stored)
        async with WsClient.open(server.url, MSGPACK) as c:
            await join(c, settings={**SHORT, "start": "earliest"})  # a backlog: read from the log
            push = await c.push("group_event")
            assert push["event"] == msgspec.msgpack.decode(stored)
            await server.node.bus.engine.append("acme/invoices/2", decoded, stored)
            live = await c.push("group_event")  # caught up: the append's delivery
            assert live["event"] == msgspec.msgpack.decode(stored)
            ids = [push["delivery"], live["delivery"]]
            assert (await c.request("ack", group="billing", deliveries=ids))["type"] == "reply"
        async with WsClient.open(server.url) as j:  # JSON: the event is encoded as JSON
            reply = await j.request("history", pattern="invoices/1")
            assert reply["result"]["events"][0]["event"]["traceparent"] == "00-ab"


@pytest.mark.parametrize(("protocol", "undecoded"), [(MSGPACK, True), (JSON, False)])
async def test_a_group_leaves_its_events_undecoded_only_for_members_that_take_their_bytes(
    protocol: str, undecoded: bool, tmp_path: Path
) -> None:
    """sqlite: a group of MessagePack members reads `StoredDelivery`s, one of JSON members not."""
    async with running_server(engine=f"sqlite://{tmp_path}") as server:
        async with WsClient.open(server.url) as p:
            for n in range(3):
                await publish(p, f"invoices/{n}", f"e{n}")
        async with WsClient.open(server.url, protocol) as c:
            await join(c, settings={**SHORT, "start": "earliest"})
            pushes = await group_events(c, 3)
            assert sorted(p["event"]["id"] for p in pushes) == ["e0", "e1", "e2"]
            group = server.node.bus.groups.get("acme/billing")
            kinds = {type(e.delivery) for e in group.core.entries.values()}
            assert kinds == ({StoredDelivery} if undecoded else {Delivery})


@pytest.mark.parametrize("kind", ["term", "nack"])
async def test_a_settle_cut_short_by_the_close_leaves_nothing_unawaited(kind: str) -> None:
    # The close cancels the settle's task before it starts: its coroutine was made
    # beforehand and never awaited ("RuntimeWarning: coroutine 'Group.term' was never
    # awaited", an error here).
    async with running_server() as server, WsClient.open(server.url) as client:
        await join(client)
        settle = {"type": kind, "id": 7, "group": "billing", "delivery": "x"}
        # Two frames read at once: the second closes (4500) before the loop runs the task.
        await client.ws.send(json.dumps(settle))
        await client.ws.send("not json")
        assert (await client.closed()).code == 4500
    gc.collect()
