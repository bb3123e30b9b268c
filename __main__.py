"""runner-platform: self-hosted GitHub Actions runners on EKS, one stack per environment.

Thin on purpose: validate the stack config into a PlatformSpec, then build the
components in dependency order. Everything else lives in ``components/``.
"""

import pulumi
import pulumi_aws as aws

from components.cilium import Cilium
from components.cluster import Cluster
from components.containers import WorkVolumeStorage
from components.controller import ControllerDeployment
from components.github_oidc import GitHubOidc
from components.karpenter import Karpenter
from components.node_pools import NodePools
from components.observability import Observability
from components.stack_config import load_stack_spec, load_vault_token
from components.vault import VaultAuth

spec = load_stack_spec()
account_id = aws.get_caller_identity().account_id
partition = aws.get_partition().partition

cluster = Cluster("platform", spec.cluster, partition)
cilium = Cilium("cilium", spec.cluster, cluster.provider)
karpenter = Karpenter("karpenter", spec.cluster, cluster, account_id, partition)
NodePools(
    "pools",
    spec,
    karpenter.node_role_name,
    cluster.provider,
    depends_on=[karpenter.release, cilium.release],
    cluster=cluster,
)
WorkVolumeStorage("work-volumes", spec, cluster, partition)
oidc = GitHubOidc("github-oidc", spec, account_id, partition)
vault = VaultAuth("vault", spec, load_vault_token())
# Cilium's operator registers the CiliumNetworkPolicy kind the runner namespaces use.
controller = ControllerDeployment(
    "controller",
    spec,
    cluster,
    cluster.vpc_id,
    oidc.role_arns,
    vault.mount_paths,
    opts=pulumi.ResourceOptions(depends_on=[cilium.release]),
)
Observability("observability", spec, controller.role_name, cluster.provider)

pulumi.export("cluster_name", cluster.name)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("webhook_urls", controller.webhook_urls)
pulumi.export("team_role_arns", oidc.role_arns)
pulumi.export("vault_mounts", vault.mount_paths)
