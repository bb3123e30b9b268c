"""OIDC validation with tokens from the emulator's Cloud and GHES issuers (real HTTP)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from controller.identity.oidc import OidcValidator, TokenRefused
from localenv.github import GitHubEmulator
from localenv.github.oidc import OidcIssuer
from tests.integration.router_support import dev_spec

AUDIENCE = "sts.amazonaws.com"


@pytest.fixture
def validator(github_cloud: GitHubEmulator, github_ghes: GitHubEmulator) -> OidcValidator:
    spec = dev_spec()
    return OidcValidator(
        list(spec.github_instances),
        [AUDIENCE, "runner-platform-vault"],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
    )


def _token(emulator: GitHubEmulator, repository: str, **overrides: Any) -> str:
    claims = emulator.oidc.claims(repository, audience=AUDIENCE)
    claims.update(overrides)
    return emulator.oidc.mint(claims)


@pytest.mark.parametrize(
    ("emulator_name", "repository", "instance"),
    [("github_cloud", "acme-corp/storefront", "cloud"), ("github_ghes", "research/models", "ghes")],
)
def test_valid_tokens_of_each_instance_pass(
    validator: OidcValidator,
    emulator_name: str,
    repository: str,
    instance: str,
    request: pytest.FixtureRequest,
) -> None:
    emulator: GitHubEmulator = request.getfixturevalue(emulator_name)
    valid = validator.validate(_token(emulator, repository))
    assert (valid.instance, valid.repository) == (instance, repository)


def test_owner_id_subject_form_passes(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    issuer = OidcIssuer(github_cloud.oidc.issuer, owner_ids=True)
    issuer.key, issuer.kid = github_cloud.oidc.key, github_cloud.oidc.kid
    token = issuer.mint(
        issuer.claims("acme-corp/storefront", audience=AUDIENCE, repository_id=55, owner_id=7)
    )
    assert validator.validate(token).claims["sub"].startswith("repo:acme-corp@7/storefront@55:")


def _refusal(validator: OidcValidator, token: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        validator.validate(token)
    return caught.value.check


def test_each_bad_token_is_refused_with_its_reason(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    now = int(time.time())
    good = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    oidc = github_cloud.oidc
    cases = {
        "issuer": oidc.mint({**good, "iss": "https://token.actions.example.com"}),
        "audience": oidc.mint({**good, "aud": "someone-else"}),
        "expiry": oidc.mint({**good, "iat": now - 900, "nbf": now - 900, "exp": now - 300}),
        "not-before": oidc.mint({**good, "nbf": now + 600, "exp": now + 900}),
        "subject": oidc.mint({**good, "sub": "repo:acme-corp/other:ref:refs/heads/main"}),
        "claims": oidc.mint({k: v for k, v in good.items() if k != "job_workflow_ref"}),
    }
    for check, token in cases.items():
        assert _refusal(validator, token) == check, check


def test_unknown_kid_refreshes_the_jwks_at_most_once_a_minute(
    github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    from controller.identity.oidc import http_fetch

    now = [time.time()]
    fetched: list[str] = []

    def counting_fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return http_fetch(url)

    validator = OidcValidator(
        list(dev_spec().github_instances),
        [AUDIENCE],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
        fetch=counting_fetch,
        clock=lambda: now[0],
    )
    assert validator.validate(_token(github_cloud, "acme-corp/storefront"))
    assert validator.validate(_token(github_cloud, "acme-corp/storefront"))
    assert len(fetched) == 2  # discovery + JWKS, once: the second token used the cache
    github_cloud.oidc.rotate()  # the issuer rotated its key
    rotated = _token(github_cloud, "acme-corp/storefront")
    assert _refusal(validator, rotated) == "key"  # within a minute: no refetch
    assert len(fetched) == 2
    now[0] += 61
    assert validator.validate(rotated)  # unknown kid after the interval: refetched
    assert len(fetched) == 4


def test_alg_none_and_hmac_with_the_public_key_are_refused(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    claims = github_cloud.oidc.claims("acme-corp/storefront", audience=AUDIENCE)
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert _refusal(validator, unsigned) == "algorithm"
    public_pem = github_cloud.oidc.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": github_cloud.oidc.kid}
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, claims)
    ]
    import hashlib
    import hmac

    signing_input = b".".join(segments)
    signature = base64.urlsafe_b64encode(
        hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    ).rstrip(b"=")
    assert _refusal(validator, (signing_input + b"." + signature).decode()) == "algorithm"


def test_a_tampered_payload_fails_the_signature(
    validator: OidcValidator, github_cloud: GitHubEmulator
) -> None:
    header, payload, signature = _token(github_cloud, "acme-corp/storefront").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["repository"] = "acme-corp/web-admin"
    claims["sub"] = "repo:acme-corp/web-admin:ref:refs/heads/main"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refusal(validator, f"{header}.{forged}.{signature}") == "signature"


def test_garbage_is_refused(validator: OidcValidator) -> None:
    assert _refusal(validator, "not-a-token") == "format"
