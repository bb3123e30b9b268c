"""The trust evaluator, the generated trust policies and the access matrix agree."""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import pytest

from components.iam_documents import github_runner_trust_policy, oidc_provider_arn
from controller.identity.access import access_matrix, team_for, trust_allows
from controller.model import PlatformSpec, Team, load_spec
from localenv.github.oidc import OidcIssuer
from tests.conftest import DEV_DOCUMENT, ROOT

ACCOUNT = "123456789012"

# Literal repositories of each team, ones its globs match, and outsiders, on both instances.
REPOSITORIES = [
    ("cloud", "acme-corp/storefront"),
    ("cloud", "acme-corp/web-checkout"),
    ("cloud", "acme-corp/web-"),
    ("cloud", "acme-corp/payments"),
    ("cloud", "acme-corp/storefront-fork"),
    ("cloud", "evil-corp/storefront"),
    ("ghes", "research/models"),
    ("ghes", "research/training-gpt"),
    ("ghes", "research/modelsX"),
    ("ghes", "platform/deploy"),
    ("ghes", "platform/anything"),
    ("ghes", "platformx/deploy"),
    ("cloud", "platform/deploy"),
]
SUBJECTS = [
    {"ref": "refs/heads/main"},
    {"ref": "refs/tags/v1"},
    {"environment": "prod"},
    {"environment": "production"},
    {"event_name": "pull_request"},
]


def _context_allowed(team: Team, subject: dict[str, str]) -> bool:
    """The team's allowlist (refs, environments) as the access matrix states it."""
    if not team.refs and not team.environments:
        return True
    if "environment" in subject:
        return subject["environment"] in team.environments
    if subject.get("event_name") == "pull_request":
        return False
    return subject["ref"] in team.refs


def _claims(
    spec: PlatformSpec, instance: str, repository: str, owner_ids: bool, **extra: Any
) -> tuple[str, dict[str, Any]]:
    issuer = spec.instance(instance).oidc_issuer
    claims = _issuer(issuer, owner_ids).claims(repository, audience="sts.amazonaws.com", **extra)
    return issuer, claims


@functools.cache
def _issuer(issuer: str, owner_ids: bool) -> OidcIssuer:
    return OidcIssuer(issuer, owner_ids=owner_ids)  # one RSA key per issuer, not per token


@pytest.mark.parametrize("owner_ids", [False, True], ids=["plain sub", "owner@id sub"])
def test_generated_trust_agrees_with_the_matrix_for_every_team_and_repository(
    owner_ids: bool,
) -> None:
    spec = load_spec(DEV_DOCUMENT)
    matrix = {row.team: row for row in access_matrix(spec)}
    for team in spec.teams:
        instance = spec.instance(team.instance)
        trust = github_runner_trust_policy(instance, team, ACCOUNT)
        provider = oidc_provider_arn(ACCOUNT, instance.oidc_issuer)
        for token_instance, repository in REPOSITORIES:
            if owner_ids and token_instance == "ghes":
                continue  # GHES keeps the plain subject form
            for subject in SUBJECTS:
                issuer, claims = _claims(spec, token_instance, repository, owner_ids, **subject)
                token_provider = oidc_provider_arn(ACCOUNT, issuer)
                allowed = trust_allows(trust, claims, issuer=issuer, provider_arn=token_provider)
                owner = team_for(spec, token_instance, repository)
                expected = (
                    owner is not None
                    and owner.name == team.name
                    and token_provider == provider
                    and _context_allowed(team, subject)
                )
                assert allowed == expected, (team.name, token_instance, repository, subject)
                assert matrix[team.name].iam_role == team.role_name


def test_wrong_audience_or_provider_is_refused() -> None:
    spec = load_spec(DEV_DOCUMENT)
    team = spec.teams[0]
    instance = spec.instance(team.instance)
    trust = github_runner_trust_policy(instance, team, ACCOUNT)
    issuer, claims = _claims(spec, "cloud", "acme-corp/storefront", False)
    provider = oidc_provider_arn(ACCOUNT, issuer)
    assert trust_allows(trust, claims, issuer=issuer, provider_arn=provider)
    assert not trust_allows(trust, {**claims, "aud": "vault"}, issuer=issuer, provider_arn=provider)
    assert not trust_allows(
        trust, claims, issuer=issuer, provider_arn=oidc_provider_arn("999999999999", issuer)
    )


@pytest.mark.parametrize(
    ("condition", "sub", "allowed"),
    [
        ({"StringLike": {"i:sub": "repo:a/b:*"}}, "repo:a/b:ref:refs/heads/x", True),
        ({"StringLike": {"i:sub": "repo:a/b:*"}}, "repo:a/bc:ref:refs/heads/x", False),
        ({"StringLike": {"i:sub": "repo:a/b?:*"}}, "repo:a/bc:pull_request", True),
        ({"StringLike": {"i:sub": ["repo:x/*", "repo:a/*"]}}, "repo:a/z:pull_request", True),
        ({"StringEquals": {"i:sub": "repo:a/b:*"}}, "repo:a/b:pull_request", False),
        ({"StringLike": {"i:sub": "repo:A/b:*"}}, "repo:a/b:pull_request", False),
        ({"StringLike": {"i:repository": "a/b"}}, "repo:a/b:pull_request", False),
        ({"ForAnyValue:StringLike": {"i:sub": "*"}}, "repo:a/b:pull_request", False),
        ({}, "repo:a/b:pull_request", True),
        (
            {"StringLike": {"i:sub": "repo:a/*"}, "StringNotLike": {"i:sub": "repo:a/x:*"}},
            "repo:a/x:pull_request",
            False,
        ),
        (
            {"StringLike": {"i:sub": "repo:a/*"}, "StringNotLike": {"i:sub": "repo:a/x:*"}},
            "repo:a/y:pull_request",
            True,
        ),
        ({"StringNotEquals": {"i:sub": "repo:a/b:pull_request"}}, "repo:a/b:pull_request", False),
        ({"StringNotLike": {"i:repository": "a/b"}}, "repo:a/b:pull_request", True),
    ],
    ids=[
        "glob",
        "glob is anchored",
        "question mark",
        "any of values",
        "equals is exact",
        "case-sensitive",
        "unsupported key fails",
        "unknown operator fails",
        "no condition",
        "not-like excludes",
        "not-like passes others",
        "not-equals excludes",
        "negated operator passes a missing key",
    ],
)
def test_iam_condition_semantics(condition: dict[str, Any], sub: str, allowed: bool) -> None:
    trust = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": "p"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": condition,
            }
        ]
    }
    assert (
        trust_allows(trust, {"sub": sub, "aud": "x"}, issuer="https://i", provider_arn="p")
        is allowed
    )


def test_access_matrix_cli_prints_each_team() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "access-matrix", "--stack", "dev"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["team", "instance"]
    assert any(
        line.startswith("ml ") and "github-runner-ml-role" in line and "jwt-ghes/role/ml" in line
        for line in lines
    )
    assert any("platform/*" in line for line in lines)


def test_access_matrix_cli_refuses_a_bad_stack(tmp_path: Any) -> None:
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config:\n  runner-platform:teams: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "controller", "access-matrix", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "invalid platform spec" in result.stderr


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        ({"Action": "sts:AssumeRoleWith*"}, True),
        ({"Action": "STS:assumerolewithwebidentity"}, True),
        ({"Action": ["s3:*", "sts:*"]}, True),
        ({"Action": "sts:AssumeRole"}, False),
        ({"NotAction": "s3:*"}, True),
        ({"NotAction": "sts:AssumeRoleWith*"}, False),
    ],
    ids=[
        "glob",
        "caseless",
        "service wildcard",
        "another action",
        "not-action",
        "not-action excludes",
    ],
)
def test_actions_match_as_iam_matches_them(statement: dict[str, Any], allowed: bool) -> None:
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Federated": "p"}, **statement}]}
    claims = {"sub": "repo:a/b:pull_request", "aud": "x"}
    assert trust_allows(trust, claims, issuer="https://i", provider_arn="p") is allowed
