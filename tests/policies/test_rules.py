"""Each pack rule: a compliant case passes, a violation reports, a missing property is handled.

Policies are called directly with hand-built ResourceValidationArgs, as Pulumi's own
guidance for testing policy packs does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pulumi_policy import ResourceValidationPolicy

from policies.evaluate import check
from policies.rules import (
    cilium_encryption,
    eks_endpoint_not_open,
    github_oidc_trust,
    no_iam_users,
    nodeclass_runner_cap,
    nodepool_limits,
    role_session_limit,
    vault_token_ttl,
)

ROLE = "aws:iam/role:Role"
GITHUB = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
GHES = "arn:aws:iam::1:oidc-provider/ghe.example.com/_services/token"


def trust(federated: str, condition: dict[str, Any] | None) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Federated": federated},
        "Action": "sts:AssumeRoleWithWebIdentity",
    }
    if condition is not None:
        statement["Condition"] = condition
    return {"assumeRolePolicy": json.dumps({"Version": "2012-10-17", "Statement": [statement]})}


SCOPED = {
    "StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
    "StringLike": {"token.actions.githubusercontent.com:sub": ["repo:acme/web:*"]},
}
NODE_CLASS_OK = {
    "metadata": {
        "annotations": {
            "runner-platform.io/max-runners": "10",
            "runner-platform.io/daemonset-pods": "4",
        }
    },
    "spec": {
        "kubelet": {"maxPods": 14.0},
        "metadataOptions": {"httpPutResponseHopLimit": 1.0, "httpTokens": "required"},
    },
}

CASES: list[tuple[str, ResourceValidationPolicy, str, dict[str, Any], list[str]]] = [
    # (case, policy, type, props, expected messages)
    ("scoped trust", github_oidc_trust, ROLE, trust(GITHUB, SCOPED), []),
    (
        "no sub",
        github_oidc_trust,
        ROLE,
        trust(GITHUB, {"StringEquals": SCOPED["StringEquals"]}),
        [
            "trusts the GitHub OIDC provider without a 'sub' condition: any repository on GitHub "
            "could assume it"
        ],
    ),
    (
        "bare wildcard",
        github_oidc_trust,
        ROLE,
        trust(
            GHES,
            {
                "StringEquals": {"ghe.example.com/_services/token:aud": "sts.amazonaws.com"},
                "StringLike": {"ghe.example.com/_services/token:sub": "*"},
            },
        ),
        ["trusts GitHub OIDC subjects that match any owner: ['*']"],
    ),
    (
        "owner wildcard",
        github_oidc_trust,
        ROLE,
        trust(
            GITHUB,
            {**SCOPED, "StringLike": {"token.actions.githubusercontent.com:sub": ["repo:*/web:*"]}},
        ),
        ["trusts GitHub OIDC subjects that match any owner: ['repo:*/web:*']"],
    ),
    (
        "no condition at all",
        github_oidc_trust,
        ROLE,
        trust(GITHUB, None),
        [
            "trusts the GitHub OIDC provider without a 'sub' condition: any repository on GitHub "
            "could assume it",
            "trusts the GitHub OIDC provider without an 'aud' condition",
        ],
    ),
    (
        "other provider untouched",
        github_oidc_trust,
        ROLE,
        trust("arn:aws:iam::1:oidc-provider/oidc.eks.us-west-2.amazonaws.com/id/X", None),
        [],
    ),
    ("trust unknown in preview", github_oidc_trust, ROLE, {}, []),
    (
        "user",
        no_iam_users,
        "aws:iam/user:User",
        {"name": "ci"},
        [
            "aws:iam/user:User creates a long-lived credential; runners and the controller use "
            "OIDC and IRSA roles only"
        ],
    ),
    (
        "access key",
        no_iam_users,
        "aws:iam/accessKey:AccessKey",
        {},
        [
            "aws:iam/accessKey:AccessKey creates a long-lived credential; runners and the "
            "controller use OIDC and IRSA roles only"
        ],
    ),
    ("a role is fine", no_iam_users, ROLE, {}, []),
    ("one hour session", role_session_limit, ROLE, {"maxSessionDuration": 3600.0}, []),
    (
        "twelve hour session",
        role_session_limit,
        ROLE,
        {"maxSessionDuration": 43200.0},
        ["maxSessionDuration is 43200 s; at most 3600 s"],
    ),
    ("default session", role_session_limit, ROLE, {}, []),
    (
        "limited pool",
        nodepool_limits,
        "kubernetes:karpenter.sh/v1:NodePool",
        {"spec": {"limits": {"cpu": "10", "memory": "40Gi"}}},
        [],
    ),
    (
        "unlimited pool",
        nodepool_limits,
        "kubernetes:karpenter.sh/v1:NodePool",
        {"spec": {}},
        ["NodePool has no spec.limits: it could grow without bound"],
    ),
    (
        "cpu-only pool",
        nodepool_limits,
        "kubernetes:karpenter.sh/v1:NodePool",
        {"spec": {"limits": {"cpu": "10"}}},
        ["NodePool spec.limits lacks ['memory']"],
    ),
    (
        "capped node class",
        nodeclass_runner_cap,
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        NODE_CLASS_OK,
        [],
    ),
    (
        "eleven runners",
        nodeclass_runner_cap,
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        {
            **NODE_CLASS_OK,
            "metadata": {
                "annotations": {
                    "runner-platform.io/max-runners": "11",
                    "runner-platform.io/daemonset-pods": "4",
                }
            },
            "spec": {**NODE_CLASS_OK["spec"], "kubelet": {"maxPods": 15}},
        },
        [
            "11 runners per node; at most 10",
            "kubelet.maxPods is 15; at most 10 runners + 4 DaemonSet pods",
        ],
    ),
    (
        "default 110 pods",
        nodeclass_runner_cap,
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        {
            "spec": {
                "kubelet": {"maxPods": 110},
                "metadataOptions": {"httpPutResponseHopLimit": 1, "httpTokens": "required"},
            }
        },
        ["kubelet.maxPods is 110; at most 10 runners + 8 DaemonSet pods"],
    ),
    (
        "no kubelet, hop limit 2",
        nodeclass_runner_cap,
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        {"spec": {"metadataOptions": {"httpPutResponseHopLimit": 2, "httpTokens": "optional"}}},
        [
            "EC2NodeClass has no spec.kubelet.maxPods: the per-node runner cap is unset",
            "metadataOptions.httpPutResponseHopLimit is 2; must be 1 so pods cannot reach the "
            "node's instance metadata",
            "metadataOptions.httpTokens must be 'required' (IMDSv2 only)",
        ],
    ),
    (
        "wireguard",
        cilium_encryption,
        "kubernetes:helm.sh/v3:Release",
        {"chart": "cilium", "values": {"encryption": {"enabled": True, "type": "wireguard"}}},
        [],
    ),
    (
        "ipsec",
        cilium_encryption,
        "kubernetes:helm.sh/v3:Release",
        {"chart": "cilium", "values": {"encryption": {"enabled": True, "type": "ipsec"}}},
        ["Cilium encryption type is 'ipsec'; the platform uses 'wireguard'"],
    ),
    (
        "no values",
        cilium_encryption,
        "kubernetes:helm.sh/v3:Release",
        {"chart": "cilium"},
        ["Cilium release does not enable transparent encryption"],
    ),
    ("other chart", cilium_encryption, "kubernetes:helm.sh/v3:Release", {"chart": "karpenter"}, []),
    (
        "private endpoint",
        eks_endpoint_not_open,
        "eks:index:Cluster",
        {"endpointPublicAccess": False},
        [],
    ),
    (
        "listed cidrs",
        eks_endpoint_not_open,
        "eks:index:Cluster",
        {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
        [],
    ),
    (
        "open to all",
        eks_endpoint_not_open,
        "aws:eks/cluster:Cluster",
        {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}},
        [
            "the EKS API endpoint is public and open to 0.0.0.0/0; restrict publicAccessCidrs or "
            "set allowPublicFromAnywhere in the policy config"
        ],
    ),
    (
        "nothing said means open",
        eks_endpoint_not_open,
        "eks:index:Cluster",
        {},
        [
            "the EKS API endpoint is public and open to 0.0.0.0/0; restrict publicAccessCidrs or "
            "set allowPublicFromAnywhere in the policy config"
        ],
    ),
    (
        "short ttl",
        vault_token_ttl,
        "runner-platform:vault:VaultAuth",
        {"roles": [{"name": "a", "tokenTtl": 900.0, "tokenMaxTtl": 3600.0}]},
        [],
    ),
    (
        "day-long ttl",
        vault_token_ttl,
        "runner-platform:vault:VaultAuth",
        {"roles": [{"name": "a", "tokenTtl": 900, "tokenMaxTtl": 86400}]},
        ["Vault role 'a' tokenMaxTtl is 86400 s; at most 3600 s"],
    ),
    (
        "ttl missing",
        vault_token_ttl,
        "runner-platform:vault:VaultAuth",
        {"roles": [{"name": "a", "tokenMaxTtl": 600}]},
        ["Vault role 'a' has no tokenTtl: Vault would apply its system default (32 days)"],
    ),
    (
        "jwt role resource",
        vault_token_ttl,
        "pulumi-python:dynamic:Resource",
        {"roleType": "jwt", "name": "b", "tokenTtl": 7200, "tokenMaxTtl": 3600},
        ["Vault role 'b' tokenTtl is 7200 s; at most 3600 s"],
    ),
]


@pytest.mark.parametrize(
    ("policy", "resource_type", "props", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rule(
    policy: ResourceValidationPolicy, resource_type: str, props: dict[str, Any], expected: list[str]
) -> None:
    assert check(policy, resource_type, "r", props) == expected


def test_open_endpoint_allowed_by_policy_config() -> None:
    props = {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}
    assert (
        check(
            eks_endpoint_not_open,
            "eks:index:Cluster",
            "r",
            props,
            {"allowPublicFromAnywhere": True},
        )
        == []
    )


def test_daemonset_allowance_is_configurable() -> None:
    props = {
        **NODE_CLASS_OK,
        "metadata": {
            "annotations": {
                "runner-platform.io/max-runners": "10",
                "runner-platform.io/daemonset-pods": "4",
            }
        },
    }
    assert check(
        nodeclass_runner_cap,
        "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
        "r",
        props,
        {"maxDaemonSetPods": 3},
    ) == [
        "4 DaemonSet pods declared; the allowance is 3",
        "kubelet.maxPods is 14; at most 10 runners + 3 DaemonSet pods",
    ]
