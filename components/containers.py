"""What work volumes need from the cloud: the EBS CSI driver (an EKS add-on with its IRSA
role) for gp3 work volumes, and the OpenEBS local provisioner for work volumes on the
instance store of NVMe pools. Each only when a hook-mode pool uses it; the Kubernetes
objects themselves (classes, Roles, quotas, the admission policy) come with the
controller's (components/container_manifests.py)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import container_manifests as manifests
from components.cluster import Cluster
from controller.model import PlatformSpec

EBS_ADDON = "aws-ebs-csi-driver"
EBS_NAMESPACE = "kube-system"
EBS_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
OPENEBS_CHART = "localpv-provisioner"
OPENEBS_REPO = "https://openebs.github.io/dynamic-localpv-provisioner"
OPENEBS_VERSION = "4.1.1"
OPENEBS_NAMESPACE = "openebs"


def ebs_policy_arn(partition: str) -> str:
    return f"arn:{partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"


def openebs_values() -> dict[str, Any]:
    """The provisioner runs on the system nodes; its helper pods (which create and delete
    each volume's directory) go to the volume's node and tolerate that node's taints.
    The platform declares its own StorageClass (runner-work-nvme), so the chart's stays off."""
    return {
        "analytics": {"enabled": False},
        "hostpathClass": {"enabled": False},
        "localpv": {"nodeSelector": {"runner-platform.io/system": "true"}},
    }


class WorkVolumeStorage(pulumi.ComponentResource):
    """Provisioners for the runners' work volumes."""

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        cluster: Cluster,
        partition: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:containers:WorkVolumeStorage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        outputs: dict[str, Any] = {}
        if manifests.ebs_pools(spec):
            role = aws.iam.Role(
                f"{name}-ebs-csi",
                assume_role_policy=cluster.irsa_trust(EBS_NAMESPACE, EBS_SERVICE_ACCOUNT),
                max_session_duration=3600,
                tags=spec.cluster.tags,
                opts=child,
            )
            aws.iam.RolePolicyAttachment(
                f"{name}-ebs-csi", role=role.name, policy_arn=ebs_policy_arn(partition), opts=child
            )
            addon = aws.eks.Addon(
                f"{name}-ebs-csi",
                cluster_name=spec.cluster.name,
                addon_name=EBS_ADDON,
                service_account_role_arn=role.arn,
                tags=spec.cluster.tags,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster.eks_cluster]),
            )
            outputs["ebs_addon"] = addon.addon_name
        if manifests.nvme_pools(spec):
            k8s.helm.v3.Release(
                f"{name}-openebs",
                name="openebs-localpv",
                chart=OPENEBS_CHART,
                version=OPENEBS_VERSION,
                namespace=OPENEBS_NAMESPACE,
                create_namespace=True,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=OPENEBS_REPO),
                values=openebs_values(),
                opts=pulumi.ResourceOptions(parent=self, provider=cluster.provider),
            )
            outputs["openebs"] = OPENEBS_CHART
        self.register_outputs(outputs)
