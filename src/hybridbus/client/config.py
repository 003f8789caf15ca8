"""The settings of one client connection: `ClientConfig`.

Owns: the frozen config struct every part of the client reads (the
connection, the token source). Must not import the rest of the client, so
that every client module can import it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import msgspec

from hybridbus.core.backoff import Backoff

__all__ = ["ClientConfig"]


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one client connection."""

    subprotocol: str = "hybridbus.v1.json"
    backoff: Backoff = Backoff(base=0.05, cap=5.0)
    request_timeout: float = 30.0  # seconds a command may wait, reconnects included
    queue_size: int = 10_000  # deliveries a subscription holds for the application
    tick: float = 1.0  # seconds between heartbeat checks
    refresh_margin: float = 30.0  # refresh a provider's token this long before it expires
    name: str | None = None
    device: str | None = None
    # wss:// servers are verified against the system's CAs, or these: a PEM file of CA
    # certificates, or an ssl.SSLContext (`client.tls`; docs/security.md, "TLS").
    ca: str | Path | ssl.SSLContext | None = None

    def trusting(self, ca: str | Path | ssl.SSLContext | None) -> ClientConfig:
        """This config with `ca` in place of its own (unchanged if `ca` is None)."""
        return self if ca is None else msgspec.structs.replace(self, ca=ca)

    def refresh_lead(self, lifetime: float) -> float:
        """How long before expiry to refresh a token that has `lifetime` seconds left.

        `refresh_margin`, but at most a quarter of the lifetime: a short-lived
        token is refreshed after three quarters of it, not at once.
        """
        return max(0.0, min(self.refresh_margin, lifetime / 4))
