"""Bypasses an adversarial review of the hardening demonstrated, each now refused — by the
model where it can see the problem, and by the pack on the resource inputs alone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.model import SpecError, load_spec
from policies.evaluate import check
from policies.rules import github_oidc_trust, team_role_no_escalation, vault_role_scoped
from policies.rules.iam import escalation_policy
from tests.conftest import DEV_DOCUMENT
from tests.hostile_support import ROOT

ROLE = "aws:iam/role:Role"
VAULT_AUTH = "runner-platform:vault:VaultAuth"
GITHUB = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
KEY = "token.actions.githubusercontent.com"


def _refused(change: Any) -> str:
    document = copy.deepcopy(DEV_DOCUMENT)
    change(document)
    with pytest.raises(SpecError) as caught:
        load_spec(document)
    return str(caught.value)


def _ml(document: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in document["teams"] if t["name"] == "ml")


@pytest.mark.parametrize("policy", ["Runner-web", " runner-web", "Root", "runner-web\t", "a b"])
def test_vault_policy_names_vault_would_normalise_are_refused(policy: str) -> None:
    # OpenBao trims and lower-cases policy names: ' Runner-Web' logs in as runner-web.
    message = _refused(lambda d: _ml(d).__setitem__("vault_policies", [policy]))
    assert "teams[1].vault_policies[0]" in message
    assert "not a plain policy name" in message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("address", "https://vault.acme.internal@evil.example:8200", "user information"),
        ("audience", "STS.amazonaws.com", "AWS STS audience"),
        ("audience", "sts.amazonaws.com/", "AWS STS audience"),
    ],
)
def test_vault_settings_that_only_look_safe_are_refused(field: str, value: str, words: str) -> None:
    message = _refused(lambda d: d["vault"].__setitem__(field, value))
    assert f"vault.{field}" in message and words in message


def _vault(**role: Any) -> list[str]:
    base = {
        "name": "ml",
        "boundAudiences": ["runner-platform-vault"],
        "boundClaims": {"repository": ["research/models"], "repository_owner_id": ["5"]},
        "tokenPolicies": ["runner-ml"],
        "tokenTtl": 900,
        "tokenMaxTtl": 900,
    }
    props = {"address": "https://vault:8200", "roles": [{**base, **role}]}
    return check(vault_role_scoped, VAULT_AUTH, "vault", props)


@pytest.mark.parametrize("policy", ["Runner-web", " runner-web", "ROOT"])
def test_the_pack_reads_policy_names_as_vault_does(policy: str) -> None:
    assert _vault(tokenPolicies=["runner-ml", policy]) != []


def test_the_pack_refuses_a_case_variant_of_the_sts_audience() -> None:
    assert any("AWS STS audience" in m for m in _vault(boundAudiences=["STS.amazonaws.com"]))


def test_the_pack_splits_a_string_of_audiences_as_vault_does() -> None:
    # Vault stores bound_audiences="a,b" as two audiences: the second is STS's.
    messages = _vault(boundAudiences="runner-platform-vault,sts.amazonaws.com")
    assert any("binds the AWS STS audience 'sts.amazonaws.com'" in m for m in messages)


def test_the_pack_splits_a_string_of_policies_as_vault_does() -> None:
    assert _vault(tokenPolicies="default,runner-web") == [
        "Vault role 'ml' gives its tokens 'runner-web', a platform policy that is not its "
        "own ('runner-ml'): another team's secrets"
    ]
    assert _vault(tokenPolicies="runner-ml, root") == [
        "Vault role 'ml' gives its tokens the 'root' policy"
    ]


def test_the_pack_refuses_an_address_with_user_information() -> None:
    props = {"address": "https://vault.acme.internal@evil.example:8200", "roles": []}
    messages = check(vault_role_scoped, VAULT_AUTH, "vault", props)
    assert any("user information" in m for m in messages)


def _trust(principal: Any, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": principal,
        "Action": "sts:AssumeRoleWithWebIdentity",
    }
    if condition is not None:
        statement["Condition"] = condition
    return {"assumeRolePolicy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})}


@pytest.mark.parametrize("principal", ["*", {"Federated": "*"}, {"Federated": ["x", "*"]}])
def test_a_trust_open_to_any_identity_provider_is_refused(principal: Any) -> None:
    messages = check(github_oidc_trust, ROLE, "r", _trust(principal))
    assert any("trusts any principal or identity provider" in m for m in messages)


@pytest.mark.parametrize("principal", [{"AWS": "*"}, {"AWS": ["arn:aws:iam::1:root", "*"]}])
def test_a_trust_open_to_every_aws_account_is_refused(principal: Any) -> None:
    statement = {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}
    props = {"assumeRolePolicy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})}
    messages = check(github_oidc_trust, ROLE, "r", props)
    assert any("trusts any principal or identity provider" in m for m in messages)


def test_a_trust_of_one_aws_account_is_not_a_wildcard() -> None:
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::1:root"},
        "Action": "sts:AssumeRole",
    }
    props = {"assumeRolePolicy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})}
    assert check(github_oidc_trust, ROLE, "r", props) == []


def test_a_github_trust_for_another_audience_is_refused() -> None:
    condition = {
        "StringEquals": {f"{KEY}:aud": "runner-platform-vault"},
        "StringLike": {f"{KEY}:sub": "repo:acme@700624/web@1:*"},
    }
    messages = check(github_oidc_trust, ROLE, "r", _trust({"Federated": GITHUB}, condition))
    assert messages == [
        "trusts GitHub OIDC tokens minted for ['runner-platform-vault'], not "
        "'sts.amazonaws.com': a token a job asked for another service (Vault) would assume "
        "the role"
    ]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::aws:policy/AmazonS3FullAccess",
        "arn:aws:iam::aws:policy/AmazonECS_FullAccess",
        "arn:aws:iam::aws:policy/AWSCodeBuildAdminAccess",
        "arn:aws-us-gov:iam::aws:policy/job-function/SystemAdministrator",
        "arn:aws:iam::123456789012:policy/team-web-PowerUser",
    ],
)
def test_full_and_admin_access_policies_are_escalations(arn: str) -> None:
    assert escalation_policy(arn) is not None


@pytest.mark.parametrize(
    "arn",
    ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess", "arn:aws:iam::1:policy/web-deploy"],
)
def test_read_only_and_named_policies_are_not(arn: str) -> None:
    assert escalation_policy(arn) is None


def test_a_customer_copy_of_a_listed_policy_counts_in_any_case() -> None:
    arn = "arn:aws:iam::123456789012:policy/secretsmanagerreadwrite"
    assert escalation_policy(arn) == "secretsmanagerreadwrite"


ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def test_a_team_role_name_in_another_case_is_a_team_role() -> None:
    props = {"role": "GitHub-Runner-web-role", "policyArn": ADMIN}
    messages = check(
        team_role_no_escalation, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "r", props
    )
    assert len(messages) == 1
    assert "to team role 'GitHub-Runner-web-role'" in messages[0]


def test_exclusive_role_policy_attachments_are_checked() -> None:
    kind = "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive"
    props = {
        "roleName": "github-runner-ml-role",
        "policyArns": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess", ADMIN],
    }
    assert check(team_role_no_escalation, kind, "r", props) == [
        f"attaches {ADMIN} to team role 'github-runner-ml-role': AdministratorAccess reaches "
        "past the team in a shared account (IAM, or every instance, secret or key of it); a "
        "stack that must allows it in its policy config ('allow': role, policyArn and a reason)"
    ]
    by_arn = {"roleName": "arn:aws:iam::1:role/github-runner-ml-role", "policyArns": [ADMIN]}
    assert len(check(team_role_no_escalation, kind, "r", by_arn)) == 1
    other = {"roleName": "KarpenterNodeRole-x", "policyArns": [ADMIN]}
    assert check(team_role_no_escalation, kind, "r", other) == []


def test_a_policy_config_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "not-an-object.json"
    config.write_text("[1]")
    done = subprocess.run(
        [sys.executable, "-m", "localenv.plan", "--stack", "dev", "--policy-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(config) in done.stderr
    assert "not a JSON object" in done.stderr
    assert "Traceback" not in done.stderr
