"""Results kept in JetStream are sealed for their requester: readable and writable only with the task's secret.

The requester puts a fresh 256-bit secret in the persisted task (``routing.keep``). The worker stores the
result encrypted with AES-256-GCM under that secret (the task id as associated data) and under a key derived
from it (HMAC-SHA256 of the task id): a client that knows the task id but not the secret can neither find
the entry, read it, nor replace it with one the requester would take.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ("new_secret", "parse_secret", "locator", "seal", "unseal")

_NONCE = 12


def new_secret() -> str:
    """Return a fresh secret as it travels in routing.keep (43 URL-safe base64 characters)."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def parse_secret(text: object) -> bytes | None:
    """Return the 32 secret bytes a routing.keep value carries, or None when it carries none."""
    if not isinstance(text, str) or len(text) != 43:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def locator(secret: bytes, task_id: str) -> str:
    """Return the store key of task_id's result: nobody without the secret can tell which task an entry answers."""
    return hmac.new(secret, task_id.encode(), hashlib.sha256).hexdigest()[:40]


def seal(secret: bytes, task_id: str, data: bytes) -> bytes:
    """Return data encrypted and authenticated for whoever holds secret, bound to task_id."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(secret).encrypt(nonce, data, task_id.encode())


def unseal(secret: bytes, task_id: str, blob: bytes) -> bytes | None:
    """Return the data sealed in blob for task_id, or None when it was not sealed with secret for that task."""
    if len(blob) <= _NONCE:
        return None
    try:
        return AESGCM(secret).decrypt(blob[:_NONCE], blob[_NONCE:], task_id.encode())
    except InvalidTag:
        return None
