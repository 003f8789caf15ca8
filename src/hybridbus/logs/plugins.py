"""Finding a formatter by name and a transport by URL: the built-ins, then entry points.

Owns: `formatter(name)` and `transport(url, ...)`, and loading third-party
ones from the Python entry point groups `hybridbus.log_formatters` (name:
the formatter's name) and `hybridbus.log_transports` (name: the URL scheme
it serves). A built-in wins over an entry point of the same name. Must not
import a plug-in before it is asked for.

An entry point of `hybridbus.log_formatters` names a `Formatter` object, or
a class or factory called with the options given to `formatter()`. One of
`hybridbus.log_transports` names a factory called as `factory(url, **options)`
with the options given to `transport()` (only those that are set). Either
way, what comes back must have the interface (`Formatter`: `format`;
`Transport`: `open`, `send`, `close`), else `InvalidInput`.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final
from urllib.parse import urlsplit

from hybridbus.errors import InvalidInput
from hybridbus.logs.formatters import BUILTIN, Formatter
from hybridbus.logs.transports import (
    FileTransport,
    GrpcTransport,
    HttpTransport,
    Transport,
    WebSocketTransport,
)

__all__ = [
    "FORMATTER_GROUP",
    "TRANSPORT_GROUP",
    "formatter",
    "formatter_names",
    "transport",
    "transport_schemes",
]

FORMATTER_GROUP: Final = "hybridbus.log_formatters"
TRANSPORT_GROUP: Final = "hybridbus.log_transports"
_SCHEMES: Final = ("ws", "wss", "grpc", "grpcs", "http", "https", "file")


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def formatter_names() -> list[str]:
    """Every formatter name: the built-ins, then the installed plug-ins'."""
    return [*BUILTIN, *sorted(set(_entry_points(FORMATTER_GROUP)) - set(BUILTIN))]


def transport_schemes() -> list[str]:
    """Every URL scheme a transport serves: the built-ins', then the installed plug-ins'."""
    return [*_SCHEMES, *sorted(set(_entry_points(TRANSPORT_GROUP)) - set(_SCHEMES))]


def _load(ep: EntryPoint, group: str) -> Any:
    try:
        return ep.load()
    except Exception as exc:  # a plug-in's import can fail any way
        raise InvalidInput(
            f"the {group} plug-in {ep.name!r} ({ep.value}) failed to load: {exc}"
        ) from exc


def formatter(name: str, **options: Any) -> Formatter:
    """The formatter called `name` (json, plain, syslog, protobuf, or a plug-in's).

    `options` go to its class (e.g. `formatter("syslog", facility=16)`).
    """
    if name in BUILTIN:
        built: Formatter = BUILTIN[name](**options)
        return built
    ep = _entry_points(FORMATTER_GROUP).get(name)
    if ep is None:
        raise InvalidInput(
            f"no log formatter {name!r}: there are {', '.join(formatter_names())} "
            f"(plug-ins register in the entry point group {FORMATTER_GROUP})"
        )
    loaded = _load(ep, FORMATTER_GROUP)
    made = (
        loaded(**options) if isinstance(loaded, type) or not hasattr(loaded, "format") else loaded
    )
    if not isinstance(made, Formatter):
        raise InvalidInput(f"the log formatter plug-in {name!r} has no format() method")
    return made


def transport(
    url: str,
    *,
    token: str | None = None,
    tenant: str | None = None,
    formatter: Formatter | str | None = None,
    **options: Any,
) -> Transport:
    """The transport for `url`, chosen by its scheme.

    `ws://` / `wss://` (WebSocket, the default way), `grpc://host:port` /
    `grpcs://`, `http://` / `https://`, `file:///path` — or a plug-in's
    scheme. `token` authenticates (not for files); `tenant` is for HTTP and
    gRPC, whose topics are absolute (default: `?tenant=` in the URL, or the
    token's `tenantid` claim); `formatter` (a `Formatter` or a name) is for
    files. `options` go to the transport's class or factory.
    """
    scheme = urlsplit(url).scheme.lower()
    fmt = _formatter(formatter)
    if scheme in ("ws", "wss"):
        return WebSocketTransport(url, token=token, **options)
    if scheme in ("grpc", "grpcs"):
        return GrpcTransport(url, token=token, tenant=tenant, **options)
    if scheme in ("http", "https"):
        return HttpTransport(url, token=token, tenant=tenant, **options)
    if scheme == "file":
        return FileTransport(url, formatter=fmt, **options)
    ep = _entry_points(TRANSPORT_GROUP).get(scheme)
    if ep is None:
        raise InvalidInput(
            f"no log transport for {scheme + '://' if scheme else url!r}: there are "
            f"{', '.join(s + '://' for s in transport_schemes())} "
            f"(plug-ins register in the entry point group {TRANSPORT_GROUP})"
        )
    factory = _load(ep, TRANSPORT_GROUP)
    given = {"token": token, "tenant": tenant, "formatter": fmt}
    made = factory(url, **{k: v for k, v in given.items() if v is not None}, **options)
    if not isinstance(made, Transport):
        raise InvalidInput(
            f"the log transport plug-in {scheme!r} made a {type(made).__name__}, "
            "which has not open(), send() and close()"
        )
    return made


def _formatter(value: Formatter | str | None) -> Formatter | None:
    return formatter(value) if isinstance(value, str) else value
