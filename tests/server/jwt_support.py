"""Keys, claims and helpers shared by the JWT tests (test_tokens.py, test_keys.py).

Real `cryptography` keys, made once per test session; tokens signed with PyJWT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hybridbus.errors import Unauthorized
from hybridbus.server.keys import KeyRing, KeySpec
from hybridbus.server.tokens import TokenVerifier

NOW = 1_700_000_000
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"  # 35 bytes
OTHER_SECRET = "another-secret-another-secret-another!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def private_pem(key: Any) -> str:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def public_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at NOW, with `overrides` (None removes a claim)."""
    base: dict[str, Any] = {"sub": "alice", "tenantid": "acme", "iat": NOW, "exp": NOW + 3600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def hs256(payload: Mapping[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(dict(payload), secret, algorithm="HS256", headers=headers or None)


def verifier(*keys: KeySpec, now: float = NOW, **options: Any) -> TokenVerifier:
    return TokenVerifier(
        KeyRing(keys or (KeySpec(alg="HS256", secret=SECRET),)), clock=lambda: now, **options
    )


def refused(verify: TokenVerifier, token: str) -> Unauthorized:
    """The error `verify` refuses `token` with; it never contains the secret."""
    with pytest.raises(Unauthorized) as info:
        verify.verify(token)
    assert SECRET not in str(info.value)
    return info.value
