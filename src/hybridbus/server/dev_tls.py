"""`hybridbus serve --dev-tls`: a throwaway certificate authority and a certificate for this host.

Owns: making, in a directory, `ca.pem` (a self-signed development CA that a
client is told to trust: `--ca`, `curl --cacert`, `NODE_EXTRA_CA_CERTS`),
`cert.pem` (signed by it, for `localhost`, `127.0.0.1` and `::1`) and
`key.pem` (its private key, mode 0600) — and keeping them across restarts
while the certificate has more than 30 days left, so a client that trusts the
CA once goes on trusting the server. Must not be used in production: the
CA's key sits next to it (`ca-key.pem`), anyone who reads it can sign for any
name. Must not serve: the settings `tls_cert` / `tls_key` point at the files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Final, NamedTuple

__all__ = ["DevCertificates", "dev_certificates"]

_NAMES: Final = ("localhost",)
_ADDRESSES: Final = ("127.0.0.1", "::1")
_LIFETIME: Final = datetime.timedelta(days=365)
_RENEW_BEFORE: Final = datetime.timedelta(days=30)


class DevCertificates(NamedTuple):
    """The files: the CA to trust, the server's certificate and its key."""

    ca: Path
    cert: Path
    key: Path


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


def dev_certificates(directory: Path) -> DevCertificates:
    """The development CA and certificate in `directory`, made unless still good there."""
    files = DevCertificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    if _usable(files):
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"hybridbus development CA {now:%Y-%m-%d}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + 2 * _LIFETIME)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in _NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in _ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write(directory / "ca-key.pem", ca_key.private_bytes(pem, pkcs8, plain), private=True)
    _write(files.key, key.private_bytes(pem, pkcs8, plain), private=True)
    _write(files.ca, ca.public_bytes(pem))
    _write(files.cert, cert.public_bytes(pem))  # last: its presence says the rest is there
    return files
