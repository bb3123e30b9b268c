"""The control plane really schedules: KWOK runs pods, the maxPods cap holds, Karpenter
launches a node for a pending pod."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client

from localenv.kube import FINISH_ANNOTATION, ControlPlane
from localenv.kube_objects import kwok_node
from localenv.process import wait_for


def _pod(
    name: str,
    namespace: str = "default",
    *,
    node_selector: dict[str, str] | None = None,
    cpu: str = "100m",
    tolerations: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "smoke"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector or {},
            "tolerations": tolerations or [],
            "containers": [
                {
                    "name": "runner",
                    "image": "ghcr.io/actions/actions-runner:2.329.0",
                    "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
                }
            ],
        },
    }


def _phase(core: Any, name: str, namespace: str = "default") -> str:
    return str(core.read_namespaced_pod(name, namespace).status.phase)


def test_scheduler_binds_to_a_kwok_node_and_kwok_runs_and_finishes_the_pod(
    kube_nodes: ControlPlane,
) -> None:
    api = kube_nodes.api_client()
    core = client.CoreV1Api(api)
    core.create_node(kwok_node("smoke-node-1", {"pool": "smoke"}))
    core.create_namespaced_pod("default", _pod("smoke-run", node_selector={"pool": "smoke"}))
    wait_for(lambda: _phase(core, "smoke-run") == "Running", 60, "pod Running")
    assert core.read_namespaced_pod("smoke-run", "default").spec.node_name == "smoke-node-1"
    core.patch_namespaced_pod(
        "smoke-run", "default", {"metadata": {"annotations": {FINISH_ANNOTATION: "0"}}}
    )
    wait_for(lambda: _phase(core, "smoke-run") == "Succeeded", 30, "pod Succeeded")


def test_kubelet_max_pods_caps_runners_per_node(kube_nodes: ControlPlane) -> None:
    """DESIGN.md §6: maxPods = runners + DaemonSet pods, so the 11th runner waits."""
    api = kube_nodes.api_client()
    core = client.CoreV1Api(api)
    daemonsets, runners = 4, 10
    pool = f"cap-{uuid.uuid4().hex[:6]}"
    core.create_node(kwok_node(f"{pool}-node", {"pool": pool}, pods=runners + daemonsets))
    for index in range(daemonsets):  # stand-ins for aws-node, kube-proxy, cilium, envoy
        daemon = _pod(f"{pool}-ds-{index}")
        daemon["spec"]["nodeName"] = f"{pool}-node"  # bound up front, as daemon pods are
        core.create_namespaced_pod("default", daemon)
    for index in range(runners + 2):
        core.create_namespaced_pod(
            "default", _pod(f"{pool}-runner-{index}", node_selector={"pool": pool})
        )

    def placed() -> tuple[int, int] | None:
        pods = core.list_namespaced_pod("default", label_selector="app=smoke").items
        mine = [p for p in pods if p.metadata.name.startswith(f"{pool}-runner-")]
        bound = sum(1 for p in mine if p.spec.node_name)
        waiting = sum(
            1
            for p in mine
            if not p.spec.node_name
            and any(c.reason == "Unschedulable" for c in (p.status.conditions or []))
        )
        return (bound, waiting) if bound + waiting == len(mine) else None

    assert wait_for(placed, 60, "every runner bound or unschedulable") == (runners, 2)


def test_karpenter_launches_a_node_for_a_pending_pod(kube_karpenter: ControlPlane) -> None:
    api = kube_karpenter.api_client()
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    custom.create_cluster_custom_object(
        "karpenter.kwok.sh",
        "v1alpha1",
        "kwoknodeclasses",
        {
            "apiVersion": "karpenter.kwok.sh/v1alpha1",
            "kind": "KWOKNodeClass",
            "metadata": {"name": "default"},
        },
    )
    custom.create_cluster_custom_object(
        "karpenter.sh",
        "v1",
        "nodepools",
        {
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodePool",
            "metadata": {"name": "warm"},
            "spec": {
                "template": {
                    "metadata": {"labels": {"pool": "warm"}},
                    "spec": {
                        "nodeClassRef": {
                            "group": "karpenter.kwok.sh",
                            "kind": "KWOKNodeClass",
                            "name": "default",
                        },
                        "requirements": [
                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                            {
                                "key": "karpenter.sh/capacity-type",
                                "operator": "In",
                                "values": ["on-demand"],
                            },
                        ],
                        "expireAfter": "720h",
                    },
                },
                "limits": {"cpu": "100", "memory": "400Gi"},
                "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30s"},
            },
        },
    )
    core.create_namespaced_pod(
        "default", _pod("needs-a-node", node_selector={"pool": "warm"}, cpu="2")
    )
    claims = wait_for(
        lambda: custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims")["items"],
        120,
        "a NodeClaim",
    )
    assert claims[0]["metadata"]["labels"]["karpenter.sh/nodepool"] == "warm"
    wait_for(lambda: _phase(core, "needs-a-node") == "Running", 120, "pod Running on a new node")
    node = core.read_node(core.read_namespaced_pod("needs-a-node", "default").spec.node_name)
    assert node.metadata.labels["pool"] == "warm"
    assert node.metadata.labels["karpenter.sh/nodepool"] == "warm"
