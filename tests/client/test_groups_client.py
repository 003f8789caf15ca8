"""Consumer groups through the Python client, against a real server (`client.group`).

The API is the in-process one (`async for d in g`, `fetch`, `ack`, `nack`,
`extend`, `term`); across drops and a server restart the client rejoins each
group as the same member, and acks of deliveries received before the drop
still settle them.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from tests.servers import Server, event, running_server

import hybridbus.client
from hybridbus.client import ClientConfig, ClientDelivery
from hybridbus.core.backoff import Backoff
from hybridbus.errors import RemoteError

FAST = ClientConfig(backoff=Backoff(base=0.01, cap=0.05), request_timeout=10.0)


def drop_all(server: Server) -> int:
    """Cut every client connection as a network failure would (no close handshake)."""
    connections = list(server.node._connections.values())
    for connection in connections:
        connection.abort()
    return len(connections)


async def test_iterate_fetch_ack_nack_extend_term() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
        c.group("billing", "invoices/#", ack_wait=5, ordered=False) as g,
    ):
        assert g.member and g.pattern == "invoices/#"
        await c.publish_many("invoices/1", [event(f"i{n}", data=n) for n in range(3)])
        got: list[ClientDelivery] = []
        async for d in g:
            got.append(d)
            if len(got) == 3:
                break
        assert [d.event.id for d in got] == ["i0", "i1", "i2"]
        assert all(d.topic == "invoices/1" and d.attempt == 1 for d in got)
        assert [d.offset for d in got] == [1, 2, 3]
        await got[0].ack()
        await got[1].extend()
        await got[1].nack(delay=0, error="try again")
        await got[2].term("poison")
        [again] = await g.fetch(10, wait=5)
        assert (again.event.id, again.attempt) == ("i1", 2)
        assert again.dedupe_key == got[1].dedupe_key != got[0].dedupe_key
        await g.ack(again)
        assert await g.fetch(10, wait=0.1) == []
        info = await server.node.bus.groups.info("acme/billing")
        assert (info.pending, info.acked, info.dead_letters) == (0, 2, 1)
        with pytest.raises(RemoteError) as refused:
            await got[2].nack()
        assert refused.value.code == 1403


async def test_refusals_raise_remote_errors_and_a_second_join_is_refused_locally() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
    ):
        with pytest.raises(RemoteError) as unknown:
            async with c.group("nope"):
                pass
        assert unknown.value.code == 1401
        with pytest.raises(RemoteError) as bad:
            async with c.group("g", "a/#", max_deliveries=0):
                pass
        assert bad.value.code == 1006
        async with c.group("g", "a/#"):
            with pytest.raises(Exception, match="already a member"):
                async with c.group("g", "a/#"):
                    pass
        async with c.group("g", "a/#"):  # left above: joins again
            pass


async def test_two_clients_share_a_group() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as a,
        hybridbus.client.connect(server.url, config=FAST) as b,
        a.group("split", "jobs/#", ordered=False, member_in_flight=5) as ga,
        b.group("split", "jobs/#") as gb,
    ):
        await a.publish_many("jobs/1", [event(f"j{n}") for n in range(40)])
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def work(name: str, g: hybridbus.client.ClientGroup) -> None:
            async for d in g:
                seen[name].append(d.event.id)
                await d.ack()

        tasks = [asyncio.create_task(work("a", ga)), asyncio.create_task(work("b", gb))]
        try:
            async with asyncio.timeout(10):
                while len(seen["a"]) + len(seen["b"]) < 40:
                    await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert sorted(seen["a"] + seen["b"]) == sorted(f"j{n}" for n in range(40))
        assert seen["a"] and seen["b"]


async def test_drops_rejoin_as_the_same_member_and_acks_after_a_drop_still_settle() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
        c.group("resume", "r/#", ack_wait=30, ordered=False) as g,
    ):
        member = g.member
        await c.publish_many("r/1", [event(f"r{n}") for n in range(5)])
        held = await g.fetch(5, wait=5)
        while len(held) < 5:
            held += await g.fetch(5 - len(held), wait=5)
        assert drop_all(server) >= 1
        # Acked after the drop: sent on the next connection, by id.
        await g.ack(*held)
        info = await server.node.bus.groups.info("acme/resume")
        assert (info.pending, info.acked) == (0, 5)
        assert info.members == [member]  # rejoined under its name
        # The membership works after the rejoin: new events arrive.
        await c.publish("r/2", event("after"))
        [d] = await g.fetch(1, wait=5)
        assert d.event.id == "after"
        await d.ack()
        assert c.connects >= 2


async def test_a_delivery_held_across_a_drop_comes_back_after_ack_wait() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
        c.group("lease", "l/#", ack_wait=0.5) as g,
    ):
        await c.publish("l/1", event("l1"))
        [first] = await g.fetch(1, wait=5)
        drop_all(server)
        [again] = await g.fetch(1, wait=10)  # unacked: redelivered, to the rejoined member
        assert (again.event.id, again.attempt) == ("l1", 2)
        assert again.dedupe_key == first.dedupe_key
        await again.ack()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_server_restart_resumes_the_membership_with_its_pending_set(
    tmp_path: Path,
) -> None:
    port = free_port()
    engine = f"sqlite://{tmp_path / 'data'}"
    async with running_server(engine=engine, port=port) as server:
        c = await hybridbus.client.connect(server.url, config=FAST)
        g = c.group("durable", "d/#", ack_wait=1, ordered=False)
        await g.__aenter__()
        await c.publish_many("d/1", [event(f"d{n}") for n in range(4)])
        held = await g.fetch(4, wait=5)
        while len(held) < 4:
            held += await g.fetch(4 - len(held), wait=5)
        await g.ack(*held[:2])  # two acked before the restart, two held
    try:
        async with running_server(engine=engine, port=port) as restarted:
            # The held two come back to the rejoined member (the acked two never do): once
            # their lease ends, or at once if the group's store had not written the lease
            # yet (then as attempt 1 again).
            back = await g.fetch(2, wait=10)
            while len(back) < 2:
                back += await g.fetch(2 - len(back), wait=10)
            assert sorted(d.event.id for d in back) == sorted(d.event.id for d in held[2:])
            assert {d.dedupe_key for d in back} == {d.dedupe_key for d in held[2:]}
            await g.ack(*back)
            assert await g.fetch(10, wait=0.3) == []
            info = await restarted.node.bus.groups.info("acme/durable")
            assert (info.pending, info.members) == (0, [g.member])
    finally:
        await g.__aexit__(None, None, None)
        await c.close()


async def test_a_deleted_group_ends_the_iteration_with_its_code() -> None:
    async with (
        running_server() as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
        c.group("billing", "invoices/#", ack_wait=5) as g,
    ):
        await server.node.bus.groups.delete("acme/billing")

        async def drain() -> None:
            async for _ in g:
                pass

        with pytest.raises(RemoteError) as caught:
            await asyncio.wait_for(drain(), 5)
        assert caught.value.code == 1401


async def test_acks_of_one_loop_turn_go_out_as_one_command() -> None:
    # 20 handler tasks each ack their delivery at once: one `ack` command of 20 ids,
    # so a server that lets a connection have 5 commands unanswered answers them all
    # (20 commands would get 1016 TOO_MANY_COMMANDS). Each ack still returns once durable.
    async with (
        running_server(max_in_flight=5) as server,
        hybridbus.client.connect(server.url, config=FAST) as c,
        c.group("turn", "t/#", ordered=False) as g,
    ):
        for first in range(0, 20, 4):  # a publish_many is a command per event
            await c.publish_many("t/1", [event(f"e{n}") for n in range(first, first + 4)])
        got: list[ClientDelivery] = []
        while len(got) < 20:
            got += await g.fetch(20 - len(got), wait=5)
        await asyncio.gather(*(d.ack() for d in got))
        info = await server.node.bus.groups.info("acme/turn")
        assert (info.pending, info.acked) == (0, 20)
        # And acks of other loop turns are commands of their own, answered as before.
        await c.publish("t/1", event("late"))
        [late] = await g.fetch(1, wait=5)
        await g.ack(late)
        await g.ack(late)  # again: a no-op
        info = await server.node.bus.groups.info("acme/turn")
        assert (info.pending, info.acked) == (0, 21)
