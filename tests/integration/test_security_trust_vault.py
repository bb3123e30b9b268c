"""Vault roles bind the org's id, the runner kind and the context allowlist (issue 9, items
1, 3, 5 and 6): proven against a real OpenBao with tokens the GitHub emulators sign."""

from __future__ import annotations

import copy
from typing import Any

import hvac
import hvac.exceptions
import pytest

from controller.model import SpecError, load_spec
from localenv.github import GitHubEmulator
from localenv.services import OpenBao
from tests.conftest import DEV_DOCUMENT
from tests.integration.router_support import dev_spec
from tests.integration.vault_support import applied_vault

AUDIENCE = "runner-platform-vault"


def _login(openbao: OpenBao, mount: str, role: str, token: str) -> dict[str, Any]:
    client: Any = openbao.client()
    auth: dict[str, Any] = client.auth.jwt.jwt_login(role, token, path=mount)["auth"]
    return auth


def _refused(openbao: OpenBao, mount: str, role: str, token: str) -> bool:
    try:
        _login(openbao, mount, role, token)
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
        return True
    return False


def test_a_recreated_org_or_a_hosted_runner_gets_no_vault_token(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    oidc = github_cloud.oidc
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        mount = f"jwt-cloud-{suffix}"
        good = oidc.claims("acme-corp/storefront", audience=AUDIENCE)
        assert _login(openbao, mount, "web", oidc.mint(good))["lease_duration"] == 900
        # The same names from an org re-created under the freed login: a new owner id.
        recreated = {**good, "repository_owner_id": "99999999"}
        assert _refused(openbao, mount, "web", oidc.mint(recreated))
        # A job of the team's repository on a GitHub-hosted runner (self_hosted_only).
        hosted = {**good, "runner_environment": "github-hosted"}
        assert _refused(openbao, mount, "web", oidc.mint(hosted))
        # A token the job asked for AWS is no Vault token.
        for_aws = {**good, "aud": "sts.amazonaws.com"}
        assert _refused(openbao, mount, "web", oidc.mint(for_aws))


def test_a_deploy_role_logs_in_from_main_and_production_only(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    """infra lists both refs and environments: Vault binds both claims (AND), because an
    either-or ``sub`` glob alone lets a workflow named like an allowed context through."""
    oidc = github_ghes.oidc
    with applied_vault(openbao, github_cloud, github_ghes) as (suffix, _):
        mount = f"jwt-ghes-{suffix}"

        def token(**claims: Any) -> str:
            return oidc.mint(oidc.claims("platform/deploy", audience=AUDIENCE, **claims))

        deploy = token(ref="refs/heads/main", environment="production")
        assert not _refused(openbao, mount, "infra", deploy)
        assert _refused(openbao, mount, "infra", token(ref="refs/heads/main"))
        production = token(ref="refs/heads/feature", environment="production")
        assert _refused(openbao, mount, "infra", production)
        assert _refused(openbao, mount, "infra", token(ref="refs/heads/feature"))
        assert _refused(openbao, mount, "infra", token(event_name="pull_request"))
        assert _refused(openbao, mount, "infra", token(environment="staging"))
        # The review's attack: a feature branch, a workflow named like main's context.
        crafted = {
            **oidc.claims("platform/deploy", audience=AUDIENCE, ref="refs/heads/feature"),
            "sub": "repo:platform/deploy:ref:refs/heads/feature"
            ":workflow:deploy:ref:refs/heads/main",
        }
        assert _refused(openbao, mount, "infra", oidc.mint(crafted))


def test_with_refs_only_a_workflow_name_cannot_pose_as_the_ref(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    """Vault has no StringNotLike: where only refs are listed, the 'ref' claim itself is
    bound, so a custom sub template that ends in a crafted workflow name gets nothing."""
    document = copy.deepcopy(DEV_DOCUMENT)
    next(t for t in document["teams"] if t["name"] == "infra")["environments"] = []
    oidc = github_ghes.oidc
    with applied_vault(openbao, github_cloud, github_ghes, load_spec(document)) as (suffix, _):
        mount = f"jwt-ghes-{suffix}"
        main = oidc.claims("platform/deploy", audience=AUDIENCE)
        assert not _refused(openbao, mount, "infra", oidc.mint(main))
        crafted = {
            **oidc.claims("platform/deploy", audience=AUDIENCE, ref="refs/heads/evil"),
            "sub": "repo:platform/deploy:workflow:x:ref:refs/heads/main",
        }
        assert _refused(openbao, mount, "infra", oidc.mint(crafted))


def test_another_teams_vault_policy_would_hand_over_its_secrets(
    openbao: OpenBao, github_cloud: GitHubEmulator, github_ghes: GitHubEmulator
) -> None:
    """Why the model refuses ``vault_policies: [runner-web]`` on team ml: applied past the
    model, ml's jobs read web's secrets."""
    document = copy.deepcopy(DEV_DOCUMENT)
    next(t for t in document["teams"] if t["name"] == "ml")["vault_policies"] = ["runner-web"]
    with pytest.raises(SpecError, match="'runner-web' is team 'web''s policy"):
        load_spec(document)
    spec = dev_spec()
    teams = tuple(
        t.model_copy(update={"vault_policies": ("runner-web",)}) if t.name == "ml" else t
        for t in spec.teams
    )
    root: Any = openbao.client()
    root.secrets.kv.v2.create_or_update_secret(
        path="runners/web/shared/deploy-key", secret={"k": "web"}
    )
    with applied_vault(
        openbao, github_cloud, github_ghes, spec.model_copy(update={"teams": teams})
    ) as (suffix, _):
        oidc = github_ghes.oidc
        token = oidc.mint(oidc.claims("research/models", audience=AUDIENCE))
        ml = hvac.Client(
            url=openbao.address,
            token=_login(openbao, f"jwt-ghes-{suffix}", "ml", token)["client_token"],
        )
        read = ml.secrets.kv.v2.read_secret_version(
            path="runners/web/shared/deploy-key", raise_on_deleted_version=True
        )
        assert read["data"]["data"] == {"k": "web"}
