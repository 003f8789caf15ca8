"""`hybridbus serve --dev-tls`: a throwaway certificate authority and a certificate for this host.

Owns: making, in a directory (`dev_directory`: beside sqlite's data, else one
per user in the temporary directory), `ca.pem` (a self-signed development CA that a
client is told to trust: `--ca`, `curl --cacert`, `NODE_EXTRA_CA_CERTS`),
`cert.pem` (signed by it, for `localhost`, `127.0.0.1` and `::1`) and
`key.pem` (its private key, mode 0600) — and keeping them across restarts
while the certificate has more than 30 days left, so a client that trusts the
CA once goes on trusting the server; and the two builders it uses, `new_ca`
and `issue` (the TLS tests make their certificates with them too). Must not
be used in production: the CA's key sits next to it (`ca-key.pem`), anyone
who reads it can sign for any name. Must not serve: the settings `tls_cert` /
`tls_key` point at the files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from hybridbus.errors import InvalidInput

if TYPE_CHECKING:  # cryptography is imported when a certificate is made, not at start-up
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = ["DevCertificates", "dev_certificates", "dev_directory", "issue", "new_ca", "private_pem"]

_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_LIFETIME: Final = datetime.timedelta(days=365)
_RENEW_BEFORE: Final = datetime.timedelta(days=30)
_SKEW: Final = datetime.timedelta(minutes=5)  # certificates start this much in the past


class DevCertificates(NamedTuple):
    """The files: the CA to trust, the server's certificate and its key."""

    ca: Path
    cert: Path
    key: Path


def new_ca(
    common_name: str, lifetime: datetime.timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (P-256, signing leaf certificates only) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC) - _SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    names: Iterable[str],
    lifetime: datetime.timedelta,
    *,
    client: bool = False,
    rsa: bool = False,
) -> tuple[x509.Certificate, PrivateKey]:
    """A certificate signed by `ca` for `names` (IP addresses or DNS names) and its new key.

    For a server (extended key usage serverAuth), or with `client` for mutual TLS (clientAuth).
    The key is P-256, or RSA-2048 with `rsa` (the TLS tests reload between the two).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    now = datetime.datetime.now(datetime.UTC) - _SKEW
    key: PrivateKey = (
        rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa
        else ec.generate_private_key(ec.SECP256R1())
    )
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def private_pem(key: PrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _usable(files: DevCertificates) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        files.key.stat()
        files.ca.stat()
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > _RENEW_BEFORE


def dev_directory(data: str | None) -> Path:
    """Where `--dev-tls` keeps its files: beside sqlite's `data` directory (the same CA across
    restarts), else one directory per user in the temporary directory (kept across restarts,
    shared by `--workers`), refused when someone else owns it."""
    if data is not None:
        return Path(data) / "dev-tls"
    directory = Path(tempfile.gettempdir()) / f"hybridbus-dev-tls-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.stat().st_uid != os.getuid() or directory.is_symlink():
        raise InvalidInput(f"--dev-tls: {directory} belongs to someone else")
    return directory


def dev_certificates(directory: Path) -> DevCertificates:
    """The development CA and certificate in `directory`, made unless still good there."""
    files = DevCertificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    if _usable(files):
        return files
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    today = datetime.datetime.now(datetime.UTC) - _SKEW
    ca = new_ca(f"hybridbus development CA {today:%Y-%m-%d}", 2 * _LIFETIME)
    cert, key = issue(ca, "localhost", _NAMES, _LIFETIME)
    pem = serialization.Encoding.PEM
    _write(directory / "ca-key.pem", private_pem(ca[1]), private=True)
    _write(files.key, private_pem(key), private=True)
    _write(files.ca, ca[0].public_bytes(pem))
    _write(files.cert, cert.public_bytes(pem))  # last: its presence says the rest is there
    return files
