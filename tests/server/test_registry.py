"""The node registry on a real redis-server and a real etcd: register, list, lapse, deregister.

Each test starts its store from its binary (tests/services). The lapse tests
kill -9 a real `hybridbus serve` process and time how long its entry
outlives it: at most its ttl (plus the poll's slack; etcd rounds a lease up
to whole seconds and checks expiries every 500 ms).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from tests.servers import ServerProcess
from tests.services import EtcdServer, RedisCluster, RedisServer

from hybridbus.errors import ErrorCode, InvalidInput, RegistryUnavailable
from hybridbus.server.config import ServerConfig, load_config
from hybridbus.server.registry import LocalStore, Registry, fingerprint, registry_of

pytestmark = pytest.mark.timeout(60)

TTL = 1.5  # the tests' lease: etcd rounds it up to 2 s


@pytest.fixture(params=["redis", "etcd"])
def store_url(
    request: pytest.FixtureRequest,
    redis_server: Callable[..., RedisServer],
    etcd_server: Callable[..., EtcdServer],
) -> str:
    """The registry URL of a fresh store of each kind."""
    if request.param == "redis":
        return redis_server().url
    return "etcd://" + etcd_server().url.removeprefix("http://")


def registry(url: str, node_id: str, **settings: object) -> Registry:
    config = ServerConfig(registry=url, registry_ttl=TTL, node_id=node_id, **settings)  # type: ignore[arg-type]
    return registry_of(config, lambda: 7, "1.2.3")


async def started(reg: Registry) -> Registry:
    """`reg` started and told it listens: its first entry goes at once."""
    await reg.start()
    reg.listening([("127.0.0.1", 1)])
    return reg


async def ids(reg: Registry) -> list[str]:
    return [node.id for node in await reg.nodes()]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_nodes_register_list_each_other_and_deregister_at_once(store_url: str) -> None:
    a, b = registry(store_url, "a"), registry(store_url, "b")
    await started(a)
    await b.start()
    a.listening([("127.0.0.1", 8081)])
    b.listening([("::1", 8082, 0, 0)])
    try:
        await until(lambda: _has(b, {"a", "b"}))
        nodes = {node.id: node for node in await a.nodes()}
        assert nodes["a"].addresses == ["127.0.0.1:8081"]
        assert nodes["b"].addresses == ["[::1]:8082"]
        assert nodes["a"].version == "1.2.3"
        assert nodes["a"].connections == 7
        assert nodes["a"].ttl == TTL
        assert nodes["a"].fingerprint == nodes["b"].fingerprint  # same settings
        assert a.registered and b.registered
        assert a.kind == store_url.partition(":")[0]
    finally:
        await a.close()
    assert await ids(b) == ["b"]  # gone at once, not after the ttl
    await b.close()


async def _has(reg: Registry, expected: set[str]) -> bool:
    return set(await ids(reg)) == expected


async def _registered(reg: Registry) -> bool:
    return reg.registered


async def test_a_heartbeat_keeps_an_entry_past_its_ttl(store_url: str) -> None:
    a, watcher = registry(store_url, "a"), registry(store_url, "w")
    await started(a)
    try:
        await until(lambda: _has(watcher, {"a"}))
        deadline = time.monotonic() + 2.2 * TTL
        while time.monotonic() < deadline:  # past two ttls: never missing in between
            assert await ids(watcher) == ["a"]
            await asyncio.sleep(0.2)
    finally:
        await a.close()
        await watcher.close()


async def test_a_killed_node_drops_out_within_its_ttl(store_url: str, tmp_path: Path) -> None:
    env = {"HYBRIDBUS_REGISTRY": store_url, "HYBRIDBUS_REGISTRY_TTL": str(TTL)}
    killed = ServerProcess(
        "--engine", "memory://", logs=tmp_path / "k.log", env={**env, "HYBRIDBUS_NODE_ID": "k"}
    )
    stopped = ServerProcess(
        "--engine", "memory://", logs=tmp_path / "s.log", env={**env, "HYBRIDBUS_NODE_ID": "s"}
    )
    watcher = registry(store_url, "w")
    try:
        await killed.wait_listening()
        await stopped.wait_listening()
        await until(lambda: _has(watcher, {"k", "s"}))
        listed = {node.id: node for node in await watcher.nodes()}
        assert listed["k"].addresses == [f"127.0.0.1:{killed.port}"]
        assert listed["k"].pid == killed.process.pid

        await killed.kill()  # kill -9: no deregistration
        gone = time.monotonic()
        await until(lambda: _has(watcher, {"s"}), timeout=10)
        lapsed = time.monotonic() - gone
        ttl = TTL if store_url.startswith("redis") else 2.0  # etcd: whole seconds, >= 2
        slack = 0.5 if store_url.startswith("redis") else 1.0  # etcd checks every 500 ms
        assert 0 < lapsed <= ttl + slack, lapsed

        stopped.signal(signal.SIGTERM)  # graceful: deregistered before it exits
        assert await stopped.wait() == 0
        assert await ids(watcher) == []
        assert any(r.get("message") == "deregistered" for r in stopped.logs())
    finally:
        await killed.kill()
        await stopped.kill()
        await watcher.close()


async def test_an_unreachable_store_refuses_listings_and_the_node_registers_later(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    server.stop()  # the port is known, nothing listens on it
    reg = registry(server.url, "late")
    await started(reg)
    try:
        began = time.monotonic()
        with pytest.raises(RegistryUnavailable) as caught:
            await reg.nodes()
        assert time.monotonic() - began < 5
        assert caught.value.code == ErrorCode.REGISTRY_UNAVAILABLE == 1310
        assert caught.value.retriable
        assert not reg.registered

        await asyncio.to_thread(server.start)  # the same port: the heartbeat gets through
        await until(lambda: _has(reg, {"late"}))
        assert reg.registered
    finally:
        await reg.close()


async def test_an_etcd_lease_that_lapsed_while_unreachable_is_granted_again(
    etcd_server: Callable[..., EtcdServer],
) -> None:
    etcd = etcd_server()
    url = "etcd://" + etcd.url.removeprefix("http://") + "/custom/prefix/"
    a, watcher = registry(url, "a"), registry(url, "w")
    await started(a)
    try:
        await until(lambda: _has(watcher, {"a"}))
        lease = a.store._lease  # type: ignore[attr-defined]
        await asyncio.to_thread(etcd.pause)  # a's heartbeats fail; its lease runs out
        await asyncio.sleep(2.5)
        assert not a.registered
        await asyncio.to_thread(etcd.resume)  # etcd ends the lease: a grants a new one
        await until(lambda: _registered(a))
        await until(lambda: _has(watcher, {"a"}))
        assert a.store._lease not in (None, lease)  # type: ignore[attr-defined]
        await asyncio.sleep(2.5)  # past the new lease's ttl: kept alive
        assert await ids(watcher) == ["a"]
    finally:
        await a.close()
        await watcher.close()


async def test_the_redis_prefix_keeps_deployments_apart(
    redis_server: Callable[..., RedisServer],
) -> None:
    url = redis_server().url
    one, other = registry(url + "?prefix=one:", "a"), registry(url + "?prefix=two:", "b")
    await started(one)
    await started(other)
    try:
        await until(lambda: _has(one, {"a"}))
        await until(lambda: _has(other, {"b"}))
    finally:
        await one.close()
        await other.close()


async def test_the_registry_follows_a_redis_engine_beside_its_keys(
    redis_server: Callable[..., RedisServer],
) -> None:
    url = redis_server().url
    fast = {"registry_ttl": TTL}
    prod = registry_of(ServerConfig(engine=url + "?prefix=prod", node_id="p", **fast), int, "v")
    test = registry_of(ServerConfig(engine=url + "?timeout=2", node_id="t", **fast), int, "v")
    explicit = registry(url + "?prefix=hybridbus:prod:", "e")
    await started(prod)
    await started(test)
    try:
        assert prod.kind == test.kind == "redis"
        await until(lambda: _has(explicit, {"p"}))  # the engine's prefix: its own registry
        await until(lambda: _has(test, {"t"}))  # the default prefix, main
    finally:
        await prod.close()
        await test.close()
        await explicit.close()


async def test_a_registry_in_a_redis_cluster(
    redis_cluster: Callable[..., RedisCluster],
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster().ports[0]}"  # one hash tag: one slot
    a, b = registry(url, "a"), registry(url, "b")
    await started(a)
    await started(b)
    try:
        await until(lambda: _has(b, {"a", "b"}))
    finally:
        await a.close()
    assert await ids(b) == ["b"]
    await b.close()


async def test_the_registry_is_local_without_a_shared_engine() -> None:
    follows = registry_of(ServerConfig(engine="redis://127.0.0.1:1/0?shards=4"), int, "v")
    assert follows.kind == "redis"
    assert registry_of(ServerConfig(engine="redis:///name"), int, "v").kind == "local"
    assert registry_of(ServerConfig(engine="memory://"), int, "v").kind == "local"
    assert registry_of(ServerConfig(), int, "v").kind == "local"  # sqlite
    assert registry_of(ServerConfig(engine="memory://", registry="local"), int, "v").kind == "local"
    with pytest.raises(InvalidInput, match="prefix"):
        registry_of(ServerConfig(registry="redis://127.0.0.1:1/0?shards=4"), int, "v")
    with pytest.raises(InvalidInput, match="registry"):
        load_config(flags={"registry": "zookeeper://x"})
    await follows.close()


async def test_a_local_registry_lists_this_node_alone() -> None:
    reg = Registry(LocalStore(), ServerConfig(engine="memory://", node_id="solo"), lambda: 3)
    await reg.start()
    reg.listening([("127.0.0.1", 9000)])
    await until(lambda: _has(reg, {"solo"}))
    (node,) = await reg.nodes()
    assert (node.addresses, node.connections, node.engine) == (["127.0.0.1:9000"], 3, "memory://")
    await reg.close()
    assert await reg.nodes() == []


def test_the_fingerprint_leaves_out_secrets_and_the_node_s_own_place() -> None:
    base = ServerConfig(engine="redis://:hunter2@10.0.0.1:6379/0", jwt_secret="s" * 32)
    same = [
        msgspec.structs.replace(base, port=9999, host="10.0.0.2", node_id="n2", workers=4),
        msgspec.structs.replace(base, jwt_secret="t" * 32),
        msgspec.structs.replace(base, engine="redis://:other@10.0.0.1:6379/0"),
        msgspec.structs.replace(base, api_keys=[{"name": "k", "hash": "sha256:00", "admin": True}]),
    ]
    for config in same[:3]:
        assert fingerprint(config) == fingerprint(base)
    different = [
        msgspec.structs.replace(base, max_subscriptions=5),
        msgspec.structs.replace(base, engine="redis://10.0.0.9:6379/0"),
        same[3],  # a key more: its name and scope show, its hash does not
    ]
    for config in different:
        assert fingerprint(config) != fingerprint(base)
    hashed = msgspec.structs.replace(
        base, api_keys=[{"name": "k", "hash": "sha256:11", "admin": True}]
    )
    assert fingerprint(hashed) == fingerprint(same[3])
    assert len(fingerprint(base)) == 16
