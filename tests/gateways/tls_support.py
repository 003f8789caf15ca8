"""Throwaway certificates for the TLS tests (imported as `tests.gateways.tls_support`).

`Pki.make(directory)` writes, with the `cryptography` package: two CAs (`ca`,
and `other_ca` that nobody trusts), server certificates for 127.0.0.1 and
localhost (`server`, and `server2` for reloads, both signed by `ca`;
`server_other_ca`, signed by `other_ca`), one for another host only
(`wrong_host`), and client certificates for mutual TLS (`client` by `ca`,
`stranger` by `other_ca`). `serial(der)` reads a certificate's serial number;
`peer_serial(host, port, ca)` makes a TLS handshake and returns the serial of
the certificate the server presented.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files; `serial` is the certificate's."""

    cert: Path
    key: Path
    serial: int


@dataclass
class _Ca:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    file: Path


def _ca(directory: Path, label: str) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {label}")])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    file = directory / f"{label}.pem"
    file.write_bytes(cert.public_bytes(_PEM))
    return _Ca(name, key, file)


def _issue(ca: _Ca, directory: Path, label: str, names: list[str], *, client: bool) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{label}.pem", directory / f"{label}-key.pem"
    cert_file.write_bytes(cert.public_bytes(_PEM))
    key_file.write_bytes(
        key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pair(cert_file, key_file, serial)


@dataclass(frozen=True)
class Pki:
    """The test certificates (module docstring)."""

    ca: Path
    other_ca: Path
    server: Pair
    server2: Pair
    server_other_ca: Pair
    wrong_host: Pair
    client: Pair
    stranger: Pair

    @classmethod
    def make(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca, other = _ca(directory, "ca"), _ca(directory, "other-ca")
        here = ["127.0.0.1", "localhost"]
        return cls(
            ca=ca.file,
            other_ca=other.file,
            server=_issue(ca, directory, "server", here, client=False),
            server2=_issue(ca, directory, "server2", here, client=False),
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
