"""Webhook signatures: HMAC-SHA256 over the exact bytes received, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from controller.errors import SignatureError

PREFIX = "sha256="


def sign(secret: bytes, body: bytes) -> str:
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise SignatureError unless ``header`` is the SHA-256 signature of ``body``.

    Only ``X-Hub-Signature-256`` counts: the SHA-1 ``X-Hub-Signature`` is not accepted
    as a fallback.
    """
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    if not header.startswith(PREFIX):
        raise SignatureError("X-Hub-Signature-256 is not a sha256= signature")
    expected = sign(secret, body)
    if not hmac.compare_digest(expected.encode(), header.encode()):
        raise SignatureError("signature does not match")
