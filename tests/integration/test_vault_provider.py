"""The Vault dynamic provider against a live OpenBao, then logins with emulator tokens."""

from __future__ import annotations

import uuid
from typing import Any

import hvac
import hvac.exceptions
import pytest

from components.vault import team_policy_hcl
from components.vault_provider import VaultObjectProvider, exists
from localenv.github import GitHubEmulator
from localenv.services import OpenBao
from tests.integration.router_support import dev_spec
from tests.integration.vault_support import applied_vault, vault_objects


def test_create_update_diff_and_delete_against_openbao(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    provider = VaultObjectProvider()
    suffix = uuid.uuid4().hex[:6]
    objects = vault_objects(openbao, github_cloud, github_ghes, suffix)
    created = [provider.create(props) for props in objects]
    assert all(exists(props) for props in objects)
    role = next(p for p in objects if p["kind"] == "jwt-role" and p["name"] == "web")
    role_id = f"jwt-role:jwt-cloud-{suffix}/web"
    assert role_id in {c.id for c in created}

    widened = {**role, "boundClaims": {"repository": ["acme-corp/storefront"]}}
    diff = provider.diff(role_id, role, widened)
    assert (diff.changes, diff.replaces) == (True, [])  # bound claims change in place
    provider.update(role_id, role, widened)
    client: Any = openbao.client()
    read = client.auth.jwt.read_role("web", path=f"jwt-cloud-{suffix}")["data"]
    assert read["bound_claims"] == {"repository": ["acme-corp/storefront"]}
    assert read["token_ttl"] == 900

    mount = next(p for p in objects if p["kind"] == "jwt-mount")
    moved = provider.diff("id", mount, {**mount, "path": f"elsewhere-{suffix}"})
    assert moved.replaces == ["path"]
    assert provider.diff("id", mount, {**mount, "token": "rotated"}).changes is False

    for props in reversed(objects):
        provider.delete("id", props)
    assert not any(exists(props) for props in objects)


def test_a_jobs_token_reads_its_team_and_repository_secrets_and_nothing_else(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    root: Any = openbao.client()
    kv = root.secrets.kv.v2
    web_shop = f"runners/web/repos/{repository_id('acme-corp/web-shop')}/api"
    storefront = f"runners/web/repos/{repository_id('acme-corp/storefront')}/api"
    kv.create_or_update_secret(path="runners/web/shared/db", secret={"k": "web-shared"})
    kv.create_or_update_secret(path=web_shop, secret={"k": "web-shop"})
    kv.create_or_update_secret(path=storefront, secret={"k": "storefront"})
    kv.create_or_update_secret(path="runners/ml/shared/db", secret={"k": "ml"})
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        token = github_cloud.oidc.mint(
            github_cloud.oidc.claims("acme-corp/web-shop", audience="runner-platform-vault")
        )
        login = root.auth.jwt.jwt_login("web", token, path=f"jwt-cloud-{suffix}")
        assert login["auth"]["lease_duration"] == 900
        assert login["auth"]["metadata"]["actor"] == "octocat"  # who, for the audit log
        web = hvac.Client(url=openbao.address, token=login["auth"]["client_token"])

        def read(path: str) -> Any:
            return web.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)[
                "data"
            ]["data"]["k"]

        assert read("runners/web/shared/db") == "web-shared"  # the team's shared secrets
        assert read(web_shop) == "web-shop"  # its own repository (by id)
        for foreign in (storefront, "runners/ml/shared/db"):  # a sibling, another team
            with pytest.raises(hvac.exceptions.Forbidden):
                read(foreign)
        with pytest.raises(hvac.exceptions.InvalidRequest):
            root.auth.jwt.jwt_login("ml", token, path=f"jwt-cloud-{suffix}")
        other = github_ghes.oidc.mint(
            github_ghes.oidc.claims("research/models", audience="runner-platform-vault")
        )
        with pytest.raises(hvac.exceptions.InvalidRequest):  # ml's token, web's mount
            root.auth.jwt.jwt_login("web", other, path=f"jwt-cloud-{suffix}")


def repository_id(repository: str) -> str:
    """The id the emulator gives a repository (what an operator reads from the API)."""
    from localenv.github.oidc import OidcIssuer

    return str(OidcIssuer("https://x").claims(repository, audience="a")["repository_id"])


def test_team_policy_names_only_the_teams_paths() -> None:
    spec = dev_spec()
    for team in spec.teams:
        hcl = team_policy_hcl(team)
        others = [t.name for t in spec.teams if t.name != team.name]
        assert all(f"runners/{other}/" not in hcl for other in others)
