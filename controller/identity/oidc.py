"""GitHub Actions OIDC tokens, validated for every configured GitHub instance.

Checks, in order, each refusal naming the one that failed: the form (three strict
base64url segments, each JSON object exactly as RFC 8259 and RFC 7519 have it: no ``NaN`` or
``Infinity``, no repeated member names, bounded nesting and length), the header (RS256
only: no ``none``, no HMAC with a public key as secret), the issuer (one of the instances',
byte for byte: a trailing ``/`` is another issuer), the key (``kid`` from the issuer's
JWKS, fetched through discovery, cached, refreshed on an unknown ``kid`` at most once a
minute), the signature, the audience, the times (``exp``, ``nbf``, ``iat``: finite JSON
numbers, never strings or booleans, with a small leeway), the claims the platform relies
on (non-empty strings), and that ``sub`` names the same repository as ``repository``
(plain ``repo:ORG/REPO:…`` or the ``repo:OWNER@ID/REPO@ID:…`` form with the token's own
ids).

Whatever a token holds, :meth:`OidcValidator.validate` raises :class:`TokenRefused` and
nothing else for it, so every caller's refusal path (and its audit record) sees it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
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
from jwt.exceptions import InvalidKeyError

from controller.model import GitHubInstance

Clock = Callable[[], float]
Fetch = Callable[[str], dict[str, Any]]
LEEWAY = 60
REFRESH_INTERVAL = 60.0
MAX_TOKEN_LENGTH = 16 * 1024  # GitHub's tokens are 1-2 KB; more is not a GitHub token
DATE_CLAIMS = ("exp", "nbf", "iat")
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


def _shown(value: object) -> str:
    """A token's value as a refusal may quote it: short, whatever the token holds."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _segment(part: bytes) -> bytes:
    """Strict base64url (no padding, no other characters), decoded."""
    if _SEGMENT.fullmatch(part) is None:
        raise TokenRefused("format", "not base64url")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("format", "not base64url") from None


def _not_json(constant: str) -> Any:
    raise TokenRefused("format", f"{constant} is not JSON")  # Python's json accepts it


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # RFC 7519 §4: a repeated name is refused, not resolved
        raise TokenRefused("format", "a member name repeats")
    return value


def _json_object(segment: bytes) -> dict[str, Any]:
    try:
        value = json.loads(
            segment.decode("utf-8"), parse_constant=_not_json, object_pairs_hook=_object
        )
    except RecursionError:
        raise TokenRefused("format", "JSON nested too deeply") from None
    except ValueError:  # also UnicodeDecodeError, and an int of more than 4300 digits
        raise TokenRefused("format", "not JSON") from None
    if not isinstance(value, dict):
        raise TokenRefused("format", "not a JSON object")
    return value


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """A compact JWS parsed once: header, claims, the signed bytes and the signature.

    Parsed here rather than by PyJWT, whose per-character base64 check on every segment of
    every decode cost 8x the RSA verification itself (bench/oidc.py).
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenRefused("format", "not a JWT of a plausible length")
    parts = token.encode("ascii", "replace").split(b".")
    if len(parts) != 3:
        raise TokenRefused("format", "not a JWT")
    header = _json_object(_segment(parts[0]))
    claims = _json_object(_segment(parts[1]))
    return header, claims, parts[0] + b"." + parts[1], _segment(parts[2])


def _date(claims: dict[str, Any], name: str) -> float:
    """A NumericDate: a finite JSON number (a bool is an int to Python, a string is not a
    number, and a NaN ``exp`` would never expire)."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused("claims", f"{name} must be a JSON number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise TokenRefused("claims", f"{name} must be finite")
    return number


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
        """``issuers`` overrides an instance's issuer URL (the local emulator's, in tests).

        Issuers are compared byte for byte, as IAM and Vault compare them.
        """
        self.by_issuer = {(issuers or {}).get(i.name, i.oidc_issuer): i for i in instances}
        self.audiences = audiences
        self.fetch = fetch
        self.clock = clock
        self._keys: dict[str, _Keys] = {}
        self._lock = threading.Lock()

    def validate(self, token: str) -> ValidToken:
        """The token's claims, or :class:`TokenRefused` — never another exception for
        anything a token holds: one of another type would slip past the callers' refusal
        path and its audit record (issue 9)."""
        try:
            return self._validate(token)
        except TokenRefused:
            raise
        except Exception as error:  # fail closed, and as the one refusal type
            raise TokenRefused("format", f"malformed token ({type(error).__name__})") from None

    def _validate(self, token: str) -> ValidToken:
        header, claims, signing_input, signature = split_token(token)
        if header.get("alg") != "RS256":
            raise TokenRefused("algorithm", f"{_shown(header.get('alg'))} is not RS256")
        if "crit" in header:  # RFC 7515 §4.1.11: extensions this validator does not know
            raise TokenRefused("algorithm", "critical header extensions are not supported")
        issuer = claims.get("iss")
        instance = self.by_issuer.get(issuer) if isinstance(issuer, str) else None
        if instance is None or not isinstance(issuer, str):
            raise TokenRefused("issuer", f"{_shown(issuer)} is no configured GitHub instance")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRefused("key", "the header names no kid")
        key = self._key(issuer, kid)
        try:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise TokenRefused("signature", "does not verify with the issuer's key") from None
        missing = [name for name in ("exp", "iat", "nbf", "aud", "sub") if name not in claims]
        if missing:
            raise TokenRefused("claims", f"missing {', '.join(missing)}")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not all(isinstance(audience, str) for audience in audiences):
            raise TokenRefused("audience", "aud must be a string or a list of strings")
        if not any(audience in self.audiences for audience in audiences):
            raise TokenRefused("audience", f"{_shown(claims['aud'])} is not accepted")
        now = self.clock()
        expires, not_before, issued = (_date(claims, name) for name in DATE_CLAIMS)
        if now > expires + LEEWAY:
            raise TokenRefused("expiry", "the token has expired")
        if now + LEEWAY < not_before:
            raise TokenRefused("not-before", "the token is not valid yet")
        if issued > now + LEEWAY:
            raise TokenRefused("issued-at", "issued in the future")
        missing = [name for name in REQUIRED_CLAIMS if not claims.get(name)]
        if missing:
            raise TokenRefused("claims", f"missing {', '.join(missing)}")
        not_text = [name for name in REQUIRED_CLAIMS if not isinstance(claims[name], str)]
        if not_text:
            raise TokenRefused("claims", f"{', '.join(not_text)} must be strings")
        self._check_subject(claims)
        return ValidToken(instance.name, claims)

    @staticmethod
    def _check_subject(claims: dict[str, Any]) -> None:
        owner, _, name = claims["repository"].partition("/")
        subjects = [f"repo:{owner}/{name}:"]
        owner_id, repository_id = claims.get("repository_owner_id"), claims.get("repository_id")
        if isinstance(owner_id, str) and isinstance(repository_id, str):
            subjects.append(f"repo:{owner}@{owner_id}/{name}@{repository_id}:")
        if not any(claims["sub"].startswith(prefix) for prefix in subjects):
            raise TokenRefused("subject", "sub does not name the token's repository")
        if claims["repository_owner"].lower() != owner.lower():
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
        # OIDC Discovery §4: a trailing "/" of the issuer goes before the well-known path,
        # and the document's issuer is the issuer, identical (as Vault's go-oidc insists).
        try:
            discovery = self.fetch(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
                raise TokenRefused("key", "the discovery document names another issuer")
            jwks = self.fetch(str(discovery["jwks_uri"]))
            entries = jwks.get("keys", []) if isinstance(jwks, dict) else []
        except (httpx.HTTPError, httpx.InvalidURL, LookupError, ValueError, TypeError) as error:
            raise TokenRefused("key", f"cannot fetch the JWKS: {type(error).__name__}") from None
        keys = {}
        for entry in entries if isinstance(entries, list) else []:
            if not (isinstance(entry, dict) and entry.get("kty") == "RSA" and entry.get("kid")):
                continue
            try:
                key = RSAAlgorithm.from_jwk(json.dumps(entry))
            except (InvalidKeyError, ValueError, TypeError, KeyError):
                continue  # one unusable entry does not void the issuer's other keys
            if isinstance(key, rsa.RSAPublicKey):  # never a private or symmetric key
                keys[str(entry["kid"])] = key
        return keys
