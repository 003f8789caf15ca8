"""Pages of a topic's members over real connections (docs/protocol.md §5.5).

Two hundred `websockets` clients subscribe to one topic; another pages
through them with `limit` + `cursor` while members come and go, and the
Python client does the same with `presence_page`. (Ten thousand members are
paged through the registry's API in tests/server/test_presence.py.)
"""

from __future__ import annotations

import contextlib

from tests.servers import WsClient, running_server

import hybridbus.client

ROOM = "docs/big"
MEMBERS = 200


async def test_two_hundred_members_in_pages_each_once_with_the_count() -> None:
    async with running_server() as server, contextlib.AsyncExitStack() as stack:
        ids = []
        for _ in range(MEMBERS):
            member = await stack.enter_async_context(WsClient.open(server.url, connect_first=False))
            ids.append((await member.request("connect"))["result"]["client"])
            await member.send(member.command("subscribe", pattern=ROOM))
        pager = await stack.enter_async_context(WsClient.open(server.url))
        while server.node.presence.count(f"acme/{ROOM}") < MEMBERS:
            await pager.request("ping")
        # The first shape still answers every member, now with the count.
        whole = (await pager.request("presence", topic=ROOM))["result"]
        assert [c["client"] for c in whole["clients"]] == ids and whole["count"] == MEMBERS
        assert "cursor" not in whole
        seen: list[str] = []
        cursor = None
        late = await stack.enter_async_context(WsClient.open(server.url, connect_first=False))
        late_id = (await late.request("connect"))["result"]["client"]
        while True:
            page = {"limit": 64} | ({"cursor": cursor} if cursor else {})
            reply = await pager.request("presence", topic=ROOM, **page)
            result = reply["result"]
            assert len(result["clients"]) <= 64
            seen += [c["client"] for c in result["clients"]]
            if len(seen) == 64:  # while paging, one member joins: it comes last
                assert (await late.request("subscribe", pattern=ROOM))["type"] == "reply"
                assert (await pager.request("ping"))["type"] == "reply"
            cursor = result.get("cursor")
            if cursor is None:
                break
        assert seen == [*ids, late_id]  # every member once, in join order, the late one last
        assert result["count"] == MEMBERS + 1
        # A cursor of no page of this node, and a limit out of range, are refused.
        bad = await pager.request("presence", topic=ROOM, limit=10, cursor="elsewhere.1")
        assert (bad["type"], bad["code"]) == ("error", 1621)
        bad = await pager.request("presence", topic=ROOM, limit=10_001)
        assert (bad["type"], bad["code"]) == ("error", 1012)
        # The Python client pages too.
        async with hybridbus.client.connect(server.url) as c:
            page = await c.presence_page(ROOM, limit=150)
            assert page.count == MEMBERS + 1 and len(page.clients) == 150
            rest = await c.presence_page(ROOM, limit=150, cursor=page.cursor)
            assert rest.cursor is None
            assert [i.client for i in page.clients + rest.clients] == [*ids, late_id]
            assert len(await c.presence(ROOM)) == MEMBERS + 1
