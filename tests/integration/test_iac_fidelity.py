"""Every Kubernetes object the infrastructure builders produce is accepted by a real API
server carrying the real CRDs, with strict field validation (server-side dry run)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components import controller_manifests, node_pools, observability
from controller.model import PlatformSpec
from localenv.dry_run import Rejected, submit
from localenv.kube import ControlPlane


def _objects(spec: PlatformSpec) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        node_pools.warm_namespace(),
        node_pools.placeholder_priority_class(),
    ]
    for pool in spec.pools:
        objects += node_pools.pool_objects(spec, pool, "KarpenterNodeRole-runners-dev")
    spec_json = spec.model_dump_json()
    objects += controller_manifests.controller_objects(
        spec,
        controller_role_arn="arn:aws:iam::123456789012:role/runner-controller",
        spec_json=spec_json,
        runtime_json="{}",
        hash_value=controller_manifests.config_hash(spec_json, "{}"),
    )
    objects += [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": spec.observability.namespace},
        },
        observability.dashboard_config_map(spec),
    ]
    return objects


@pytest.fixture(scope="module")
def accepted(kube_api: ControlPlane, dev_spec_module: PlatformSpec) -> dict[str, dict[str, Any]]:
    """Namespaces are created for real (objects in them need them); the rest is dry run."""
    api = kube_api.api_client()
    results: dict[str, dict[str, Any]] = {}
    for manifest in _objects(dev_spec_module):
        key = (
            f"{manifest['kind']}/{manifest['metadata'].get('namespace', '')}/"
            f"{manifest['metadata']['name']}"
        )
        if manifest["kind"] == "Namespace":
            try:
                submit(api, manifest, dry_run=False)
            except Rejected as error:
                if error.status != 409:
                    raise
            results[key] = manifest
        else:
            results[key] = submit(api, manifest, dry_run=True)
    return results


@pytest.fixture(scope="module")
def dev_spec_module() -> PlatformSpec:
    from controller.model import load_spec
    from tests.conftest import DEV_DOCUMENT

    return load_spec(copy.deepcopy(DEV_DOCUMENT))


def test_every_builder_object_is_accepted(accepted: dict[str, dict[str, Any]]) -> None:
    kinds = {key.split("/")[0] for key in accepted}
    assert {
        "NodePool",
        "EC2NodeClass",
        "PriorityClass",
        "Deployment",
        "DaemonSet",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
    } <= kinds


def test_server_keeps_the_runner_cap_and_imds_settings(
    accepted: dict[str, dict[str, Any]],
) -> None:
    node_class = accepted["EC2NodeClass//gpu"]
    assert node_class["spec"]["kubelet"]["maxPods"] == 9
    assert node_class["spec"]["metadataOptions"]["httpPutResponseHopLimit"] == 1
    node_pool = accepted["NodePool//gpu"]
    assert node_pool["spec"]["limits"]["nvidia.com/gpu"] == "16"
    assert (
        node_pool["spec"]["template"]["spec"]["startupTaints"][0]["key"]
        == "node.cilium.io/agent-not-ready"
    )


def test_a_misspelt_field_is_rejected(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    """The check above can fail: strict validation refuses what the CRD does not know."""
    manifest = node_pools.ec2_node_class(dev_spec_module, dev_spec_module.pool("warm"), "role")
    manifest["spec"]["metadataOptions"]["httpPutResponseHopLimt"] = 1
    with pytest.raises(
        Rejected, match=r'unknown field "spec.metadataOptions.httpPutResponseHopLimt"'
    ):
        submit(kube_api.api_client(), manifest)


def test_kubelet_typos_pass_the_api_server_so_the_policy_pack_guards_max_pods(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    """EC2NodeClass v1.15 keeps spec.kubelet free-form (Karpenter validates it later, into a
    status condition), so a misspelt maxPods would silently drop the per-node cap. The
    policy pack is the guard that catches it before anything reaches the cluster."""
    from policies.evaluate import check
    from policies.rules import nodeclass_runner_cap

    manifest = node_pools.ec2_node_class(dev_spec_module, dev_spec_module.pool("warm"), "role")
    manifest["spec"]["kubelet"] = {"maxPod": 15}
    submit(kube_api.api_client(), manifest)  # accepted by the server
    assert check(
        nodeclass_runner_cap, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "warm", manifest
    ) == ["EC2NodeClass has no spec.kubelet.maxPods: the per-node runner cap is unset"]


def test_a_wrong_enum_value_is_rejected(
    kube_api: ControlPlane, dev_spec_module: PlatformSpec
) -> None:
    manifest = node_pools.node_pool(dev_spec_module, dev_spec_module.pool("warm"))
    manifest["spec"]["disruption"]["consolidationPolicy"] = "Sometimes"
    with pytest.raises(Rejected, match="consolidationPolicy"):
        submit(kube_api.api_client(), manifest)
