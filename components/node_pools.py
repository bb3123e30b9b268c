"""Karpenter node pools: EC2NodeClass + NodePool per pool, and warm capacity.

The per-node runner cap is ``kubelet.maxPods`` (DESIGN.md §6): runners per node plus the
DaemonSet pods that land on that pool's nodes. Counting a DaemonSet that does not run
would let one more runner in, so :func:`daemonset_pods` lists exactly what the platform
schedules there. Warm capacity is placeholder pods at a negative priority that real
runners preempt, plus a DaemonSet that pre-pulls the runner images.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import container_manifests
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
ANNOTATION_MAX_RUNNERS = "runner-platform.io/max-runners"
ANNOTATION_DAEMONSET_PODS = "runner-platform.io/daemonset-pods"
ANNOTATION_PODS_PER_RUNNER = "runner-platform.io/pods-per-runner"
# The EBS CSI driver's node plugin tolerates every taint: it runs on every node.
EBS_CSI_NODE = "ebs-csi-node"
POOL_KIND_LABEL = "runner-platform.io/pool-kind"
POOL_OWNER_LABEL = "runner-platform.io/owner"

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


def tolerations(pool: Pool) -> list[dict[str, str]]:
    return [
        {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}
        for t in pool.node_taints()
    ]


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


def ec2_node_class(spec: PlatformSpec, pool: Pool, node_role: Any) -> Manifest:
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
            # EKS tags the cluster security group it creates with this key; nodes in it
            # reach the control plane, CoreDNS and each other like the system nodes do.
            "securityGroupSelectorTerms": [{"tags": {"aws:eks:cluster-name": cluster}}],
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
                    "tolerations": tolerations(pool),
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
                    "tolerations": tolerations(pool),
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


def nvidia_plugin_values(spec: PlatformSpec) -> dict[str, Any]:
    gpu_pools = [pool for pool in spec.pools if pool.profile == "gpu"]
    seen: dict[tuple[str, str, str], dict[str, str]] = {}
    for pool in gpu_pools:
        for tol in tolerations(pool):
            seen[(tol["key"], tol["value"], tol["effect"])] = tol
    return {
        "nodeSelector": {"karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia"},
        "affinity": None,
        "tolerations": list(seen.values()),
    }


def pool_objects(spec: PlatformSpec, pool: Pool, node_role: Any) -> list[Manifest]:
    objects = [ec2_node_class(spec, pool, node_role), node_pool(spec, pool)]
    if pool.warm_nodes > 0:
        objects.append(placeholder_deployment(spec, pool))
    if prepulls(pool):
        objects.append(prepull_daemonset(spec, pool))
    return objects


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
            for manifest in pool_objects(spec, pool, node_role_name):
                needs_warm = manifest["kind"] in ("Deployment", "DaemonSet")
                declare(
                    manifest,
                    pulumi.ResourceOptions.merge(
                        after, pulumi.ResourceOptions(depends_on=warm if needs_warm else [])
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
