"""GitHub OIDC → STS against moto server, with the emulator's tokens."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.identity.aws import AwsExchange, ExchangeRefused, clamp_duration, session_name
from controller.identity.oidc import OidcValidator
from localenv.github import GitHubEmulator
from localenv.services import Moto
from tests.integration.router_support import dev_spec


@pytest.fixture
def exchange(
    moto_server: Moto, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> AwsExchange:
    spec = dev_spec()
    iam: Any = moto_server.client("iam")
    arns = {}
    for team in spec.teams:
        try:
            arns[team.name] = iam.create_role(
                RoleName=team.role_name, AssumeRolePolicyDocument="{}"
            )["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            arns[team.name] = iam.get_role(RoleName=team.role_name)["Role"]["Arn"]
    validator = OidcValidator(
        list(spec.github_instances),
        ["sts.amazonaws.com"],
        issuers={"cloud": github_cloud.oidc.issuer, "ghes": github_ghes.oidc.issuer},
    )
    return AwsExchange(spec, validator, moto_server.client("sts"), arns)


def _token(emulator: GitHubEmulator, repository: str, **extra: Any) -> str:
    return emulator.oidc.mint(
        emulator.oidc.claims(repository, audience="sts.amazonaws.com", **extra)
    )


def test_a_teams_repository_gets_its_role_for_a_bounded_time(
    exchange: AwsExchange, github_ghes: GitHubEmulator
) -> None:
    credentials = exchange.credentials(
        _token(github_ghes, "research/models", run_id=42, actor="rob"), duration=86400
    )
    assert credentials.role_arn.endswith(":role/github-runner-ml-role")
    assert credentials.session_name == "gh-42-rob-ml"
    # ml's roles last at most 1800 s (stack config), whatever was asked.
    assert 1700 <= credentials.expiration - time.time() <= 1800 + 5
    assert credentials.credential_process()["Version"] == 1


def test_credentials_are_reused_until_shortly_before_expiry(
    exchange: AwsExchange, github_cloud: GitHubEmulator
) -> None:
    token = _token(github_cloud, "acme-corp/storefront")
    first = exchange.credentials(token)
    assert exchange.credentials(token) is first


def test_a_repository_of_no_team_and_a_bad_token_are_refused(
    exchange: AwsExchange, github_cloud: GitHubEmulator
) -> None:
    with pytest.raises(ExchangeRefused, match="acme-corp/payments belongs to no team"):
        exchange.credentials(_token(github_cloud, "acme-corp/payments"))
    wrong_audience = github_cloud.oidc.mint(
        github_cloud.oidc.claims("acme-corp/storefront", audience="vault")
    )
    with pytest.raises(ExchangeRefused, match="token refused: audience"):
        exchange.credentials(wrong_audience)


def test_session_names_and_durations_stay_within_sts_limits() -> None:
    name = session_name({"run_id": "9" * 30, "actor": "a user/with spaces"}, "x" * 40)
    assert len(name) <= 64 and " " not in name and "/" not in name
    assert clamp_duration(60, 3600) == 900
    assert clamp_duration(7200, 3600) == 3600
    assert clamp_duration(3000, 1800) == 1800
