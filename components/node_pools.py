"""Karpenter node pools: EC2NodeClass + NodePool per pool, and warm capacity.

The per-node runner cap is ``kubelet.maxPods`` (DESIGN.md §6): runners per node plus the
DaemonSet pods that land on that pool's nodes. Counting a DaemonSet that does not run
would let one more runner in, so :func:`daemonset_pods` lists exactly what the platform
schedules there. Warm capacity is placeholder pods at a negative priority that real
runners preempt, plus a DaemonSet that pre-pulls the runner images.

An isolated pool's nodes have an identity of their own: their own node role (a node of
another pool cannot act as them, nor they as it) and their own security group in place of
the cluster's, which admits only the pool's own nodes and, from the cluster, only what the
kubelet and Cilium need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import container_manifests, iam_documents
from components.cluster import Cluster, node_policy_arns
from components.k8s_objects import Manifest, declare
from controller.model import (
    CILIUM_STARTUP_TAINT,
    POOL_LABEL,
    RUNNER_PRIORITY_CLASS,
    PlatformSpec,
    Pool,
    Team,
)
from controller.quantity import format_cpu, format_memory, parse_quantity

WARM_NAMESPACE = "runner-platform-warm"
PLACEHOLDER_PRIORITY_CLASS = "runner-platform-placeholder"
PLACEHOLDER_PRIORITY = -10
# Named in every runner pod by the provisioner. Read through the package: the layer
# contract lets components import controller.model, not its modules.
RUNNER_PRIORITY = 1000
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
NVIDIA_PLUGIN_CHART = "nvidia-device-plugin"
NVIDIA_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
NVIDIA_PLUGIN_VERSION = "0.17.4"
# Karpenter's AWS provider labels each node with its instance type's GPU maker.
NVIDIA_GPU_MANUFACTURER_LABEL = "karpenter.k8s.aws/instance-gpu-manufacturer"
ANNOTATION_MAX_RUNNERS = "runner-platform.io/max-runners"
ANNOTATION_DAEMONSET_PODS = "runner-platform.io/daemonset-pods"
ANNOTATION_PODS_PER_RUNNER = "runner-platform.io/pods-per-runner"
# The EBS CSI driver's node plugin tolerates every taint: it runs on every node.
EBS_CSI_NODE = "ebs-csi-node"
POOL_KIND_LABEL = "runner-platform.io/pool-kind"
POOL_OWNER_LABEL = "runner-platform.io/owner"
# Karpenter's controller may pass the shared node role and exactly the roles named
# ``KarpenterNodeRole-<cluster>.*`` (components/iam_documents.py); a '.' never appears
# in a cluster name, so no other cluster's roles match.
NODE_ROLE_PREFIX = "KarpenterNodeRole-"
IAM_NAME_MAX = 64
# What crosses between an isolated pool's security group and the cluster's: (protocol,
# from port, to port, why). Everything else between them is dropped.
INTO_ISOLATED_FROM_CLUSTER: tuple[tuple[str, int, int, str], ...] = (
    ("tcp", 10250, 10250, "kubelet API (control plane: logs, exec; metrics)"),
    ("tcp", 4240, 4240, "Cilium health"),
    ("tcp", 4244, 4244, "Hubble relay to the Cilium agent"),
    ("udp", 51871, 51871, "Cilium WireGuard (pod traffic between nodes)"),
    ("icmp", -1, -1, "Cilium health (ICMP)"),
)
INTO_CLUSTER_FROM_ISOLATED: tuple[tuple[str, int, int, str], ...] = (
    ("tcp", 443, 443, "the Kubernetes API (control-plane interfaces)"),
    ("tcp", 53, 53, "CoreDNS"),
    ("udp", 53, 53, "CoreDNS"),
    ("tcp", 4240, 4240, "Cilium health"),
    ("udp", 51871, 51871, "Cilium WireGuard (pod traffic between nodes)"),
    ("icmp", -1, -1, "Cilium health (ICMP)"),
)

_PROFILE_REQUIREMENTS: dict[str, list[dict[str, Any]]] = {
    "general": [
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m"]}
    ],
    "high-memory": [
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["r", "x"]}
    ],
    "gpu": [],
    "nvme": [],
}
_PROFILE_ALWAYS: dict[str, list[dict[str, Any]]] = {
    "gpu": [{"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]}],
    "nvme": [{"key": "karpenter.k8s.aws/instance-local-nvme", "operator": "Gt", "values": ["0"]}],
}


def daemonset_pods(spec: PlatformSpec, pool: Pool) -> list[str]:
    """The DaemonSets whose pods run on every node of ``pool``."""
    names = ["kube-proxy", "cilium", "cilium-envoy"]
    if spec.cluster.cilium_mode == "chaining":
        names.insert(0, "aws-node")  # VPC CNI stays the IPAM in chaining mode
    if container_manifests.ebs_pools(spec):
        names.append(EBS_CSI_NODE)
    if prepulls(pool):
        names.append(prepull_name(pool))
    if pool.profile == "gpu":
        names.append(NVIDIA_PLUGIN_CHART)
    return names


def prepulls(pool: Pool) -> bool:
    """Warm pools, and pools with a tool cache, pull their images onto each new node."""
    return pool.warm_nodes > 0 or pool.tool_cache is not None


def max_pods(spec: PlatformSpec, pool: Pool) -> int:
    """Runners per node, each with room for its job and step pods where the pool has
    container hooks, plus the DaemonSets."""
    runner_pods = pool.max_runners_per_node * spec.pods_per_runner(pool.name)
    return runner_pods + len(daemonset_pods(spec, pool))


def _requirements(pool: Pool) -> list[dict[str, Any]]:
    reqs: list[dict[str, Any]] = [
        {"key": "kubernetes.io/arch", "operator": "In", "values": [pool.arch]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {
            "key": "karpenter.sh/capacity-type",
            "operator": "In",
            "values": list(pool.capacity_types),
        },
    ]
    if pool.instance_families:
        reqs.append(
            {
                "key": "karpenter.k8s.aws/instance-family",
                "operator": "In",
                "values": list(pool.instance_families),
            }
        )
    if pool.instance_types:
        reqs.append(
            {
                "key": "node.kubernetes.io/instance-type",
                "operator": "In",
                "values": list(pool.instance_types),
            }
        )
    if not (pool.instance_families or pool.instance_types):
        reqs.extend(_PROFILE_REQUIREMENTS[pool.profile])
    reqs.extend(_PROFILE_ALWAYS.get(pool.profile, []))
    return reqs


def isolated_node_role_name(cluster: str, pool: str) -> str:
    """``KarpenterNodeRole-<cluster>.<pool>``, the pool shortened with a digest to fit
    IAM's 64 characters."""
    base = f"{NODE_ROLE_PREFIX}{cluster}."
    room = IAM_NAME_MAX - len(base)
    if len(pool) <= room:
        return base + pool
    digest = hashlib.sha256(pool.encode()).hexdigest()
    return base + (f"{pool[: room - 9]}-{digest[:8]}" if room > 16 else digest[:room])


def security_group_terms(security_group_ids: Sequence[Any] | None, cluster: str) -> list[Any]:
    """The pool's own security groups, or the cluster's (EKS tags it with the name)."""
    if security_group_ids is None:
        # EKS tags the cluster security group it creates with this key; nodes in it
        # reach the control plane, CoreDNS and each other like the system nodes do.
        return [{"tags": {"aws:eks:cluster-name": cluster}}]
    return [{"id": group} for group in security_group_ids]


def ec2_node_class(
    spec: PlatformSpec,
    pool: Pool,
    node_role: Any,
    security_group_ids: Sequence[Any] | None = None,
) -> Manifest:
    """``node_role`` and ``security_group_ids`` are the pool's own for an isolated pool;
    without ids the nodes join the cluster security group."""
    cluster = spec.cluster.name
    tags = {**spec.cluster.tags, "runner-platform.io/pool": pool.name}
    if pool.owner:
        tags["runner-platform.io/team"] = pool.owner
    node_class: Manifest = {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {
            "name": pool.name,
            "annotations": {
                ANNOTATION_MAX_RUNNERS: str(pool.max_runners_per_node),
                ANNOTATION_DAEMONSET_PODS: str(len(daemonset_pods(spec, pool))),
                ANNOTATION_PODS_PER_RUNNER: str(spec.pods_per_runner(pool.name)),
            },
        },
        "spec": {
            "role": node_role,
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
            "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster}}],
            "securityGroupSelectorTerms": security_group_terms(security_group_ids, cluster),
            "kubelet": {"maxPods": max_pods(spec, pool)},
            "blockDeviceMappings": [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": f"{pool.disk_gib}Gi",
                        "volumeType": "gp3",
                        "iops": 3000,
                        "throughput": 125,
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ],
            "metadataOptions": {
                "httpEndpoint": "enabled",
                "httpProtocolIPv6": "disabled",
                "httpPutResponseHopLimit": 1,
                "httpTokens": "required",
            },
            "tags": tags,
        },
    }
    if pool.raid0:
        node_class["spec"]["instanceStorePolicy"] = "RAID0"
    return node_class


def _termination_grace(teams: tuple[Team, ...]) -> str:
    """Long enough for the longest job on the pool to finish before a node is forced off."""
    longest = max((team.job_timeout_minutes for team in teams), default=360)
    return f"{longest + 15}m"


def node_pool(spec: PlatformSpec, pool: Pool) -> Manifest:
    limits: dict[str, Any] = {"cpu": str(pool.limits.cpu), "memory": pool.limits.memory}
    if pool.limits.gpu is not None:
        limits["nvidia.com/gpu"] = str(pool.limits.gpu)
    body: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {**pool.labels, POOL_LABEL: pool.name}},
            "spec": {
                "nodeClassRef": {
                    "group": "karpenter.k8s.aws",
                    "kind": "EC2NodeClass",
                    "name": pool.name,
                },
                "requirements": _requirements(pool),
                "taints": [
                    {"key": t.key, "value": t.value, "effect": t.effect} for t in pool.node_taints()
                ],
                # Karpenter would keep launching nodes while Cilium is not ready yet.
                "startupTaints": [
                    {"key": CILIUM_STARTUP_TAINT, "value": "true", "effect": "NoExecute"}
                ],
                "expireAfter": pool.consolidation.expire_after,
                "terminationGracePeriod": _termination_grace(spec.teams_on_pool(pool.name)),
            },
        },
        "disruption": {
            "consolidationPolicy": pool.consolidation.policy,
            "consolidateAfter": pool.consolidation.consolidate_after,
            "budgets": [{"nodes": pool.consolidation.budget_nodes}],
        },
        "limits": limits,
    }
    if pool.weight is not None:
        body["weight"] = pool.weight
    # The policy pack tells shared from isolated pools by these labels (a privileged
    # runner container is allowed only on a pool isolated for the runner's team).
    labels: dict[str, str] = {POOL_KIND_LABEL: pool.kind}
    if pool.owner is not None:
        labels[POOL_OWNER_LABEL] = pool.owner
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": pool.name, "labels": labels},
        "spec": body,
    }


def warm_namespace() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": WARM_NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def placeholder_priority_class() -> Manifest:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": PLACEHOLDER_PRIORITY_CLASS},
        "value": PLACEHOLDER_PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "Never",
        "description": "Warm-capacity placeholders; any runner pod preempts them.",
    }


def runner_priority_class() -> Manifest:
    """Runner pods outrank the placeholders, so they preempt them on warm nodes.

    Any pod without a class (priority 0) would already preempt a placeholder; the class
    makes it explicit and independent of a cluster's globalDefault, and puts runners ahead
    of unprioritised pods in the scheduling queue. On the untainted warm pool a runner may
    also preempt a stray unprioritised pod: those nodes are there for runners. It stays
    far below system-cluster-critical (2000000000), so system pods always win.
    """
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": RUNNER_PRIORITY_CLASS},
        "value": RUNNER_PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        "description": "GitHub Actions runner pods; they preempt warm-capacity placeholders.",
    }


def placeholder_requests(spec: PlatformSpec, pool: Pool) -> dict[str, str]:
    """One placeholder holds a node big enough for a full node of the largest runners."""
    teams = spec.teams_on_pool(pool.name)
    cpu = max(parse_quantity(t.resources.cpu) for t in teams) * pool.max_runners_per_node
    memory = max(parse_quantity(t.resources.memory) for t in teams) * pool.max_runners_per_node
    return {"cpu": format_cpu(cpu), "memory": format_memory(memory)}


_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def placeholder_deployment(spec: PlatformSpec, pool: Pool) -> Manifest:
    labels = {"app.kubernetes.io/name": "warm-placeholder", POOL_LABEL: pool.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"placeholder-{pool.name}",
            "namespace": WARM_NAMESPACE,
            "labels": labels,
        },
        "spec": {
            "replicas": pool.warm_nodes,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": PLACEHOLDER_PRIORITY_CLASS,
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "nodeSelector": {POOL_LABEL: pool.name},
                    "tolerations": pool.tolerations(),
                    # One placeholder per node: that is what keeps N nodes warm.
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": labels},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "pause",
                            "image": PAUSE_IMAGE,
                            "resources": {"requests": placeholder_requests(spec, pool)},
                            "securityContext": _RESTRICTED_CONTAINER,
                        }
                    ],
                },
            },
        },
    }


def prepull_name(pool: Pool) -> str:
    return f"prepull-{pool.name}"


def prepull_images(spec: PlatformSpec, pool: Pool) -> list[str]:
    """Every image a runner on the pool starts with: the runner (it carries the container
    hooks), the buildkit and dind sidecars its teams use there, the tool cache."""
    images: set[str] = set()
    for team in spec.teams_on_pool(pool.name):
        images.add(team.runner_image)
        mode = team.mode_on(pool.name)
        if mode == "buildkit":
            images.add(team.buildkit_image)
        elif mode == "dind":
            images.add(team.dind_image)
    if pool.tool_cache is not None:
        images.add(pool.tool_cache.image)
    return sorted(images)


def prepull_daemonset(spec: PlatformSpec, pool: Pool) -> Manifest:
    """Pull every image of :func:`prepull_images` onto each node as it joins."""
    images = prepull_images(spec, pool)
    labels = {"app.kubernetes.io/name": "image-prepull", POOL_LABEL: pool.name}
    tiny = {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": prepull_name(pool), "namespace": WARM_NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "nodeSelector": {POOL_LABEL: pool.name},
                    "tolerations": pool.tolerations(),
                    "initContainers": [
                        {
                            "name": f"pull-{index}",
                            "image": image,
                            "command": ["sh", "-c", "true"],
                            "resources": tiny,
                            "securityContext": _RESTRICTED_CONTAINER,
                        }
                        for index, image in enumerate(images)
                    ],
                    "containers": [
                        {
                            "name": "pause",
                            "image": PAUSE_IMAGE,
                            "resources": tiny,
                            "securityContext": _RESTRICTED_CONTAINER,
                        }
                    ],
                },
            },
        },
    }


def nvidia_plugin_affinity(spec: PlatformSpec) -> dict[str, Any]:
    """The device plugin runs on the nodes of the spec's GPU pools that carry NVIDIA GPUs.

    The chart's default affinity asks for Node Feature Discovery labels this platform does
    not deploy, so it is replaced, not removed: a ``None`` meant to delete it may be
    dropped by the Pulumi engine before Helm sees it, leaving the default (and no plugin
    anywhere). Helm replaces lists wholesale, so this one term is the whole requirement:
    the pool label every GPU pool's NodePool puts on its nodes, and the GPU maker Karpenter
    labels a node with from its instance type (a GPU pool allowing an AMD family gets no
    NVIDIA plugin on those nodes).
    """
    gpu_pools = [pool.name for pool in spec.pools if pool.profile == "gpu"]
    term = {
        "matchExpressions": [
            {"key": POOL_LABEL, "operator": "In", "values": gpu_pools},
            {"key": NVIDIA_GPU_MANUFACTURER_LABEL, "operator": "In", "values": ["nvidia"]},
        ]
    }
    required = {"nodeSelectorTerms": [term]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def nvidia_plugin_values(spec: PlatformSpec) -> dict[str, Any]:
    """Values of the device plugin chart: only keys its values.yaml defines, no nulls
    (tests/integration/test_helm_charts.py renders them with the real chart)."""
    gpu_pools = [pool for pool in spec.pools if pool.profile == "gpu"]
    seen: dict[tuple[str, str, str], dict[str, str]] = {}
    for pool in gpu_pools:
        for tol in pool.tolerations():
            seen[(tol["key"], tol["value"], tol["effect"])] = tol
    return {
        "affinity": nvidia_plugin_affinity(spec),
        # The GPU pools' taints, replacing the chart's CriticalAddonsOnly / nvidia.com/gpu
        # Exists pair (lists are replaced whole).
        "tolerations": list(seen.values()),
    }


def pool_objects(
    spec: PlatformSpec,
    pool: Pool,
    node_role: Any,
    security_group_ids: Sequence[Any] | None = None,
) -> list[Manifest]:
    objects = [ec2_node_class(spec, pool, node_role, security_group_ids), node_pool(spec, pool)]
    if pool.warm_nodes > 0:
        objects.append(placeholder_deployment(spec, pool))
    if prepulls(pool):
        objects.append(prepull_daemonset(spec, pool))
    return objects


def _rule_suffix(protocol: str, port: int) -> str:
    return protocol if port < 0 else f"{protocol}-{port}"


class IsolatedIdentity(pulumi.ComponentResource):
    """An isolated pool's own node role (with its cluster access) and security group."""

    role_name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        pool: Pool,
        cluster: Cluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("runner-platform:node_pools:IsolatedIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**spec.cluster.tags, "runner-platform.io/pool": pool.name}
        if pool.owner is not None:
            tags["runner-platform.io/team"] = pool.owner
        role = aws.iam.Role(
            f"{name}-node",
            name=isolated_node_role_name(spec.cluster.name, pool.name),
            assume_role_policy=pulumi.Output.json_dumps(
                iam_documents.service_trust_policy("ec2.amazonaws.com")
            ),
            tags=tags,
            opts=child,
        )
        for index, arn in enumerate(node_policy_arns(cluster.partition)):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{index}", role=role.name, policy_arn=arn, opts=child
            )
        aws.eks.AccessEntry(
            f"{name}-node",
            cluster_name=spec.cluster.name,
            principal_arn=role.arn,
            type="EC2_LINUX",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster.eks_cluster]),
        )
        group = aws.ec2.SecurityGroup(
            f"{name}-nodes",
            vpc_id=cluster.vpc_id,
            description=f"Nodes of the isolated pool {pool.name} (team {pool.owner})",
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"]
                )
            ],
            tags={**tags, "Name": f"{spec.cluster.name}-{pool.name}"},
            opts=child,
        )
        aws.ec2.SecurityGroupRule(
            f"{name}-self",
            type="ingress",
            security_group_id=group.id,
            source_security_group_id=group.id,
            protocol="-1",
            from_port=0,
            to_port=0,
            description="the pool's own nodes",
            opts=child,
        )
        cluster_group = cluster.cluster_security_group_id
        directions = (
            ("from-cluster", INTO_ISOLATED_FROM_CLUSTER, group.id, cluster_group, ""),
            ("to-cluster", INTO_CLUSTER_FROM_ISOLATED, cluster_group, group.id, pool.name),
        )
        for direction, rules, into, source, isolated in directions:
            for protocol, low, high, why in rules:
                aws.ec2.SecurityGroupRule(
                    f"{name}-{direction}-{_rule_suffix(protocol, low)}",
                    type="ingress",
                    security_group_id=into,
                    source_security_group_id=source,
                    protocol=protocol,
                    from_port=low,
                    to_port=high,
                    description=f"{why}, from isolated pool {isolated}" if isolated else why,
                    opts=child,
                )
        self.role_name = role.name
        self.security_group_id = group.id
        self.register_outputs({"role": self.role_name, "security_group": self.security_group_id})


class NodePools(pulumi.ComponentResource):
    """Every pool of the spec as Karpenter objects, with warm capacity where asked."""

    pool_names: list[str]

    def __init__(
        self,
        name: str,
        spec: PlatformSpec,
        node_role_name: pulumi.Input[str],
        provider: k8s.Provider,
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
        *,
        cluster: Cluster,
    ) -> None:
        super().__init__("runner-platform:node_pools:NodePools", name, None, opts)
        after = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=depends_on)
        # Every stack runs runner pods, warm pools or not.
        declare(runner_priority_class(), after)
        warm: list[pulumi.Resource] = []
        if any(prepulls(pool) for pool in spec.pools):
            warm = [declare(warm_namespace(), after)]
        if any(pool.warm_nodes for pool in spec.pools):
            warm.append(declare(placeholder_priority_class(), after))
        for pool in spec.pools:
            role: pulumi.Input[str] = node_role_name
            groups: list[pulumi.Output[str]] | None = None
            identity_of: list[pulumi.Resource] = []
            if pool.kind == "isolated":
                identity = IsolatedIdentity(
                    f"{name}-{pool.name}",
                    spec,
                    pool,
                    cluster,
                    opts=pulumi.ResourceOptions(parent=self),
                )
                role, groups = identity.role_name, [identity.security_group_id]
                identity_of = [identity]
            for manifest in pool_objects(spec, pool, role, groups):
                needs_warm = manifest["kind"] in ("Deployment", "DaemonSet")
                declare(
                    manifest,
                    pulumi.ResourceOptions.merge(
                        after,
                        pulumi.ResourceOptions(
                            depends_on=[*identity_of, *(warm if needs_warm else [])]
                        ),
                    ),
                )
        if any(pool.profile == "gpu" for pool in spec.pools):
            k8s.helm.v3.Release(
                f"{name}-nvidia",
                name=NVIDIA_PLUGIN_CHART,
                chart=NVIDIA_PLUGIN_CHART,
                version=NVIDIA_PLUGIN_VERSION,
                namespace="kube-system",
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=NVIDIA_PLUGIN_REPO),
                values=nvidia_plugin_values(spec),
                opts=pulumi.ResourceOptions(parent=self, provider=provider),
            )
        self.pool_names = [pool.name for pool in spec.pools]
        self.register_outputs({"pools": self.pool_names})
