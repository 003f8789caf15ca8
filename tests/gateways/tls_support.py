"""Throwaway certificates for the TLS tests (imported as `tests.gateways.tls_support`).

`Pki.make(directory)` writes, with dev_tls's `new_ca` and `issue` (the builders of
`hybridbus serve --dev-tls`): two CAs (`ca`,
and `other_ca` that nobody trusts), server certificates for 127.0.0.1 and
localhost (`server`, and `server2` for reloads, both signed by `ca`;
`server_rsa`, the same with an RSA key where the others have P-256 ones;
`server_other_ca`, signed by `other_ca`), one for another host only
(`wrong_host`), and client certificates for mutual TLS (`client` by `ca`,
`stranger` by `other_ca`). `serial(der)` reads a certificate's serial number;
`peer_serial(host, port, ca)` makes a TLS handshake and returns the serial of
the certificate the server presented.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hybridbus.server.dev_tls import issue, new_ca, private_pem

_PEM = serialization.Encoding.PEM
_Ca = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files; `serial` is the certificate's."""

    cert: Path
    key: Path
    serial: int


def _ca(directory: Path, label: str) -> tuple[_Ca, Path]:
    ca = new_ca(f"test CA {label}", datetime.timedelta(days=2))
    file = directory / f"{label}.pem"
    file.write_bytes(ca[0].public_bytes(_PEM))
    return ca, file


def _issue(
    ca: _Ca, directory: Path, label: str, names: list[str], *, client: bool, rsa: bool = False
) -> Pair:
    cert, key = issue(ca, label, names, datetime.timedelta(days=1), client=client, rsa=rsa)
    cert_file, key_file = directory / f"{label}.pem", directory / f"{label}-key.pem"
    cert_file.write_bytes(cert.public_bytes(_PEM))
    key_file.write_bytes(private_pem(key))
    return Pair(cert_file, key_file, cert.serial_number)


@dataclass(frozen=True)
class Pki:
    """The test certificates (module docstring)."""

    ca: Path
    other_ca: Path
    server: Pair
    server2: Pair
    server_rsa: Pair
    server_other_ca: Pair
    wrong_host: Pair
    client: Pair
    stranger: Pair

    @classmethod
    def make(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        (ca, ca_file), (other, other_file) = _ca(directory, "ca"), _ca(directory, "other-ca")
        here = ["127.0.0.1", "localhost"]
        return cls(
            ca=ca_file,
            other_ca=other_file,
            server=_issue(ca, directory, "server", here, client=False),
            server2=_issue(ca, directory, "server2", here, client=False),
            server_rsa=_issue(ca, directory, "server-rsa", here, client=False, rsa=True),
            server_other_ca=_issue(other, directory, "server-other-ca", here, client=False),
            wrong_host=_issue(ca, directory, "wrong-host", ["other.example"], client=False),
            client=_issue(ca, directory, "client", ["client.example"], client=True),
            stranger=_issue(other, directory, "stranger", ["stranger.example"], client=True),
        )

    def context(self, ca: Path | None = None, client: Pair | None = None) -> ssl.SSLContext:
        """A client context trusting `ca` (default: the test CA), presenting `client` if given."""
        context = ssl.create_default_context(cafile=str(ca or self.ca))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context


def serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


async def peer_serial(port: int, context: ssl.SSLContext) -> int:
    """A new TLS handshake with 127.0.0.1:`port`: the serial of the server's certificate."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return serial(der)
