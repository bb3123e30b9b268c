"""Bypasses an adversarial review of the hardening demonstrated, each now refused — by the
model where it can see the problem, and by the pack on the resource inputs alone."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controller.model import SpecError, load_spec
from policies.evaluate import check
from policies.rules import github_oidc_trust, vault_role_scoped
from policies.rules.iam import escalation_policy
from tests.conftest import DEV_DOCUMENT

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
