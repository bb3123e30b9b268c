"""IAM documents: trust pinned to the team's repositories; Karpenter scoped to its nodes."""

from __future__ import annotations

from typing import Any

from components import iam_documents as docs
from controller.model import PlatformSpec

ACCOUNT = "111122223333"


def _team(spec: PlatformSpec, name: str) -> Any:
    return next(t for t in spec.teams if t.name == name)


def test_cloud_team_trust_pins_audience_ids_and_both_subject_forms(
    dev_spec: PlatformSpec,
) -> None:
    web = _team(dev_spec, "web")
    trust = docs.github_runner_trust_policy(dev_spec.instance("cloud"), web, ACCOUNT)
    (statement,) = trust["Statement"]
    assert statement["Principal"]["Federated"] == (
        f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
    )
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"]["StringEquals"] == {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com"
    }
    # The id form pins the org's id always and the repository's id for an exact name; a
    # prefix glob ('web-*') needs no guard, so there is no StringNotLike.
    assert statement["Condition"]["StringLike"] == {
        "token.actions.githubusercontent.com:sub": [
            "repo:acme-corp/storefront:*",
            "repo:acme-corp@700624/storefront@26679908:*",
            "repo:acme-corp/web-*:*",
            "repo:acme-corp@700624/web-*@*:*",
        ]
    }
    assert "StringNotLike" not in statement["Condition"]


def test_ghes_team_trust_uses_the_server_issuer_and_plain_subjects(
    dev_spec: PlatformSpec,
) -> None:
    ml = _team(dev_spec, "ml")
    trust = docs.github_runner_trust_policy(dev_spec.instance("ghes"), ml, ACCOUNT)
    (statement,) = trust["Statement"]
    key = "github.acme.internal/_services/token"
    assert statement["Principal"]["Federated"].endswith(f":oidc-provider/{key}")
    assert statement["Condition"]["StringLike"] == {
        f"{key}:sub": ["repo:research/models:*", "repo:research/training-*:*"]
    }


def test_irsa_trust_names_one_service_account() -> None:
    trust = docs.irsa_trust_policy("arn:aws:iam::1:oidc-provider/x", "x", "kube-system", "karp")
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    assert condition == {
        "x:aud": "sts.amazonaws.com",
        "x:sub": "system:serviceaccount:kube-system:karp",
    }


def test_karpenter_writes_are_scoped_to_this_cluster() -> None:
    policy = docs.karpenter_controller_policy(
        cluster_name="c1",
        region="us-west-2",
        account_id=ACCOUNT,
        node_role_arn="arn:aws:iam::1:role/node",
        queue_arn="arn:aws:sqs:us-west-2:1:c1",
    )
    write_prefixes = ("ec2:Run", "ec2:Create", "ec2:Terminate", "ec2:Delete", "iam:")
    for statement in policy["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        writes = [a for a in actions if a.startswith(write_prefixes)]
        resources = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        assert "*" not in resources or not writes, statement["Sid"]
        if any(a.startswith(("ec2:Terminate", "ec2:Delete")) for a in writes):
            assert statement["Condition"]["StringEquals"] == {
                "aws:ResourceTag/kubernetes.io/cluster/c1": "owned"
            }
    pass_role = next(s for s in policy["Statement"] if s["Sid"] == "AllowPassingInstanceRole")
    # The shared node role and the isolated pools' own (KarpenterNodeRole-<cluster>.<pool>).
    assert pass_role["Resource"] == [
        "arn:aws:iam::1:role/node",
        f"arn:aws:iam::{ACCOUNT}:role/KarpenterNodeRole-c1.*",
    ]


def test_cloudwatch_permission_is_limited_to_one_namespace() -> None:
    (statement,) = docs.cloudwatch_metrics_policy("RunnerPlatform")["Statement"]
    assert statement["Action"] == "cloudwatch:PutMetricData"
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "RunnerPlatform"}}


def test_karpenter_tags_instances_only_for_this_cluster() -> None:
    # Upstream's v1 controller policy (AllowScopedResourceTagging): a tag request that names
    # a cluster must name this one.
    policy = docs.karpenter_controller_policy(
        cluster_name="c1",
        region="us-west-2",
        account_id=ACCOUNT,
        node_role_arn="arn:aws:iam::1:role/node",
        queue_arn="arn:aws:sqs:us-west-2:1:c1",
    )
    tagging = next(s for s in policy["Statement"] if s["Sid"] == "AllowScopedResourceTagging")
    assert tagging["Condition"]["StringEqualsIfExists"] == {
        "aws:RequestTag/eks:eks-cluster-name": "c1"
    }
    assert tagging["Condition"]["StringEquals"] == {
        "aws:ResourceTag/kubernetes.io/cluster/c1": "owned"
    }
