"""Each real service answers a real client over a socket."""

from __future__ import annotations

from typing import Any

import pytest

from localenv.github import GitHubEmulator
from localenv.services import Moto, OpenBao, Redis


def test_redis_round_trips_a_stream_entry(redis_server: Redis) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    entry_id = client.xadd("smoke", {"job": "42"})
    assert client.xrange("smoke") == [(entry_id, {b"job": b"42"})]


@pytest.mark.parametrize("emulator_name", ["github_cloud", "github_ghes"])
def test_openbao_jwt_login_with_an_emulator_token(
    openbao: OpenBao, emulator_name: str, request: pytest.FixtureRequest
) -> None:
    emulator: GitHubEmulator = request.getfixturevalue(emulator_name)
    vault: Any = openbao.client()
    mount = f"jwt-smoke-{emulator.kind}"
    vault.sys.enable_auth_method("jwt", path=mount)
    vault.auth.jwt.configure(
        oidc_discovery_url=emulator.oidc.issuer, bound_issuer=emulator.oidc.issuer, path=mount
    )
    vault.sys.create_or_update_policy(
        "smoke-read", 'path "secret/data/smoke" { capabilities = ["read"] }'
    )
    vault.auth.jwt.create_role(
        "smoke",
        user_claim="actor",
        allowed_redirect_uris=[],
        role_type="jwt",
        bound_audiences=["runner-platform-vault"],
        bound_claims_type="glob",
        bound_claims={"repository": ["acme/app-*"]},
        token_policies=["smoke-read"],
        token_ttl=900,
        path=mount,
    )
    token = emulator.oidc.mint(
        emulator.oidc.claims("acme/app-web", audience="runner-platform-vault")
    )
    login = vault.auth.jwt.jwt_login("smoke", token, path=mount)
    assert login["auth"]["policies"] == ["default", "smoke-read"]
    assert login["auth"]["lease_duration"] == 900

    other = emulator.oidc.mint(
        emulator.oidc.claims("acme/payments", audience="runner-platform-vault")
    )
    import hvac.exceptions

    with pytest.raises(hvac.exceptions.InvalidRequest, match="claim"):
        vault.auth.jwt.jwt_login("smoke", other, path=mount)


def test_moto_assumes_a_role_with_web_identity(
    moto_server: Moto, github_cloud: GitHubEmulator
) -> None:
    iam: Any = moto_server.client("iam")
    sts: Any = moto_server.client("sts")
    role = iam.create_role(RoleName="github-runner-smoke-role", AssumeRolePolicyDocument="{}")[
        "Role"
    ]
    token = github_cloud.oidc.mint(
        github_cloud.oidc.claims("acme/app", audience="sts.amazonaws.com")
    )
    result = sts.assume_role_with_web_identity(
        RoleArn=role["Arn"],
        RoleSessionName="smoke",
        WebIdentityToken=token,
        DurationSeconds=900,
    )
    assert result["Credentials"]["AccessKeyId"]
    assert result["AssumedRoleUser"]["Arn"].endswith(":assumed-role/github-runner-smoke-role/smoke")


@pytest.mark.parametrize("emulator_name", ["github_cloud", "github_ghes"])
def test_pygithub_works_against_the_emulator(
    emulator_name: str, request: pytest.FixtureRequest
) -> None:
    from github import Auth, Github, GithubException

    emulator: GitHubEmulator = request.getfixturevalue(emulator_name)
    key = emulator.add_app(77)
    installation = emulator.add_installation(77, "pyg")
    emulator.world.add_team("pyg", "builders")
    emulator.world.add_team("pyg", "builders-oncall", parent="builders")
    emulator.world.set_membership("pyg", "builders", "alice")
    emulator.world.set_membership("pyg", "builders", "bob", state="pending")
    emulator.world.set_membership("pyg", "builders-oncall", "carol", role="maintainer")
    github = Github(
        auth=Auth.AppAuth(77, key).get_installation_auth(installation), base_url=emulator.api_url
    )
    team = github.get_organization("pyg").get_team_by_slug("builders")
    assert team.get_team_membership("alice").state == "active"
    assert team.get_team_membership("bob").state == "pending"
    assert team.get_team_membership("carol").role == "maintainer"  # child team counts
    with pytest.raises(GithubException) as caught:
        team.get_team_membership("mallory")
    assert caught.value.status == 404
    assert list(github.get_organization("pyg").get_self_hosted_runners()) == []
