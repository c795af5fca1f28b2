"""Laravel ``Encrypter`` (AES-128/256-CBC with HMAC-SHA256, AES-128/256-GCM) for encrypted job commands.

Payload: ``base64(json {"iv","value","mac","tag"})``; ``mac = hex(hmac_sha256(key, iv_b64 . value_b64))``
for CBC, ``""`` for GCM (the tag authenticates). ``value`` is OpenSSL's base64 of the ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import Iterable

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.exceptions import InvalidTag
from .errors import WireFormatError

__all__ = ["DecryptError", "MissingAppKeyError", "parse_app_key", "parse_key_list", "decrypt", "encrypt"]


class DecryptError(WireFormatError):
    """The encrypted payload is malformed, its MAC/tag is wrong, or no key fits."""


class MissingAppKeyError(DecryptError):
    """The command is encrypted and no APP_KEY was given."""


def parse_app_key(key: str | bytes) -> bytes:
    """APP_KEY as Laravel reads it: ``base64:...`` is decoded, anything else is used as raw bytes."""
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    key = key.strip()
    if key.startswith("base64:"):
        try:
            raw = base64.b64decode(key[7:], validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError("APP_KEY has a base64: prefix but is not valid base64") from None
    else:
        raw = key.encode("utf-8")
    if len(raw) not in (16, 32):
        raise DecryptError(f"APP_KEY must be 16 or 32 bytes, got {len(raw)}")
    return raw


def parse_key_list(keys: str | None) -> list[bytes]:
    """``APP_PREVIOUS_KEYS`` (comma separated) → list of raw keys."""
    if not keys:
        return []
    return [parse_app_key(k) for k in keys.split(",") if k.strip()]


def _b64(s: object, what: str) -> bytes:
    if not isinstance(s, str):
        raise DecryptError(f"encrypted payload field {what!r} is not a string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError(f"encrypted payload field {what!r} is not valid base64") from None


def _decrypt_one(key: bytes, p: dict) -> bytes:
    iv = _b64(p["iv"], "iv")
    ct = _b64(p["value"], "value")
    tag_s = p.get("tag") or ""
    if tag_s:
        tag = _b64(tag_s, "tag")
        if len(iv) != 12 or len(tag) != 16:
            raise DecryptError("The payload is invalid.")
        try:
            return AESGCM(key).decrypt(iv, ct + tag, None)
        except InvalidTag:
            raise DecryptError("Could not decrypt the data.") from None
    if len(iv) != 16:
        raise DecryptError("The payload is invalid.")
    mac = hmac.new(key, (p["iv"] + p["value"]).encode("utf-8"), hashlib.sha256).hexdigest()
    if not isinstance(p["mac"], str) or not hmac.compare_digest(mac, p["mac"]):
        raise DecryptError("The MAC is invalid.")
    if len(ct) == 0 or len(ct) % 16:
        raise DecryptError("Could not decrypt the data.")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ct) + dec.finalize()
    unp = padding.PKCS7(128).unpadder()
    try:
        return unp.update(padded) + unp.finalize()
    except ValueError:
        raise DecryptError("Could not decrypt the data.") from None


def decrypt(payload: str | bytes, key: bytes | None, previous_keys: Iterable[bytes] = ()) -> bytes:
    """``Crypt::decrypt($payload, false)``: returns the raw plaintext bytes (still PHP-serialized)."""
    keys = ([key] if key else []) + [k for k in previous_keys if k]
    if not keys:
        raise MissingAppKeyError("the job command is encrypted (ShouldBeEncrypted); set APP_KEY to decrypt it")
    if isinstance(payload, str):
        payload = payload.encode("ascii", "replace")
    try:
        p = json.loads(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise DecryptError("The payload is invalid.") from None
    if not isinstance(p, dict) or not all(isinstance(p.get(k), str) for k in ("iv", "value", "mac")):
        raise DecryptError("The payload is invalid.")
    last: DecryptError | None = None
    for k in keys:
        try:
            return _decrypt_one(k, p)
        except DecryptError as e:
            last = e
    assert last is not None
    raise last


def encrypt(plaintext: bytes, key: bytes, *, gcm: bool = False, iv: bytes | None = None) -> str:
    """``Crypt::encrypt($plaintext, false)`` with AES-{128,256}-CBC (default) or -GCM."""
    if gcm:
        iv = iv or os.urandom(12)
        sealed = AESGCM(key).encrypt(iv, plaintext, None)
        ct, tag = sealed[:-16], sealed[-16:]
        iv_b64 = base64.b64encode(iv).decode()
        value = base64.b64encode(ct).decode()
        fields = {"iv": iv_b64, "value": value, "mac": "", "tag": base64.b64encode(tag).decode()}
    else:
        iv = iv or os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        iv_b64 = base64.b64encode(iv).decode()
        value = base64.b64encode(ct).decode()
        mac = hmac.new(key, (iv_b64 + value).encode(), hashlib.sha256).hexdigest()
        fields = {"iv": iv_b64, "value": value, "mac": mac, "tag": ""}
    # json_encode(compact(...), JSON_UNESCAPED_SLASHES): only ASCII base64/hex here
    body = json.dumps(fields, separators=(",", ":"))
    return base64.b64encode(body.encode()).decode()
