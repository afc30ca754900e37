"""Ed25519 signatures on trade signals: the master signs, copiers verify.

The signature covers the signal's canonical JSON with `signature` empty (msgspec encodes a
Struct deterministically: fixed field order, Decimals as their exact strings), so a decoded
signal re-encodes to the signed bytes. Copiers accept any of the configured public keys, which
lets a key be rotated with two keys accepted during the change-over.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from shared.errors import ConfigError
from shared.messages import AnySignal

_encoder = msgspec.json.Encoder(decimal_format="string")
S = TypeVar("S", bound=AnySignal)


def _payload(signal: AnySignal) -> bytes:
    return _encoder.encode(msgspec.structs.replace(signal, signature=""))


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} is not valid base64") from None


class SignalSigner:
    """Signs signals with the master's Ed25519 key (a 32-byte seed, base64, from a secret)."""

    def __init__(self, seed_b64: str) -> None:
        seed = _b64(seed_b64, "master signing key")
        if len(seed) != 32:
            raise ConfigError("master signing key must be a 32-byte Ed25519 seed")
        self._key = SigningKey(seed)

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def sign(self, signal: S) -> S:
        signature = self._key.sign(_payload(signal)).signature
        return msgspec.structs.replace(signal, signature=base64.b64encode(signature).decode())


class SignalVerifier:
    """Checks a signal's signature against the accepted public keys."""

    def __init__(self, public_keys_b64: list[str]) -> None:
        self._keys = [VerifyKey(_b64(k, "master public key")) for k in public_keys_b64]

    def problem(self, signal: AnySignal) -> str | None:
        """None when a configured key signed exactly this signal, else the reason code."""
        if not signal.signature:
            return "unsigned"
        try:
            signature = base64.b64decode(signal.signature, validate=True)
        except (binascii.Error, ValueError):
            return "bad_signature"
        if base64.b64encode(signature).decode() != signal.signature:
            return "bad_signature"  # non-canonical base64 (altered padding bits): not what was signed
        payload = _payload(signal)
        for key in self._keys:
            try:
                key.verify(payload, signature)
                return None
            except (BadSignatureError, ValueError):  # ValueError: not 64 bytes long
                continue
        return "bad_signature"


def new_signing_key() -> tuple[str, str]:
    """A fresh (seed, public key) pair, both base64: for `copytrade keys new`."""
    key = SigningKey.generate()
    return base64.b64encode(bytes(key)).decode(), base64.b64encode(bytes(key.verify_key)).decode()
