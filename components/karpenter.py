"""Karpenter: its IRSA role, the node role, the interruption queue and the Helm release."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import iam_documents
from components.cluster import Cluster, node_policy_arns
from controller.model import ClusterSettings

KARPENTER_CHART = "oci://public.ecr.aws/karpenter/karpenter"
KARPENTER_NAMESPACE = "kube-system"
KARPENTER_SERVICE_ACCOUNT = "karpenter"
QUEUE_RETENTION_SECONDS = 300


def interruption_rules() -> dict[str, dict[str, Any]]:
    """EventBridge patterns Karpenter reacts to (REFERENCE.md, Karpenter v1)."""
    return {
        "health": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
        "spot": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
        "rebalance": {
            "source": ["aws.ec2"],
            "detail-type": ["EC2 Instance Rebalance Recommendation"],
        },
        "state-change": {
            "source": ["aws.ec2"],
            "detail-type": ["EC2 Instance State-change Notification"],
        },
    }


def helm_values(cluster_name: str, queue_name: Any, role_arn: Any) -> dict[str, Any]:
    """Chart values: cluster and queue, IRSA, and never on the nodes it manages itself.

    Only keys the chart defines, no nulls (tests/integration/test_helm_charts.py renders
    them with the real chart at ``karpenter_version``; docs/helm.md)."""
    return {
        "settings": {"clusterName": cluster_name, "interruptionQueue": queue_name},
        "serviceAccount": {
            "name": KARPENTER_SERVICE_ACCOUNT,
            "annotations": {"eks.amazonaws.com/role-arn": role_arn},
        },
        "replicas": 2,
        "nodeSelector": {"runner-platform.io/system": "true"},
        "controller": {
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"memory": "1Gi"},
            }
        },
    }


class Karpenter(pulumi.ComponentResource):
    """Everything Karpenter needs to launch and retire runner nodes for one cluster."""

    node_role_name: pulumi.Output[str]
    queue_name: pulumi.Output[str]
    release: k8s.helm.v3.Release

    def __init__(
        self,
        name: str,
        settings: ClusterSettings,
        cluster: Cluster,
        account_id: str,
        partition: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:karpenter:Karpenter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags
        node_role = aws.iam.Role(
            f"{name}-node",
            name=f"KarpenterNodeRole-{settings.name}",
            assume_role_policy=pulumi.Output.json_dumps(
                iam_documents.service_trust_policy("ec2.amazonaws.com")
            ),
            tags=tags,
            opts=child,
        )
        for index, arn in enumerate(node_policy_arns(partition)):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{index}", role=node_role.name, policy_arn=arn, opts=child
            )
        aws.eks.AccessEntry(
            f"{name}-node",
            cluster_name=settings.name,
            principal_arn=node_role.arn,
            type="EC2_LINUX",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster.eks_cluster]),
        )
        queue = aws.sqs.Queue(
            f"{name}-interruptions",
            name=settings.name,
            message_retention_seconds=QUEUE_RETENTION_SECONDS,
            sqs_managed_sse_enabled=True,
            tags=tags,
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruptions",
            queue_url=queue.url,
            policy=queue.arn.apply(
                lambda arn: json.dumps(iam_documents.interruption_queue_policy(arn))
            ),
            opts=child,
        )
        for rule_name, pattern in interruption_rules().items():
            rule = aws.cloudwatch.EventRule(
                f"{name}-{rule_name}",
                event_pattern=pulumi.Output.json_dumps(pattern),
                tags=tags,
                opts=child,
            )
            aws.cloudwatch.EventTarget(
                f"{name}-{rule_name}",
                rule=rule.name,
                arn=queue.arn,
                target_id="karpenter",
                opts=child,
            )
        controller_role = aws.iam.Role(
            f"{name}-controller",
            name=f"KarpenterController-{settings.name}",
            assume_role_policy=cluster.irsa_trust(KARPENTER_NAMESPACE, KARPENTER_SERVICE_ACCOUNT),
            max_session_duration=3600,
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-controller",
            role=controller_role.id,
            policy=pulumi.Output.all(node_role.arn, queue.arn).apply(
                lambda args: json.dumps(
                    iam_documents.karpenter_controller_policy(
                        cluster_name=settings.name,
                        region=settings.region,
                        account_id=account_id,
                        node_role_arn=args[0],
                        queue_arn=args[1],
                        partition=partition,
                    )
                )
            ),
            opts=child,
        )
        self.release = k8s.helm.v3.Release(
            f"{name}-chart",
            name="karpenter",
            chart=KARPENTER_CHART,
            version=settings.karpenter_version,
            namespace=KARPENTER_NAMESPACE,
            values=helm_values(settings.name, queue.name, controller_role.arn),
            opts=pulumi.ResourceOptions(parent=self, provider=cluster.provider),
        )
        self.node_role_name = node_role.name
        self.queue_name = queue.name
        self.register_outputs({"node_role_name": self.node_role_name, "queue": self.queue_name})
