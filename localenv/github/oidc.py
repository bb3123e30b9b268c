"""An Actions OIDC issuer: discovery, JWKS, and tokens with GitHub's claim set."""

from __future__ import annotations

import base64
import time
import uuid
import zlib
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

TOKEN_LIFETIME = 300  # seconds; GitHub's tokens are short-lived too


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class OidcIssuer:
    """Signs tokens for one issuer URL with its own RSA key (``kid`` rotates on demand)."""

    def __init__(self, issuer: str, *, owner_ids: bool = False) -> None:
        self.issuer = issuer.rstrip("/")
        self.owner_ids = owner_ids  # github.com repos made after 2026-07-15: OWNER@ID/REPO@ID
        self.rotate()

    def rotate(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks",
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": [
                "sub",
                "aud",
                "exp",
                "iat",
                "iss",
                "jti",
                "nbf",
                "ref",
                "repository",
                "repository_id",
                "repository_owner",
                "repository_owner_id",
                "run_id",
                "run_number",
                "run_attempt",
                "actor",
                "actor_id",
                "workflow",
                "workflow_ref",
                "job_workflow_ref",
                "event_name",
                "ref_type",
                "environment",
                "runner_environment",
                "repository_visibility",
                "enterprise",
            ],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
        }

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64(numbers.n),
                    "e": _b64(numbers.e),
                }
            ]
        }

    def claims(
        self,
        repository: str,
        *,
        audience: str,
        ref: str = "refs/heads/main",
        environment: str | None = None,
        event_name: str = "push",
        actor: str = "octocat",
        run_id: int = 1,
        now: float | None = None,
        repository_id: int | None = None,
        owner_id: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """GitHub's claim set for a job of ``repository`` (``org/repo``)."""
        owner, name = repository.split("/", 1)
        # Stable, distinct ids per repository and owner, as GitHub's are.
        repository_id = repository_id or zlib.crc32(repository.lower().encode()) % 10**8
        owner_id = owner_id or zlib.crc32(owner.lower().encode()) % 10**7
        issued = int(now if now is not None else time.time())
        prefix = (
            f"repo:{owner}@{owner_id}/{name}@{repository_id}"
            if self.owner_ids
            else f"repo:{repository}"
        )
        if environment:
            subject = f"{prefix}:environment:{environment}"
        elif event_name == "pull_request":
            subject = f"{prefix}:pull_request"
        else:
            subject = f"{prefix}:ref:{ref}"
        workflow_ref = f"{repository}/.github/workflows/ci.yml@{ref}"
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "jti": uuid.uuid4().hex,
            "iat": issued,
            "nbf": issued - 5,
            "exp": issued + TOKEN_LIFETIME,
            "ref": ref,
            "ref_type": "branch",
            "sha": "0" * 40,
            "repository": repository,
            "repository_id": str(repository_id),
            "repository_owner": owner,
            "repository_owner_id": str(owner_id),
            "repository_visibility": "private",
            "actor": actor,
            "actor_id": "4242",
            "workflow": "ci",
            "workflow_ref": workflow_ref,
            "job_workflow_ref": workflow_ref,
            "event_name": event_name,
            "run_id": str(run_id),
            "run_number": "1",
            "run_attempt": "1",
            "runner_environment": "self-hosted",
        }
        if environment:
            claims["environment"] = environment
        claims.update(extra)
        return claims

    def mint(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
