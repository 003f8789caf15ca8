"""TLS for the gRPC listener: grpc's server credentials over the server's certificate.

Owns: `server_credentials(tls)`, the `grpc.ServerCredentials` of a
`server.tls.ServerTls` — grpc's dynamic credentials, whose fetcher grpc calls
on its own threads before each new connection's handshake: it answers the
certificate configuration once per reload (`Material.generation` moved), and
None ("unchanged") otherwise, so a certificate replaced on disk serves new
gRPC connections as it serves new HTTPS ones. With a client CA, clients must
present a certificate it signed (mutual TLS). Must not read files: the
`ServerTls` does, and checks them, on the event loop.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc

from hybridbus.server.tls import Material, ServerTls

__all__ = ["server_credentials"]


def _configuration(material: Material) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.client_ca
    )


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port` that follow `tls`'s reloads."""
    initial = tls.material
    served = [initial.generation]  # what grpc holds, as the fetcher last answered
    lock = threading.Lock()  # grpc may fetch from several threads at once

    def fetch() -> Any:
        material = tls.material
        with lock:
            if material.generation == served[0]:
                return None
            served[0] = material.generation
        return _configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(initial), fetch, require_client_authentication=tls.mutual
    )
