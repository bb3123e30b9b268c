"""Node pools: the per-node runner cap, placement rules and warm capacity."""

from __future__ import annotations

from typing import Any

import pytest

from components import node_pools as np
from controller.model import PlatformSpec, load_spec


def test_max_pods_is_runners_plus_the_daemonsets_on_that_pool(dev_spec: PlatformSpec) -> None:
    assert np.daemonset_pods(dev_spec, dev_spec.pool("warm")) == [
        "aws-node",
        "kube-proxy",
        "cilium",
        "cilium-envoy",
        "ebs-csi-node",
        "prepull-warm",
    ]
    # Container hooks on the pool: room for each runner's job pod and step pod.
    assert np.max_pods(dev_spec, dev_spec.pool("warm")) == 10 * 3 + 6
    # ml-isolated runs dind only, highmem plain runners: one pod per runner.
    assert np.max_pods(dev_spec, dev_spec.pool("ml-isolated")) == 10 + 6
    assert np.max_pods(dev_spec, dev_spec.pool("highmem")) == 4 + 5
    assert np.daemonset_pods(dev_spec, dev_spec.pool("gpu"))[-1] == "nvidia-device-plugin"
    assert np.max_pods(dev_spec, dev_spec.pool("gpu")) == 4 * 3 + 6


def test_a_pool_without_container_hooks_keeps_one_pod_per_runner(
    dev_document: dict[str, Any],
) -> None:
    for team in dev_document["teams"]:
        team["container_mode"] = "none"
        team["container_modes"] = {}
    spec = load_spec(dev_document)
    # No work volumes anywhere: no EBS CSI node plugin to count either.
    assert np.daemonset_pods(spec, spec.pool("warm")) == [
        "aws-node",
        "kube-proxy",
        "cilium",
        "cilium-envoy",
        "prepull-warm",
    ]
    assert np.max_pods(spec, spec.pool("warm")) == 10 + 5


def test_eni_mode_does_not_count_the_vpc_cni(dev_document: dict[str, Any]) -> None:
    dev_document["cluster"]["cilium_mode"] = "eni"
    spec = load_spec(dev_document)
    assert "aws-node" not in np.daemonset_pods(spec, spec.pool("highmem"))
    assert np.max_pods(spec, spec.pool("highmem")) == 4 + 4


def test_node_class_blocks_pod_access_to_instance_metadata(dev_spec: PlatformSpec) -> None:
    node_class = np.ec2_node_class(dev_spec, dev_spec.pool("warm"), "KarpenterNodeRole-x")
    spec = node_class["spec"]
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert spec["blockDeviceMappings"][0]["ebs"]["volumeType"] == "gp3"
    assert spec["kubelet"] == {"maxPods": 36}
    assert node_class["metadata"]["annotations"] == {
        "runner-platform.io/max-runners": "10",
        "runner-platform.io/daemonset-pods": "6",
        "runner-platform.io/pods-per-runner": "3",
    }
    assert "instanceStorePolicy" not in spec


def test_nvme_node_class_stripes_instance_storage(dev_spec: PlatformSpec) -> None:
    node_class = np.ec2_node_class(dev_spec, dev_spec.pool("nvme"), "r")
    assert node_class["spec"]["instanceStorePolicy"] == "RAID0"


@pytest.mark.parametrize(
    ("pool", "expected_key", "expected_values"),
    [
        ("gpu", "karpenter.k8s.aws/instance-gpu-count", ["0"]),
        ("nvme", "karpenter.k8s.aws/instance-local-nvme", ["0"]),
        ("warm", "karpenter.k8s.aws/instance-family", ["m6i", "m7i"]),
    ],
)
def test_node_pool_requirements_follow_the_profile(
    dev_spec: PlatformSpec, pool: str, expected_key: str, expected_values: list[str]
) -> None:
    manifest = np.node_pool(dev_spec, dev_spec.pool(pool))
    reqs = {r["key"]: r for r in manifest["spec"]["template"]["spec"]["requirements"]}
    assert reqs[expected_key]["values"] == expected_values


def test_gpu_node_pool_is_tainted_limited_and_labelled(dev_spec: PlatformSpec) -> None:
    manifest = np.node_pool(dev_spec, dev_spec.pool("gpu"))
    template = manifest["spec"]["template"]
    assert template["metadata"]["labels"] == {"pool": "gpu"}
    assert template["spec"]["taints"] == [
        {"key": "runner-platform.io/pool", "value": "gpu", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
    ]
    assert template["spec"]["startupTaints"] == [
        {"key": "node.cilium.io/agent-not-ready", "value": "true", "effect": "NoExecute"}
    ]
    assert manifest["spec"]["limits"] == {"cpu": "192", "memory": "768Gi", "nvidia.com/gpu": "16"}
    assert manifest["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
    # Long enough for the longest job (ml: 360 min) to drain.
    assert template["spec"]["terminationGracePeriod"] == "375m"


def test_shared_warm_pool_is_not_tainted(dev_spec: PlatformSpec) -> None:
    manifest = np.node_pool(dev_spec, dev_spec.pool("warm"))
    assert manifest["spec"]["template"]["spec"]["taints"] == []


def test_placeholders_hold_a_full_node_per_warm_node(dev_spec: PlatformSpec) -> None:
    deployment = np.placeholder_deployment(dev_spec, dev_spec.pool("warm"))
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["priorityClassName"] == np.PLACEHOLDER_PRIORITY_CLASS
    assert pod["nodeSelector"] == {"pool": "warm"}
    # web and infra use the warm pool with 2 CPU / 4Gi runners, 10 per node.
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "20000m", "memory": "40960Mi"}
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"


def test_placeholder_priority_is_negative_and_never_preempts() -> None:
    priority = np.placeholder_priority_class()
    assert priority["value"] < 0
    assert priority["preemptionPolicy"] == "Never"


def test_runner_priority_class_preempts_the_placeholders() -> None:
    runner = np.runner_priority_class()
    placeholder = np.placeholder_priority_class()
    assert runner["metadata"]["name"] == "runner-platform-runner"
    assert runner["value"] > placeholder["value"]
    assert runner["preemptionPolicy"] == "PreemptLowerPriority"
    assert runner["globalDefault"] is False
    # Below system-cluster-critical, so system pods keep their precedence.
    assert 0 < runner["value"] < 2_000_000_000


def test_prepull_covers_hook_and_sidecar_images_and_the_tool_cache(dev_spec: PlatformSpec) -> None:
    # ml's dind sidecar and tool cache go to its isolated pool's nodes, which are not warm
    # but pull its images as they join; the runner image carries the container hooks.
    assert np.prepull_images(dev_spec, dev_spec.pool("ml-isolated")) == [
        "docker.io/library/docker:28.5.1-dind",
        "ghcr.io/acme/hostedtoolcache:2025.10",
        "ghcr.io/actions/actions-runner:2.329.0",
    ]
    kinds = [m["kind"] for m in np.pool_objects(dev_spec, dev_spec.pool("ml-isolated"), "r")]
    assert kinds == ["EC2NodeClass", "NodePool", "DaemonSet"]
    assert "prepull-ml-isolated" in np.daemonset_pods(dev_spec, dev_spec.pool("ml-isolated"))
    assert np.prepull_images(dev_spec, dev_spec.pool("nvme")) == [
        "docker.io/moby/buildkit:v0.25.1-rootless",
        "ghcr.io/actions/actions-runner:2.329.0",
    ]


def test_prepull_pulls_each_runner_image_of_the_pool_once(dev_document: dict[str, Any]) -> None:
    dev_document["teams"][2]["runner_image"] = "ghcr.io/acme/runner:infra"
    spec = load_spec(dev_document)
    daemonset = np.prepull_daemonset(spec, spec.pool("warm"))
    images = [c["image"] for c in daemonset["spec"]["template"]["spec"]["initContainers"]]
    assert images == ["ghcr.io/acme/runner:infra", "ghcr.io/actions/actions-runner:2.329.0"]


def test_only_warm_pools_get_placeholders(dev_spec: PlatformSpec) -> None:
    kinds = {p.name: [m["kind"] for m in np.pool_objects(dev_spec, p, "r")] for p in dev_spec.pools}
    assert kinds["warm"] == ["EC2NodeClass", "NodePool", "Deployment", "DaemonSet"]
    assert kinds["gpu"] == ["EC2NodeClass", "NodePool"]


def test_device_plugin_tolerates_every_gpu_pool_taint(dev_spec: PlatformSpec) -> None:
    values = np.nvidia_plugin_values(dev_spec)
    assert {(t["key"], t["value"]) for t in values["tolerations"]} == {
        ("runner-platform.io/pool", "gpu"),
        ("nvidia.com/gpu", "true"),
    }


def test_device_plugin_affinity_names_the_gpu_pools_and_nothing_is_null(
    dev_document: dict[str, Any],
) -> None:
    """The chart's NFD affinity is replaced by an explicit one, never deleted with a null
    the Pulumi engine may drop (tests/integration/test_helm_charts.py proves it lands)."""
    dev_document["pools"].append(
        {**next(p for p in dev_document["pools"] if p["name"] == "gpu"), "name": "gpu-big"}
    )
    next(t for t in dev_document["teams"] if t["name"] == "ml")["pools"].append("gpu-big")
    spec = load_spec(dev_document)
    values = np.nvidia_plugin_values(spec)
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["gpu", "gpu-big"]},
                {
                    "key": "karpenter.k8s.aws/instance-gpu-manufacturer",
                    "operator": "In",
                    "values": ["nvidia"],
                },
            ]
        }
    ]
    assert "nodeSelector" not in values
    assert "None" not in repr(values)
