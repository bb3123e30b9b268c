"""KWOK nodes built for a spec's pools carry the capacity runner pods ask for: the real
scheduler places a team's ephemeral storage and a GPU runner where the platform would."""

from __future__ import annotations

import uuid

from kubernetes import client

from localenv.kube import ControlPlane
from localenv.kube_objects import GPU_RESOURCE, pool_node
from localenv.process import wait_for
from tests.integration.kube_support import pod, small_spec, team_requests, unschedulable_message


def _node_of(core: client.CoreV1Api, name: str) -> str | None:
    found = core.read_namespaced_pod(name, "default")
    return found.spec.node_name if found.status.phase == "Running" else None


def test_the_teams_ephemeral_storage_fits_the_pool_root_volume_and_nvme_takes_more(
    kube_nodes: ControlPlane,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    spec = small_spec(suffix)
    general, _, nvme = spec.pools
    team = spec.teams[0]
    assert team.resources.ephemeral_storage == "20Gi"  # the default every runner asks for
    core = client.CoreV1Api(kube_nodes.api_client())
    for pool in (general, nvme):
        core.create_node(pool_node(spec, pool, f"{pool.name}-node"))

    core.create_namespaced_pod(
        "default", pod(f"runner-{suffix}", "default", team_requests(team), pool=general)
    )
    assert wait_for(lambda: _node_of(core, f"runner-{suffix}"), 60, "runner Running") == (
        f"{general.name}-node"
    )

    # 200Gi is more than the pool's 100Gi gp3 root volume: the capacity is real, not open.
    big = {**team_requests(team), "ephemeral-storage": "200Gi"}
    core.create_namespaced_pod("default", pod(f"big-{suffix}", "default", big, pool=general))
    message = wait_for(
        lambda: unschedulable_message(core, f"big-{suffix}"), 60, "scheduler verdict"
    )
    assert "Insufficient ephemeral-storage" in message

    # The NVMe pool's RAID0 instance store (3750Gi on an i4i.4xlarge) holds it.
    core.create_namespaced_pod("default", pod(f"big-nvme-{suffix}", "default", big, pool=nvme))
    assert wait_for(lambda: _node_of(core, f"big-nvme-{suffix}"), 60, "NVMe runner Running") == (
        f"{nvme.name}-node"
    )


def test_a_gpu_runner_lands_on_the_gpu_pool_node_and_nowhere_else(
    kube_nodes: ControlPlane,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    spec = small_spec(suffix)
    general, gpu, _ = spec.pools
    team = spec.teams[0]
    core = client.CoreV1Api(kube_nodes.api_client())
    core.create_node(pool_node(spec, general, f"{general.name}-node"))
    core.create_node(pool_node(spec, gpu, f"{gpu.name}-node"))
    node = core.read_node(f"{gpu.name}-node")
    assert node.status.allocatable[GPU_RESOURCE] == "1"  # a g6.xlarge has one L4
    assert node.metadata.labels["node.kubernetes.io/instance-type"] == "g6.xlarge"
    assert node.metadata.labels["karpenter.sh/nodepool"] == gpu.name

    wants_gpu = {**team_requests(team), GPU_RESOURCE: str(gpu.gpus_per_runner)}
    # No node selector: only the GPU resource (and the taints it tolerates) picks the node.
    gpu_runner = pod(f"gpu-{suffix}", "default", wants_gpu, pool=gpu)
    gpu_runner["spec"]["nodeSelector"] = {}
    core.create_namespaced_pod("default", gpu_runner)
    assert wait_for(lambda: _node_of(core, f"gpu-{suffix}"), 60, "GPU runner Running") == (
        f"{gpu.name}-node"
    )

    # Its one GPU is taken: a second GPU runner waits rather than land on a general node.
    second = pod(f"gpu-2-{suffix}", "default", wants_gpu, pool=gpu)
    second["spec"]["nodeSelector"] = {}
    core.create_namespaced_pod("default", second)
    message = wait_for(
        lambda: unschedulable_message(core, f"gpu-2-{suffix}"), 60, "scheduler verdict"
    )
    assert f"Insufficient {GPU_RESOURCE}" in message
    assert core.read_namespaced_pod(f"gpu-2-{suffix}", "default").spec.node_name is None

    # Other runners stay off GPU nodes: without the pool's tolerations the taints refuse.
    plain = pod(f"plain-{suffix}", "default", team_requests(team), pool=gpu)
    plain["spec"]["tolerations"] = []
    core.create_namespaced_pod("default", plain)
    message = wait_for(
        lambda: unschedulable_message(core, f"plain-{suffix}"), 60, "scheduler verdict"
    )
    assert "untolerated taint" in message
