"""The client side of TLS: the CAs a client trusts, and the certificate it presents.

Owns: turning the `ca` option of every client (the Python client, the CLI's
`--ca` / `$HYBRIDBUS_CA`, the log transports) into what its library takes —
an `ssl.SSLContext` for aiohttp and urllib (`client_context`), PEM bytes for
grpc (`ca_pem`). `ca` is a PEM file of one or more CA certificates, or an
`ssl.SSLContext` made by the application; None means the system's trusted
CAs. Either way the server's certificate is verified, its host name
included: there is no option to turn verification off. For mutual TLS,
`client_context` also loads a client certificate and its key (the CLI's
`--cert` / `--key`). `cli_hint` says which of the CLI's options a failed TLS
connection asks for. Must not open connections.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

from hybridbus.errors import InvalidInput

__all__ = ["Ca", "ca_pem", "cli_hint", "client_context", "client_pem"]

Ca = str | Path | ssl.SSLContext  # a PEM file of CA certificates, or a context

# How a failed handshake reads when the server wanted a client certificate it did not get
# (or did not trust): a TLS alert, or — TLS 1.3 sends it after the client's Finished — the
# connection closed under the client's first request.
_CLOSED_IN_HANDSHAKE = (
    "alert",
    "certificate required",
    "reset by peer",
    "server disconnected",
    "closed connection",
    "eof occurred",
)


def client_context(
    ca: Ca | None, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext | None:
    """The context to verify servers with; None (the library's default: system CAs) if no `ca`.

    With `cert` (a PEM file of the client certificate, its chain after it, and its key
    unless `key` names the key's PEM file), the context also presents it, for servers
    that require one (mutual TLS); it then verifies with `ca` or the system's CAs. An
    encrypted key is refused (nothing may prompt for a passphrase). Raises `InvalidInput`
    naming the file if it cannot be read, holds no certificate, or the key is not the
    certificate's.
    """
    if cert is None:
        if key is not None:
            raise InvalidInput(f"key {key}: a client key goes with a client certificate (cert)")
        if ca is None or isinstance(ca, ssl.SSLContext):
            return ca
    elif isinstance(ca, ssl.SSLContext):
        raise InvalidInput(
            "a client certificate goes into the ssl.SSLContext given as ca "
            "(its load_cert_chain), not beside it"
        )
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"ca {ca}: not a readable PEM file of CA certificates: {exc}") from None
    if cert is not None:
        _load_client_certificate(context, cert, key)
    return context


def _load_client_certificate(
    context: ssl.SSLContext, cert: str | Path, key: str | Path | None
) -> None:
    def encrypted() -> NoReturn:
        raise InvalidInput(f"key {key or cert}: encrypted; give the key unencrypted")

    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except (OSError, ssl.SSLError) as exc:
        pair = f"cert {cert}" + ("" if key is None else f" and key {key}")
        raise InvalidInput(
            f"{pair}: not a readable PEM certificate with its private key: {exc}"
        ) from None


def ca_pem(ca: Ca | None) -> bytes | None:
    """The CA certificates as PEM bytes (grpc's `root_certificates`); None: the system's."""
    if ca is None:
        return None
    if isinstance(ca, ssl.SSLContext):
        ders = ca.get_ca_certs(binary_form=True)
        if not ders:
            raise InvalidInput("the ssl.SSLContext given as ca holds no CA certificate")
        return "".join(ssl.DER_cert_to_PEM_cert(der) for der in ders).encode()
    client_context(ca)  # the same check and error as the other clients
    return Path(ca).read_bytes()


def client_pem(cert: str | Path, key: str | Path | None = None) -> tuple[bytes, bytes]:
    """A client certificate (chain) and its key as PEM bytes, for grpc's channel credentials.

    Checked as `client_context` checks them (the same errors); the key is the
    certificate file's own when `key` is None.
    """
    _load_client_certificate(ssl.create_default_context(), cert, key)
    try:
        return Path(cert).read_bytes(), Path(key or cert).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cert {cert}: cannot read it: {exc.strerror}") from None


def cli_hint(url: str, reason: str) -> str | None:
    """What the CLI says to try when a connection to `url` failed with `reason`, if TLS is why.

    A server certificate not trusted: `--ca`. A handshake ended by the server (what a
    server requiring a client certificate does to a client without one, or with one it
    does not trust): `--cert` and `--key`. Anything else, or a plain `ws://`/`http://`
    URL: None.
    """
    if not url.lower().startswith(("wss:", "https:")):
        return None
    text = reason.lower()
    if "certificate verify failed" in text:
        return "trust the server's CA with --ca FILE or $HYBRIDBUS_CA"
    if any(sign in text for sign in _CLOSED_IN_HANDSHAKE):
        return (
            "a server that requires a client certificate (mutual TLS) ends the connection "
            "like this: present one its CA signed with --cert FILE --key FILE, or "
            "$HYBRIDBUS_CERT and $HYBRIDBUS_KEY"
        )
    return None
