"""Webhook signatures: Standard Webhooks and a generic HMAC scheme, signing and verifying.

Owns: the keys (`whsec_` HMAC secrets, `whpk_` / `whsk_` ed25519 keys, raw
HMAC secrets), signing a webhook and verifying one against several keys at
once (rotation), the replay window, and what a refusal says. Must not do
I/O, read a clock (every check takes `now`) nor know HTTP beyond a mapping
of header names to values. The outbound side signs with the same functions.

Standard Webhooks (https://www.standardwebhooks.com, spec 1.0.0). A webhook
carries `webhook-id`, `webhook-timestamp` (integer Unix seconds) and
`webhook-signature`: space-separated `<version>,<base64>` signatures of
`<id>.<timestamp>.<body>` (the header texts as received, the body's bytes
exactly as received). `v1` is HMAC-SHA256 with the secret of a `whsec_` key
(base64 of 24-64 random bytes, padding optional); `v1a` is ed25519, verified
with a `whpk_` key (base64 of the 32-byte public key) and signed with a
`whsk_` key (base64 of the 32-byte seed, or of the 64 bytes seed + public
key that libsodium writes). A receiver holds only public keys: a `whsk_` key
is refused for verifying. A webhook is authentic if any of its signatures
matches any key (so an endpoint rotates by holding the old and the new key
for a while); signatures of unknown versions are skipped.

The generic HMAC scheme (`HmacScheme`) is for platforms that sign their own
way: one header holds `<prefix><digest>` (`X-Hub-Signature-256:
sha256=<hex>` for GitHub; `X-Slack-Signature: v0=<hex>` for Slack), the
digest is HMAC-SHA1/256/512 in hex or base64 of a string made from the body,
and optionally a timestamp header, by a template: `{body}` (GitHub),
`{timestamp}.{body}`, `v0:{timestamp}:{body}` (Slack). A header may hold
several signatures separated by spaces or commas.

Checks, in order: the headers are there and well formed, a signature
matches (`WebhookRefused`, 1130), then the timestamp is within `tolerance`
seconds of `now` either way (`TimestampOutOfWindow`, 1131: authentic, but a
replay or a skewed clock). Digests are compared in constant time
(`hmac.compare_digest`); ed25519 by `cryptography`. No message quotes a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Final, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hybridbus.errors import TimestampOutOfWindow, WebhookRefused

__all__ = [
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "TOLERANCE",
    "HmacScheme",
    "Key",
    "SigningKey",
    "Verified",
    "find_header",
    "hmac_key",
    "hmac_sign",
    "hmac_verify",
    "new_keypair",
    "new_secret",
    "parse_key",
    "signing_key",
    "standard_headers",
    "standard_sign",
    "standard_verify",
]

HEADER_ID: Final = "webhook-id"
HEADER_TIMESTAMP: Final = "webhook-timestamp"
HEADER_SIGNATURE: Final = "webhook-signature"
TOLERANCE: Final = 300.0  # seconds either way: the spec's five minutes

_SECRET_PREFIX: Final = "whsec_"
_PUBLIC_PREFIX: Final = "whpk_"
_PRIVATE_PREFIX: Final = "whsk_"
_MIN_SECRET: Final = 16  # bytes of a whsec_ secret (the spec asks senders for 24 to 64)
_MAX_SECRET: Final = 64
_MAX_SIGNATURES: Final = 16  # signatures read from one header; more are ignored
_MAX_HEADER: Final = 4096  # characters of a signature header read
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
_DIGESTS: Final = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}

KeyKind = Literal["whsec", "whpk", "hmac"]


class Key:
    """A key that verifies: a `whsec_` secret (v1), a `whpk_` public key (v1a), an HMAC secret.

    `id` names it without disclosing it (`whsec:1a2b3c4d`): what listings show.
    """

    __slots__ = ("_public", "_secret", "id", "kind")

    def __init__(self, kind: KeyKind, secret: bytes = b"", public: Ed25519PublicKey | None = None):
        self.kind: KeyKind = kind
        self._secret = secret
        self._public = public
        material = secret if public is None else public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        digest = hashlib.sha256(b"hybridbus webhook key\0" + material).hexdigest()
        self.id = f"{kind}:{digest[:8]}"

    def __repr__(self) -> str:  # never the key itself
        return f"Key({self.id})"


class SigningKey:
    """A key that signs: a `whsec_` secret (v1) or a `whsk_` private key (v1a)."""

    __slots__ = ("_private", "_secret", "version")

    def __init__(self, secret: bytes = b"", private: Ed25519PrivateKey | None = None) -> None:
        self._secret = secret
        self._private = private
        self.version = "v1" if private is None else "v1a"

    def public(self) -> Key:
        """The key that verifies what this one signs."""
        if self._private is None:
            return Key("whsec", self._secret)
        return Key("whpk", public=self._private.public_key())

    def __repr__(self) -> str:
        return f"SigningKey({self.version})"


class Verified(msgspec.Struct, frozen=True):
    """What a verified webhook's headers said: its id (if any) and timestamp (if any)."""

    id: str | None
    timestamp: int | None


# -- keys ----------------------------------------------------------------------------


def _b64(text: str, what: str) -> bytes:
    """Base64 (standard alphabet, padding optional) or ValueError naming `what`, not the text."""
    text = text.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None


def parse_key(text: str) -> Key:
    """The verifying key written `whsec_<base64>` or `whpk_<base64>` (ValueError if neither)."""
    if text.startswith(_SECRET_PREFIX):
        secret = _b64(text[len(_SECRET_PREFIX) :], "a whsec_ secret")
        if not _MIN_SECRET <= len(secret) <= _MAX_SECRET:
            raise ValueError(
                f"a whsec_ secret holds {_MIN_SECRET} to {_MAX_SECRET} bytes, not {len(secret)}"
            )
        return Key("whsec", secret)
    if text.startswith(_PUBLIC_PREFIX):
        raw = _b64(text[len(_PUBLIC_PREFIX) :], "a whpk_ key")
        if len(raw) != 32:
            raise ValueError(f"a whpk_ key is 32 bytes (an ed25519 public key), not {len(raw)}")
        return Key("whpk", public=Ed25519PublicKey.from_public_bytes(raw))
    if text.startswith(_PRIVATE_PREFIX):
        raise ValueError("a whsk_ key is a private key: give the receiver its public key (whpk_)")
    raise ValueError("a Standard Webhooks key starts with whsec_ (HMAC) or whpk_ (ed25519)")


def signing_key(text: str) -> SigningKey:
    """The signing key written `whsec_<base64>` or `whsk_<base64>` (ValueError if neither)."""
    if text.startswith(_PRIVATE_PREFIX):
        raw = _b64(text[len(_PRIVATE_PREFIX) :], "a whsk_ key")
        if len(raw) not in (32, 64):
            raise ValueError(f"a whsk_ key is 32 bytes (or 64: seed + public), not {len(raw)}")
        private = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if (
            len(raw) == 64
            and private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != raw[32:]
        ):
            raise ValueError("a 64-byte whsk_ key's second half is not its public key")
        return SigningKey(private=private)
    key = parse_key(text)
    return SigningKey(secret=key._secret)


def hmac_key(text: str) -> Key:
    """A generic HMAC secret: the text's UTF-8 bytes, as platforms such as GitHub use them."""
    if not text:
        raise ValueError("an HMAC secret must not be empty")
    return Key("hmac", text.encode())


def new_secret() -> str:
    """A new `whsec_` secret (32 random bytes)."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_keypair() -> tuple[str, str]:
    """A new ed25519 pair: (`whsk_` private key, `whpk_` public key)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return (
        _PRIVATE_PREFIX + base64.b64encode(seed).decode(),
        _PUBLIC_PREFIX + base64.b64encode(public).decode(),
    )


# -- Standard Webhooks ---------------------------------------------------------------


def find_header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name (aiohttp's headers are; a dict may not be)."""
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for key, found in headers.items():
            if key.lower() == lower:
                return found
    return value


def _content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return b"%s.%s.%s" % (msg_id.encode(), timestamp.encode(), body)


def standard_sign(msg_id: str, timestamp: int, body: bytes, keys: Iterable[SigningKey]) -> str:
    """The `webhook-signature` value: one signature per key, space-separated."""
    content = _content(msg_id, str(timestamp), body)
    out = []
    for key in keys:
        if key._private is not None:
            out.append("v1a," + base64.b64encode(key._private.sign(content)).decode())
        else:
            digest = hmac.new(key._secret, content, hashlib.sha256).digest()
            out.append("v1," + base64.b64encode(digest).decode())
    return " ".join(out)


def standard_headers(
    msg_id: str, timestamp: int, body: bytes, keys: Iterable[SigningKey]
) -> dict[str, str]:
    """The three headers of a Standard Webhooks request."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: standard_sign(msg_id, timestamp, body, keys),
    }


def _signatures(value: str, separators: str = " ") -> list[str]:
    value = value[:_MAX_HEADER]
    for separator in separators[1:]:
        value = value.replace(separator, separators[0])
    return [part for part in value.split(separators[0]) if part][:_MAX_SIGNATURES]


def _timestamp(text: str | None, header: str) -> int:
    if text is None:
        raise WebhookRefused(f"the {header} header is missing")
    text = text.strip()
    if not _TIMESTAMP.fullmatch(text):
        raise WebhookRefused(f"the {header} header must be integer Unix seconds")
    return int(text)


def _in_window(timestamp: int, now: float, tolerance: float) -> None:
    if abs(now - timestamp) > tolerance:
        when = "in the past" if timestamp < now else "in the future"
        raise TimestampOutOfWindow(
            f"the webhook's timestamp is {abs(now - timestamp):.0f} s {when}: at most "
            f"{tolerance:g} s either way is taken (a replay, or a clock off)"
        )


def standard_verify(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[Key],
    now: float,
    tolerance: float = TOLERANCE,
) -> Verified:
    """Verify a Standard Webhooks request; its id and timestamp, or raise (module docstring)."""
    msg_id = find_header(headers, HEADER_ID)
    if not msg_id:
        raise WebhookRefused(f"the {HEADER_ID} header is missing")
    stamp = find_header(headers, HEADER_TIMESTAMP)
    timestamp = _timestamp(stamp, HEADER_TIMESTAMP)
    assert stamp is not None
    value = find_header(headers, HEADER_SIGNATURE)
    if not value:
        raise WebhookRefused(f"the {HEADER_SIGNATURE} header is missing")
    content = _content(msg_id, stamp.strip(), body)
    digests: dict[int, bytes] = {}  # the v1 digest per secret, made at most once each
    for signature in _signatures(value):
        version, _, encoded = signature.partition(",")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for index, key in enumerate(keys):
            if version == "v1" and key.kind == "whsec":
                expected = digests.get(index)
                if expected is None:
                    expected = digests[index] = hmac.new(
                        key._secret, content, hashlib.sha256
                    ).digest()
                if hmac.compare_digest(expected, raw):
                    _in_window(timestamp, now, tolerance)
                    return Verified(msg_id, timestamp)
            elif version == "v1a" and key.kind == "whpk" and key._public is not None:
                try:
                    key._public.verify(raw, content)
                except InvalidSignature:
                    continue
                _in_window(timestamp, now, tolerance)
                return Verified(msg_id, timestamp)
    raise WebhookRefused("no signature of the webhook matches a key of the endpoint")


# -- the generic HMAC scheme ------------------------------------------------------------

_HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
_SIGNED: Final = re.compile(r"\{(body|timestamp|id)\}")


class HmacScheme(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a platform signs with HMAC when it does not follow Standard Webhooks.

    `signed` is the signed string's template: `{body}` (the body's bytes),
    `{timestamp}` (the `timestamp_header`'s value), `{id}` (the `id_header`'s).
    """

    header: _HeaderName
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: Annotated[str, msgspec.Meta(max_length=64)] = ""
    timestamp_header: _HeaderName | None = None
    id_header: _HeaderName | None = None
    signed: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = "{body}"

    def __post_init__(self) -> None:
        fields = set(_SIGNED.findall(self.signed))
        if "body" not in fields:
            raise ValueError("hmac.signed must contain {body}")
        if "timestamp" in fields and self.timestamp_header is None:
            raise ValueError("hmac.signed uses {timestamp}: set hmac.timestamp_header")
        if "id" in fields and self.id_header is None:
            raise ValueError("hmac.signed uses {id}: set hmac.id_header")
        if _SIGNED.sub("", self.signed).count("{") or _SIGNED.sub("", self.signed).count("}"):
            raise ValueError("hmac.signed may hold only {body}, {timestamp} and {id} in braces")


def _signed(scheme: HmacScheme, body: bytes, timestamp: str | None, msg_id: str | None) -> bytes:
    values = {"timestamp": timestamp or "", "id": msg_id or ""}
    out = []
    for index, part in enumerate(_SIGNED.split(scheme.signed)):
        if index % 2 == 0:
            out.append(part.encode())
        elif part == "body":
            out.append(body)
        else:
            out.append(values[part].encode())
    return b"".join(out)


def _digest(scheme: HmacScheme, secret: bytes, content: bytes) -> bytes:
    return hmac.new(secret, content, _DIGESTS[scheme.algorithm]).digest()


def hmac_sign(
    scheme: HmacScheme,
    secret: str,
    body: bytes,
    timestamp: int | None = None,
    msg_id: str | None = None,
) -> dict[str, str]:
    """The headers a platform signing by `scheme` with `secret` sends (tests, docs, outbound)."""
    stamp = None if timestamp is None else str(timestamp)
    digest = _digest(scheme, secret.encode(), _signed(scheme, body, stamp, msg_id))
    text = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    headers = {scheme.header: scheme.prefix + text}
    if scheme.timestamp_header is not None and stamp is not None:
        headers[scheme.timestamp_header] = stamp
    if scheme.id_header is not None and msg_id is not None:
        headers[scheme.id_header] = msg_id
    return headers


def _decode(scheme: HmacScheme, text: str) -> bytes | None:
    if scheme.prefix:
        if not text.startswith(scheme.prefix):
            return None
        text = text[len(scheme.prefix) :]
    try:
        if scheme.encoding == "hex":
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def hmac_verify(
    scheme: HmacScheme,
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[Key],
    now: float,
    tolerance: float = TOLERANCE,
) -> Verified:
    """Verify a request signed by `scheme` with any of `keys` (module docstring), or raise."""
    value = find_header(headers, scheme.header)
    if not value:
        raise WebhookRefused(f"the {scheme.header} header is missing")
    timestamp: int | None = None
    stamp: str | None = None
    if scheme.timestamp_header is not None:
        stamp = find_header(headers, scheme.timestamp_header)
        timestamp = _timestamp(stamp, scheme.timestamp_header)
        assert stamp is not None
        stamp = stamp.strip()
    msg_id: str | None = None
    if scheme.id_header is not None:
        msg_id = find_header(headers, scheme.id_header)
        if not msg_id:
            raise WebhookRefused(f"the {scheme.id_header} header is missing")
    content = _signed(scheme, body, stamp, msg_id)
    expected = [_digest(scheme, key._secret, content) for key in keys if key.kind == "hmac"]
    for signature in _signatures(value.strip(), " ,"):
        raw = _decode(scheme, signature)
        if raw is None:
            continue
        for digest in expected:
            if hmac.compare_digest(digest, raw):
                if timestamp is not None:
                    _in_window(timestamp, now, tolerance)
                return Verified(msg_id, timestamp)
    raise WebhookRefused(f"the {scheme.header} signature matches no secret of the endpoint")
