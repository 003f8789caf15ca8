"""The node registry in etcd: a lease per node, its entry put with the lease.

Owns: the registry's keys in etcd and the calls to etcd's v3 JSON gateway
(`/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`, `/v3/kv/put`,
`/v3/kv/range`; keys and values base64) with the aiohttp client. Must not
decide when to beat or what a node says (`server.registry` does).

    etcd://host:port[,host:port...][/key/prefix/]     (etcds://: https)

A node's entry is `<prefix><id>` (default prefix `/hybridbus/nodes/`), put
with a lease of `ttl` seconds (rounded up to whole seconds; etcd's own
minimum is about 2 s). Each heartbeat keeps the lease alive, then puts the
entry again with its fresh figures; a lease etcd no longer knows (it lapsed
while the node could not reach etcd) is granted anew. When the heartbeats
stop, etcd ends the lease and deletes the entry with it; a graceful shutdown
revokes the lease, which deletes it at once. With several endpoints, a call
that cannot reach one goes to the next.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec

from hybridbus.errors import InvalidInput, RegistryUnavailable
from hybridbus.server.registry import NodeInfo

__all__ = ["EtcdStore"]

_TIMEOUT: Final = 3.0  # seconds for one call
_DEFAULT_PREFIX: Final = "/hybridbus/nodes/"
_NOT_FOUND: Final = 5  # gRPC NOT_FOUND: "requested lease not found"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _range_end(prefix: str) -> str:
    """The key right after every key starting with `prefix` (etcd's prefix range)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # the prefix ends with "/": never 0xff
    return _b64(bytes(raw))


class _Refused(Exception):
    """etcd answered the call with an error (its gRPC `code`)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EtcdStore:
    """The registry in the etcd cluster at `url` (module docstring)."""

    kind = "etcd"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = "https" if parts.scheme == "etcds" else "http"
        hosts = [host.strip() for host in parts.netloc.split(",") if host.strip()]
        if not hosts or parts.query:
            raise InvalidInput(f"bad registry URL {url!r}: etcd://host:port[,host:port][/prefix/]")
        self._bases = [f"{scheme}://{host}" for host in hosts]
        prefix = parts.path or _DEFAULT_PREFIX
        self._prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._lease: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` on the first endpoint that answers; its JSON answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT))
        failure: BaseException | None = None
        for _ in range(len(self._bases)):
            base = self._bases[0]
            try:
                async with self._session.post(base + path, json=body) as response:
                    answer = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                failure = exc
                self._bases.append(self._bases.pop(0))  # the next endpoint, this one last
                continue
            if not isinstance(answer, dict):
                raise RegistryUnavailable(f"etcd answered {path} with {answer!r:.200}")
            if "error" in answer or response.status >= 400:
                code = answer.get("code")
                raise _Refused(code if isinstance(code, int) else -1, str(answer.get("message")))
            return answer
        raise RegistryUnavailable(f"etcd: {type(failure).__name__}: {failure}") from failure

    async def _grant(self, ttl: float) -> str:
        answer = await self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))})
        lease = str(answer["ID"])
        self._lease = lease
        return lease

    async def _alive(self, lease: str) -> bool:
        """Keep `lease` alive; False if etcd no longer knows it."""
        answer = await self._call("/v3/lease/keepalive", {"ID": lease})
        result = answer.get("result", {})
        return int(result.get("TTL", 0)) > 0  # an ended lease comes back without a TTL

    async def put(self, node: NodeInfo, ttl: float) -> None:
        try:
            lease = self._lease
            if lease is None or not await self._alive(lease):
                lease = await self._grant(ttl)
            body = {
                "key": _b64(self._prefix + node.id),
                "value": _b64(msgspec.json.encode(node)),
                "lease": lease,
            }
            try:
                await self._call("/v3/kv/put", body)
            except _Refused as exc:
                if exc.code != _NOT_FOUND:
                    raise
                body["lease"] = await self._grant(ttl)  # it ended between the two calls
                await self._call("/v3/kv/put", body)
        except _Refused as exc:
            self._lease = None
            raise RegistryUnavailable(f"etcd refused: {exc}") from exc

    async def remove(self, node_id: str) -> None:
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                try:
                    await self._call("/v3/lease/revoke", {"ID": lease})  # deletes its keys
                except _Refused as exc:
                    if exc.code != _NOT_FOUND:
                        raise
            await self._call("/v3/kv/deleterange", {"key": _b64(self._prefix + node_id)})
        except _Refused as exc:
            raise RegistryUnavailable(f"etcd refused: {exc}") from exc

    async def nodes(self) -> list[NodeInfo]:
        body = {"key": _b64(self._prefix), "range_end": _range_end(self._prefix)}
        try:
            answer = await self._call("/v3/kv/range", body)
        except _Refused as exc:
            raise RegistryUnavailable(f"etcd refused: {exc}") from exc
        found = []
        for kv in answer.get("kvs", ()):
            try:
                found.append(msgspec.json.decode(base64.b64decode(kv["value"]), type=NodeInfo))
            except (KeyError, ValueError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # not an entry of ours (another version's, or a stray key)
        return found

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
