"""Kubernetes objects for tests and the twin: fake KWOK nodes, alone or for a spec's pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.node_pools import max_pods
from controller.model import POOL_LABEL, PlatformSpec, Pool
from localenv.kube import KWOK_NODE_ANNOTATION

GPU_RESOURCE = "nvidia.com/gpu"


def kwok_node(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    cpu: str = "32",
    memory: str = "128Gi",
    ephemeral_storage: str = "100Gi",
    gpus: int = 0,
    pods: int = 110,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node that KWOK manages: it becomes Ready and runs whatever is bound to it.

    Capacity equals allocatable: a real kubelet reserves some for the system, which would
    only make a test's arithmetic harder to read.
    """
    capacity = {
        "cpu": cpu,
        "memory": memory,
        "ephemeral-storage": ephemeral_storage,
        "pods": str(pods),
    }
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)  # what the NVIDIA device plugin advertises
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass(frozen=True)
class InstanceProfile:
    """What an EC2 instance type offers a node (AWS's published figures)."""

    instance_type: str
    cpu: int
    memory_gib: int
    gpus: int = 0
    nvme_gib: int = 0  # instance-store NVMe; striped (RAID0) it becomes ephemeral storage


INSTANCE_PROFILES: dict[str, InstanceProfile] = {
    p.instance_type: p
    for p in (
        InstanceProfile("m7i.4xlarge", cpu=16, memory_gib=64),
        InstanceProfile("c7i.4xlarge", cpu=16, memory_gib=32),
        InstanceProfile("g6.xlarge", cpu=4, memory_gib=16, gpus=1, nvme_gib=250),
        InstanceProfile("g6.12xlarge", cpu=48, memory_gib=192, gpus=4, nvme_gib=3760),
        InstanceProfile("r7i.4xlarge", cpu=16, memory_gib=128),
        InstanceProfile("i4i.4xlarge", cpu=16, memory_gib=128, nvme_gib=3750),
    )
}
"""Instance types a pool node can imitate; a pool naming none of them gets its profile's."""

PROFILE_INSTANCE_TYPES: dict[str, str] = {
    "general": "m7i.4xlarge",
    "gpu": "g6.xlarge",
    "high-memory": "r7i.4xlarge",
    "nvme": "i4i.4xlarge",
}


def instance_profile(pool: Pool) -> InstanceProfile:
    """The pool's first instance type when the table knows it, else its profile's default."""
    if pool.instance_types and pool.instance_types[0] in INSTANCE_PROFILES:
        return INSTANCE_PROFILES[pool.instance_types[0]]
    return INSTANCE_PROFILES[PROFILE_INSTANCE_TYPES[pool.profile]]


def pool_node(spec: PlatformSpec, pool: Pool, name: str | None = None) -> dict[str, Any]:
    """A KWOK node as Karpenter would launch it for ``pool``: labels, taints, maxPods.

    ``pods`` is the EC2NodeClass's ``kubelet.maxPods`` (runners per node + the pool's
    DaemonSets), and ephemeral storage is the pool's root volume, or the striped NVMe
    disks when the pool uses RAID0 (Karpenter's ``instanceStorePolicy: RAID0`` puts the
    kubelet's storage there). Karpenter's Cilium startup taint is left out: no Cilium
    agent runs here to lift it.
    """
    profile = instance_profile(pool)
    storage = profile.nvme_gib if pool.raid0 and profile.nvme_gib else pool.disk_gib
    labels = {
        **pool.labels,
        POOL_LABEL: pool.name,
        "karpenter.sh/nodepool": pool.name,
        "karpenter.sh/capacity-type": pool.capacity_types[0],
        "node.kubernetes.io/instance-type": profile.instance_type,
        "kubernetes.io/arch": pool.arch,
    }
    return kwok_node(
        name or f"{pool.name}-{profile.instance_type.replace('.', '-')}",
        labels,
        cpu=str(profile.cpu),
        memory=f"{profile.memory_gib}Gi",
        ephemeral_storage=f"{storage}Gi",
        gpus=profile.gpus,
        pods=max_pods(spec, pool),
        taints=[{"key": t.key, "value": t.value, "effect": t.effect} for t in pool.node_taints()],
    )
