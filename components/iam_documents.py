"""IAM policy documents, built as plain dicts from plain values.

Every document here is least privilege by construction and tested without an engine:
trust policies always pin ``aud`` and ``sub``; the Karpenter controller policy follows
the scoping of Karpenter's own CloudFormation reference (resources tagged for this
cluster and a node pool only).
"""

from __future__ import annotations

from typing import Any

from components.oidc_subjects import team_subjects
from controller.model import STS_AUDIENCE as STS_AUDIENCE  # components name it from here
from controller.model import GitHubInstance, Team

Document = dict[str, Any]


def issuer_host_path(issuer: str) -> str:
    """The issuer without its scheme: how IAM names the provider and its condition keys."""
    return issuer.removeprefix("https://")


def oidc_provider_arn(account_id: str, issuer: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account_id}:oidc-provider/{issuer_host_path(issuer)}"


def github_runner_trust_policy(
    instance: GitHubInstance, team: Team, account_id: str, partition: str = "aws"
) -> Document:
    """Trust for ``github-runner-<team>-role``: only the team's repositories, only STS.

    ``StringNotLike`` guards (ANDed) keep each ``*`` of the allow list inside the slot it
    was written for; components/oidc_subjects.py shows why each is needed.
    """
    key = issuer_host_path(instance.oidc_issuer)
    subjects = team_subjects(instance, team)
    condition: dict[str, dict[str, Any]] = {
        "StringEquals": {f"{key}:aud": STS_AUDIENCE},
        "StringLike": {f"{key}:sub": subjects.allow},
    }
    if subjects.deny:
        condition["StringNotLike"] = {f"{key}:sub": subjects.deny}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "GitHubActionsOidc",
                "Effect": "Allow",
                "Principal": {
                    "Federated": oidc_provider_arn(account_id, instance.oidc_issuer, partition)
                },
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": condition,
            }
        ],
    }


def irsa_trust_policy(
    provider_arn: str, issuer_host: str, namespace: str, service_account: str
) -> Document:
    """Trust for a pod's ServiceAccount through the cluster's own OIDC provider (IRSA)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer_host}:aud": STS_AUDIENCE,
                        f"{issuer_host}:sub": (
                            f"system:serviceaccount:{namespace}:{service_account}"
                        ),
                    }
                },
            }
        ],
    }


def service_trust_policy(service: str) -> Document:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }


def karpenter_controller_policy(
    *,
    cluster_name: str,
    region: str,
    account_id: str,
    node_role_arn: str,
    queue_arn: str,
    partition: str = "aws",
) -> Document:
    """What Karpenter may do: launch and end only this cluster's node-pool instances."""
    ec2 = f"arn:{partition}:ec2:{region}"
    owned = f"kubernetes.io/cluster/{cluster_name}"
    request_tags = {
        "StringEquals": {
            f"aws:RequestTag/{owned}": "owned",
            "aws:RequestTag/eks:eks-cluster-name": cluster_name,
        },
        "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
    }
    resource_tags = {
        "StringEquals": {f"aws:ResourceTag/{owned}": "owned"},
        "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
    }
    launched = [
        f"{ec2}:*:{kind}/*"
        for kind in (
            "fleet",
            "instance",
            "volume",
            "network-interface",
            "launch-template",
            "spot-instances-request",
        )
    ]
    profile = f"arn:{partition}:iam::{account_id}:instance-profile/*"
    profile_request_tags = {
        "StringEquals": {
            f"aws:RequestTag/{owned}": "owned",
            "aws:RequestTag/eks:eks-cluster-name": cluster_name,
            "aws:RequestTag/topology.kubernetes.io/region": region,
        },
        "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
    }
    profile_resource_tags = {
        "StringEquals": {
            f"aws:ResourceTag/{owned}": "owned",
            "aws:ResourceTag/topology.kubernetes.io/region": region,
        },
        "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"},
    }
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowScopedEC2InstanceAccessActions",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
                "Resource": [
                    f"{ec2}::image/*",
                    f"{ec2}::snapshot/*",
                    f"{ec2}:*:security-group/*",
                    f"{ec2}:*:subnet/*",
                    f"{ec2}:*:capacity-reservation/*",
                ],
            },
            {
                "Sid": "AllowScopedEC2LaunchTemplateAccessActions",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
                "Resource": f"{ec2}:*:launch-template/*",
                "Condition": resource_tags,
            },
            {
                "Sid": "AllowScopedEC2InstanceActionsWithTags",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
                "Resource": launched,
                "Condition": request_tags,
            },
            {
                "Sid": "AllowScopedResourceCreationTagging",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": launched,
                "Condition": {
                    **request_tags,
                    "StringEquals": {
                        **request_tags["StringEquals"],
                        "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"],
                    },
                },
            },
            {
                "Sid": "AllowScopedResourceTagging",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": f"{ec2}:*:instance/*",
                "Condition": {
                    **resource_tags,
                    # Upstream's v1 controller policy: a tag request naming the cluster must
                    # name this one (karpenter-provider-aws, getting-started cloudformation).
                    "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                    "ForAllValues:StringEquals": {
                        "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]
                    },
                },
            },
            {
                "Sid": "AllowScopedDeletion",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
                "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
                "Condition": resource_tags,
            },
            {
                "Sid": "AllowRegionalReadActions",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeCapacityReservations",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeSubnets",
                ],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Sid": "AllowSSMReadActions",
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*",
            },
            {
                "Sid": "AllowPricingReadActions",
                "Effect": "Allow",
                "Action": "pricing:GetProducts",
                "Resource": "*",
            },
            {
                "Sid": "AllowInterruptionQueueActions",
                "Effect": "Allow",
                "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
                "Resource": queue_arn,
            },
            {
                "Sid": "AllowPassingInstanceRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                # The shared node role, and each isolated pool's own role, named
                # KarpenterNodeRole-<cluster>.<pool> (components/node_pools.py); a '.'
                # never appears in a cluster name, so no other cluster's roles match.
                "Resource": [
                    node_role_arn,
                    f"arn:{partition}:iam::{account_id}:role/KarpenterNodeRole-{cluster_name}.*",
                ],
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
            {
                "Sid": "AllowScopedInstanceProfileCreationActions",
                "Effect": "Allow",
                "Action": ["iam:CreateInstanceProfile"],
                "Resource": profile,
                "Condition": profile_request_tags,
            },
            {
                "Sid": "AllowScopedInstanceProfileTagActions",
                "Effect": "Allow",
                "Action": ["iam:TagInstanceProfile"],
                "Resource": profile,
                "Condition": {
                    "StringEquals": {
                        **profile_resource_tags["StringEquals"],
                        **profile_request_tags["StringEquals"],
                    },
                    "StringLike": {
                        **profile_resource_tags["StringLike"],
                        **profile_request_tags["StringLike"],
                    },
                },
            },
            {
                "Sid": "AllowScopedInstanceProfileActions",
                "Effect": "Allow",
                "Action": [
                    "iam:AddRoleToInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile",
                ],
                "Resource": profile,
                "Condition": profile_resource_tags,
            },
            {
                "Sid": "AllowInstanceProfileReadActions",
                "Effect": "Allow",
                "Action": ["iam:GetInstanceProfile", "iam:ListInstanceProfiles"],
                "Resource": profile,
            },
            {
                "Sid": "AllowAPIServerEndpointDiscovery",
                "Effect": "Allow",
                "Action": "eks:DescribeCluster",
                "Resource": f"arn:{partition}:eks:{region}:{account_id}:cluster/{cluster_name}",
            },
        ],
    }


def interruption_queue_policy(queue_arn: str) -> Document:
    """Only EventBridge and SQS itself may send to the interruption queue, only over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EventBridgeWrite",
                "Effect": "Allow",
                "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
            },
            {
                "Sid": "DenyHTTP",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def cloudwatch_metrics_policy(namespace: str) -> Document:
    """The controller may publish metrics, and only into its own namespace."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublishRunnerMetrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": namespace}},
            }
        ],
    }
