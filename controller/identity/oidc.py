"""GitHub Actions OIDC tokens, validated for every configured GitHub instance.

Checks, in order, each refusal naming the one that failed: the header (RS256 only: no
``none``, no HMAC with a public key as secret), the issuer (one of the instances', exact),
the key (``kid`` from the issuer's JWKS, fetched through discovery, cached, refreshed on an
unknown ``kid`` at most once a minute), the signature, the audience, the times (``exp``,
``nbf``, ``iat`` with a small leeway), the claims the platform relies on, and that ``sub``
names the same repository as ``repository`` (plain ``repo:ORG/REPO:…`` or the
``repo:OWNER@ID/REPO@ID:…`` form with the token's own ids).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from controller.model import GitHubInstance

Clock = Callable[[], float]
Fetch = Callable[[str], dict[str, Any]]
LEEWAY = 60
REFRESH_INTERVAL = 60.0
REQUIRED_CLAIMS = (
    "sub",
    "repository",
    "repository_owner",
    "job_workflow_ref",
    "runner_environment",
    "run_id",
    "actor",
)


class TokenRefused(Exception):
    """A token failed ``check``; ``detail`` says how. Never carries the token."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


def _segment(part: bytes) -> bytes:
    """Strict base64url (no padding, no other characters), decoded."""
    if _SEGMENT.fullmatch(part) is None:
        raise TokenRefused("format", "not base64url")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("format", "not base64url") from None


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """A compact JWS parsed once: header, claims, the signed bytes and the signature.

    Parsed here rather than by PyJWT, whose per-character base64 check on every segment of
    every decode cost 8x the RSA verification itself (bench/oidc.py).
    """
    parts = token.encode("ascii", "replace").split(b".")
    if len(parts) != 3:
        raise TokenRefused("format", "not a JWT")
    try:
        header = json.loads(_segment(parts[0]))
        claims = json.loads(_segment(parts[1]))
    except ValueError:
        raise TokenRefused("format", "not a JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRefused("format", "not a JWT")
    return header, claims, parts[0] + b"." + parts[1], _segment(parts[2])


@dataclass(frozen=True)
class ValidToken:
    instance: str
    claims: dict[str, Any]

    @property
    def repository(self) -> str:
        return str(self.claims["repository"])


def http_fetch(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    value: dict[str, Any] = response.json()
    return value


@dataclass
class _Keys:
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = -1e18


class OidcValidator:
    def __init__(
        self,
        instances: list[GitHubInstance],
        audiences: list[str],
        *,
        issuers: dict[str, str] | None = None,
        fetch: Fetch = http_fetch,
        clock: Clock = time.time,
    ) -> None:
        """``issuers`` overrides an instance's issuer URL (the local emulator's, in tests)."""
        self.by_issuer = {
            (issuers or {}).get(i.name, i.oidc_issuer).rstrip("/"): i for i in instances
        }
        self.audiences = audiences
        self.fetch = fetch
        self.clock = clock
        self._keys: dict[str, _Keys] = {}
        self._lock = threading.Lock()

    def validate(self, token: str) -> ValidToken:
        header, claims, signing_input, signature = split_token(token)
        if header.get("alg") != "RS256":
            raise TokenRefused("algorithm", f"{header.get('alg')!r} is not RS256")
        issuer = str(claims.get("iss", "")).rstrip("/")
        instance = self.by_issuer.get(issuer)
        if instance is None:
            raise TokenRefused("issuer", f"{issuer!r} is no configured GitHub instance")
        key = self._key(issuer, str(header.get("kid", "")))
        try:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise TokenRefused("signature", "does not verify with the issuer's key") from None
        missing = [name for name in ("exp", "iat", "nbf", "aud", "sub") if name not in claims]
        if missing:
            raise TokenRefused("claims", f"missing {', '.join(missing)}")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not any(audience in self.audiences for audience in audiences):
            raise TokenRefused("audience", f"{claims['aud']!r} is not accepted")
        now = self.clock()
        try:
            expires, not_before, issued = (float(claims[k]) for k in ("exp", "nbf", "iat"))
        except (TypeError, ValueError):
            raise TokenRefused("claims", "exp, nbf and iat must be numbers") from None
        if now > expires + LEEWAY:
            raise TokenRefused("expiry", "the token has expired")
        if now + LEEWAY < not_before:
            raise TokenRefused("not-before", "the token is not valid yet")
        if issued > now + LEEWAY:
            raise TokenRefused("issued-at", "issued in the future")
        missing = [name for name in REQUIRED_CLAIMS if not claims.get(name)]
        if missing:
            raise TokenRefused("claims", f"missing {', '.join(missing)}")
        self._check_subject(claims)
        return ValidToken(instance.name, claims)

    @staticmethod
    def _check_subject(claims: dict[str, Any]) -> None:
        owner, _, name = str(claims["repository"]).partition("/")
        plain = f"repo:{owner}/{name}:"
        with_ids = (
            f"repo:{owner}@{claims.get('repository_owner_id')}/"
            f"{name}@{claims.get('repository_id')}:"
        )
        subject = str(claims["sub"])
        if not (subject.startswith(plain) or subject.startswith(with_ids)):
            raise TokenRefused("subject", "sub does not name the token's repository")
        if str(claims["repository_owner"]).lower() != owner.lower():
            raise TokenRefused("claims", "repository_owner does not own repository")

    # -- keys --

    def _key(self, issuer: str, kid: str) -> Any:
        cache = self._keys.setdefault(issuer, _Keys())
        key = cache.keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            if kid not in cache.keys and self.clock() - cache.fetched_at >= REFRESH_INTERVAL:
                cache.keys = self._fetch_keys(issuer)  # unknown kid: the issuer rotated
                cache.fetched_at = self.clock()
        key = cache.keys.get(kid)
        if key is None:
            raise TokenRefused("key", f"kid {kid!r} is not in the issuer's JWKS")
        return key

    def _fetch_keys(self, issuer: str) -> dict[str, Any]:
        try:
            discovery = self.fetch(f"{issuer}/.well-known/openid-configuration")
            jwks = self.fetch(str(discovery["jwks_uri"]))
        except (httpx.HTTPError, KeyError, ValueError) as error:
            raise TokenRefused("key", f"cannot fetch the JWKS: {type(error).__name__}") from None
        keys = {}
        for entry in jwks.get("keys", []):
            if entry.get("kty") == "RSA" and entry.get("kid"):
                key = RSAAlgorithm.from_jwk(json.dumps(entry))
                if isinstance(key, rsa.RSAPublicKey):  # never a private or symmetric key
                    keys[str(entry["kid"])] = key
        return keys
