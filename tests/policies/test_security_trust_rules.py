"""The pack's trust rules on their own (issue 9, items 3, 4 and 12): what the model
already refuses is refused here too, on the resource inputs alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pulumi_policy import ResourceValidationPolicy

from components.iam_documents import github_runner_trust_policy
from components.vault import vault_config
from controller.model import PlatformSpec
from policies.evaluate import check
from policies.rules import github_oidc_trust, team_role_no_escalation, vault_role_scoped

ROLE = "aws:iam/role:Role"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
VAULT_AUTH = "runner-platform:vault:VaultAuth"
GITHUB = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
KEY = "token.actions.githubusercontent.com"
AUD = {"StringEquals": {f"{KEY}:aud": "sts.amazonaws.com"}}
ANY_OWNER = "trusts GitHub OIDC subjects that match any owner: "
NO_SUB = (
    "trusts the GitHub OIDC provider without a 'sub' condition: any repository on GitHub "
    "could assume it"
)


def _trust(condition: dict[str, Any], **statement: Any) -> dict[str, Any]:
    body = {
        "Effect": "Allow",
        "Principal": {"Federated": GITHUB},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": condition,
        **statement,
    }
    return {"assumeRolePolicy": json.dumps({"Version": "2012-10-17", "Statement": [body]})}


def _sub(*values: str, operator: str = "StringLike") -> dict[str, Any]:
    return {**AUD, operator: {f"{KEY}:sub": list(values)}}


TRUST_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("scoped, id form pinned", _trust(_sub("repo:acme@700624/web@*:*")), []),
    ("star colon star", _trust(_sub("*:*")), [f"{ANY_OWNER}['*:*']"]),
    (
        "no repo prefix",
        _trust(_sub("*/*:ref:refs/heads/main")),
        [f"{ANY_OWNER}['*/*:ref:refs/heads/main']"],
    ),
    (
        "wildcard inside the owner",
        _trust(_sub("repo:acme*/web:*")),
        [f"{ANY_OWNER}['repo:acme*/web:*']"],
    ),
    (
        "owner id not pinned",
        _trust(_sub("repo:acme@*/web@*:*")),
        [
            "trusts id-form GitHub OIDC subjects without the owner's id: ['repo:acme@*/web@*:*']; "
            "IAM's '*' there runs across '/' and ':' into other repositories' and re-created "
            "orgs' subjects (write repo:OWNER@<id>/…)"
        ],
    ),
    (
        "StringNotEquals is no scope",
        _trust(_sub("repo:evil/x:*", operator="StringNotEquals")),
        [NO_SUB],
    ),
    ("StringNotLike is no scope", _trust(_sub("repo:evil/*", operator="StringNotLike")), [NO_SUB]),
    (
        "IfExists is no scope",
        _trust(_sub("repo:acme/web:*", operator="StringLikeIfExists")),
        [NO_SUB],
    ),
    ("action glob", _trust(AUD, Action="sts:AssumeRoleWith*"), [NO_SUB]),
    ("action caseless", _trust(AUD, Action="STS:AssumeRoleWithWebIdentity"), [NO_SUB]),
    ("not-action", _trust(AUD, NotAction="s3:*", Action=None), [NO_SUB]),
    ("another action", _trust(AUD, Action="sts:TagSession"), []),
    (
        "any audience",
        _trust({"StringLike": {f"{KEY}:aud": "*", f"{KEY}:sub": "repo:acme/web:*"}}),
        [
            "trusts GitHub OIDC tokens of any audience: ['*']; a token minted for another "
            "service (Vault) would assume the role"
        ],
    ),
]


@pytest.mark.parametrize(
    ("props", "expected"), [c[1:] for c in TRUST_CASES], ids=[c[0] for c in TRUST_CASES]
)
def test_trust_rule(props: dict[str, Any], expected: list[str]) -> None:
    document = json.loads(props["assumeRolePolicy"])
    document["Statement"][0] = {k: v for k, v in document["Statement"][0].items() if v is not None}
    props = {"assumeRolePolicy": json.dumps(document)}
    assert check(github_oidc_trust, ROLE, "r", props) == expected


def test_every_rendered_team_trust_passes(dev_spec: PlatformSpec) -> None:
    for team in dev_spec.teams:
        trust = github_runner_trust_policy(dev_spec.instance(team.instance), team, "1")
        assert check(github_oidc_trust, ROLE, team.name, {"assumeRolePolicy": trust}) == []


# --- escalation policies on team roles ---------------------------------------------------

ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def _escalation(props: dict[str, Any], kind: str = ATTACHMENT, config: Any = None) -> list[str]:
    return check(team_role_no_escalation, kind, "r", props, config)


def test_escalation_policies_on_team_roles_are_refused() -> None:
    assert _escalation({"role": "github-runner-web-role", "policyArn": ADMIN}) == [
        f"attaches {ADMIN} to team role 'github-runner-web-role': AdministratorAccess reaches "
        "past the team in a shared account (IAM, or every instance, secret or key of it); a "
        "stack that must allows it in its policy config ('allow': role, policyArn and a reason)"
    ]
    for arn in (
        "arn:aws:iam::aws:policy/IAMFullAccess",
        "arn:aws:iam::aws:policy/PowerUserAccess",
        "arn:aws:iam::aws:policy/job-function/SystemAdministrator",
        "arn:aws-us-gov:iam::aws:policy/AdministratorAccess",
        "arn:aws:iam::123456789012:policy/AdministratorAccess",  # a copy by the same name
    ):
        assert _escalation({"role": "github-runner-web-role", "policyArn": arn}), arn
    by_arn = {"role": "arn:aws:iam::1:role/github-runner-web-role", "policyArn": ADMIN}
    assert _escalation(by_arn)
    group = {"roles": ["KarpenterNodeRole-x", "github-runner-ml-role"], "policyArn": ADMIN}
    assert len(_escalation(group, "aws:iam/policyAttachment:PolicyAttachment")) == 1
    inline = {"name": "github-runner-ml-role", "managedPolicyArns": [ADMIN]}
    assert len(_escalation(inline, ROLE)) == 1


def test_other_policies_and_other_roles_are_not_this_rules_business() -> None:
    s3 = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    assert _escalation({"role": "github-runner-web-role", "policyArn": s3}) == []
    assert _escalation({"role": "KarpenterNodeRole-x", "policyArn": ADMIN}) == []
    assert _escalation({"policyArn": ADMIN}) == []  # the role is not known in this preview


def test_a_stack_allows_one_escalation_on_the_record() -> None:
    props = {"role": "github-runner-infra-role", "policyArn": ADMIN}
    allow = {"role": "github-runner-infra-role", "policyArn": ADMIN, "reason": "bootstrap, #12"}
    assert _escalation(props, config={"allow": [allow]}) == []
    assert _escalation(props, config={"allow": [{**allow, "reason": " "}]})  # no reason
    web = {**props, "role": "github-runner-web-role"}
    assert _escalation(web, config={"allow": [allow]})  # another role is not allowed


# --- Vault roles -------------------------------------------------------------------------


def _vault(roles: list[dict[str, Any]]) -> list[str]:
    return check(vault_role_scoped, VAULT_AUTH, "vault", {"roles": roles})


def _role(**changes: Any) -> dict[str, Any]:
    role = {
        "name": "ml",
        "boundAudiences": ["runner-platform-vault"],
        "boundClaimsType": "glob",
        "boundClaims": {"repository": ["research/models"], "repository_owner_id": ["5039426"]},
        "tokenPolicies": ["runner-ml", "ml-datasets-read"],
        "tokenTtl": 900,
        "tokenMaxTtl": 3600,
    }
    return {**role, **changes}


def test_the_rendered_vault_roles_pass(dev_spec: PlatformSpec) -> None:
    assert _vault(vault_config(dev_spec)["roles"]) == []


VAULT_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "another team's policy",
        _role(tokenPolicies=["runner-ml", "runner-web"]),
        "Vault role 'ml' gives its tokens 'runner-web', a platform policy that is not its own "
        "('runner-ml'): another team's secrets",
    ),
    ("root", _role(tokenPolicies=["root"]), "Vault role 'ml' gives its tokens the 'root' policy"),
    (
        "any repository",
        _role(boundClaims={"repository": "*", "repository_owner_id": ["5"]}),
        "Vault role 'ml' binds repositories of any owner: ['*']",
    ),
    (
        "any owner",
        _role(boundClaims={"repository": ["*/models"], "repository_owner_id": ["5"]}),
        "Vault role 'ml' binds repositories of any owner: ['*/models']",
    ),
    (
        "no repository",
        _role(boundClaims={"repository_owner_id": ["5"]}),
        "Vault role 'ml' binds no 'repository' claim: any repository of the issuer could log in",
    ),
    (
        "owner id not pinned",
        _role(boundClaims={"repository": ["research/models"]}),
        "Vault role 'ml' does not pin 'repository_owner_id' to the org's id (unbound): an org "
        "re-created under the same name would log in",
    ),
    (
        "owner id glob",
        _role(boundClaims={"repository": ["research/models"], "repository_owner_id": ["*"]}),
        "Vault role 'ml' does not pin 'repository_owner_id' to the org's id (['*']): an org "
        "re-created under the same name would log in",
    ),
    (
        "STS audience",
        _role(boundAudiences=["sts.amazonaws.com"]),
        "Vault role 'ml' binds the AWS STS audience 'sts.amazonaws.com': a token a job asks "
        "for AWS would log in to Vault too",
    ),
    (
        "wildcard audience",
        _role(boundAudiences=["*"]),
        "Vault role 'ml' binds audiences with a wildcard: ['*']",
    ),
    (
        "no audience",
        _role(boundAudiences=[]),
        "Vault role 'ml' binds no audience: a token for any service logs in",
    ),
]


@pytest.mark.parametrize(
    ("role", "message"), [c[1:] for c in VAULT_CASES], ids=[c[0] for c in VAULT_CASES]
)
def test_vault_role_rule(role: dict[str, Any], message: str) -> None:
    assert _vault([role]) == [message]


def test_the_rule_reads_each_jwt_role_resource_too() -> None:
    props = {**_role(tokenPolicies=["runner-web"]), "roleType": "jwt", "kind": "jwt-role"}
    messages = check(vault_role_scoped, "pulumi-python:dynamic:Resource", "role", props)
    assert messages == [
        "Vault role 'ml' gives its tokens 'runner-web', a platform policy that is not its own "
        "('runner-ml'): another team's secrets"
    ]


def test_policies_are_exported_for_the_pack() -> None:
    for policy in (github_oidc_trust, team_role_no_escalation, vault_role_scoped):
        assert isinstance(policy, ResourceValidationPolicy)


def test_vault_is_reached_over_https_only() -> None:
    props = {"address": "http://vault:8200", "roles": []}
    assert check(vault_role_scoped, VAULT_AUTH, "vault", props) == [
        "Vault address 'http://vault:8200' is not https: jobs' GitHub tokens and their Vault "
        "tokens would cross the network in clear"
    ]
    mount = {"kind": "jwt-mount", "address": "http://vault:8200", "path": "jwt-x"}
    assert len(check(vault_role_scoped, "pulumi-python:dynamic:Resource", "m", mount)) == 1
    assert check(vault_role_scoped, VAULT_AUTH, "v", {**props, "address": "https://v"}) == []
