"""The exposure objects a real API server (with Karpenter's CRDs) accepts under strict
field validation: an isolated pool's node class with its own role and security group, the
controller's node affinity, TLS on the Ingress, the controller's NetworkPolicy from the
load balancer's blocks, runner egress for an existing VPC, the default accounts."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from components import controller_manifests, node_pools
from controller.model import PlatformSpec, load_spec
from localenv.dry_run import Rejected, submit
from localenv.kube import ControlPlane
from tests.conftest import DEV_DOCUMENT


def _existing_vpc_spec() -> PlatformSpec:
    document = copy.deepcopy(DEV_DOCUMENT)
    document["cluster"]["vpc"] = {
        "vpc_id": "vpc-0abc1234",
        "private_subnet_ids": ["subnet-a", "subnet-b"],
        "cidrs": ["10.40.0.0/16", "100.64.0.0/16", "2600:1f14:abc::/56"],
    }
    return load_spec(document)


def _accepted(kube_api: ControlPlane, manifest: dict[str, Any]) -> dict[str, Any]:
    api = kube_api.api_client()
    namespace = manifest["metadata"].get("namespace")
    if namespace:
        try:
            submit(
                api,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                dry_run=False,
            )
        except Rejected as error:
            if error.status != 409:
                raise
    renamed = copy.deepcopy(manifest)
    # The default account exists in every namespace: validate the same object by another
    # name (the program applies it as a patch).
    renamed["metadata"]["name"] = f"{manifest['metadata']['name']}-exposure"[:63]
    return submit(api, renamed, dry_run=True)


def test_an_isolated_node_class_with_its_own_role_and_group_is_accepted(
    kube_api: ControlPlane,
) -> None:
    spec = load_spec(copy.deepcopy(DEV_DOCUMENT))
    pool = spec.pool("ml-isolated")
    manifest = node_pools.ec2_node_class(
        spec,
        pool,
        node_pools.isolated_node_role_name(spec.cluster.name, pool.name),
        ["sg-0123456789abcdef0"],
    )
    stored = _accepted(kube_api, manifest)
    assert stored["spec"]["role"] == "KarpenterNodeRole-runners-dev.ml-isolated"
    assert stored["spec"]["securityGroupSelectorTerms"] == [{"id": "sg-0123456789abcdef0"}]


def test_a_node_class_with_a_malformed_group_id_is_rejected(kube_api: ControlPlane) -> None:
    """The check above can fail: Karpenter's CRD validates the id's form."""
    spec = load_spec(copy.deepcopy(DEV_DOCUMENT))
    manifest = node_pools.ec2_node_class(spec, spec.pool("ml-isolated"), "r", ["not-a-group"])
    with pytest.raises(Rejected):
        _accepted(kube_api, manifest)


@pytest.mark.parametrize("existing_vpc", [False, True], ids=["created vpc", "existing vpc"])
def test_the_exposure_objects_are_accepted(kube_api: ControlPlane, existing_vpc: bool) -> None:
    spec = _existing_vpc_spec() if existing_vpc else load_spec(copy.deepcopy(DEV_DOCUMENT))
    deployment = _accepted(kube_api, controller_manifests.deployment(spec, "hash"))
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"} in term["matchExpressions"]
    ingress = _accepted(kube_api, controller_manifests.ingress(spec))
    assert ingress["spec"]["tls"] == [{"hosts": ["runners-dev.acme.example"]}]
    for policy in controller_manifests.network_policies(spec):
        stored = _accepted(kube_api, policy)
        if policy["metadata"]["name"] == "runner-egress":
            block = stored["spec"]["egress"][1]["to"][0]["ipBlock"]
            assert block["except"][0] == "169.254.0.0/16"
            assert set(spec.cluster.vpc.all_cidrs) - set(block["except"]) <= {"2600:1f14:abc::/56"}
    accounts = controller_manifests.service_accounts(spec, "arn:aws:iam::1:role/c")
    for account in accounts:
        if account["metadata"]["name"] == "default":
            assert _accepted(kube_api, account)["automountServiceAccountToken"] is False


def _create(api: Any, manifest: dict[str, Any]) -> None:
    try:
        submit(api, manifest, dry_run=False)
    except Rejected as error:
        if error.status != 409:
            raise


def test_a_node_cannot_relabel_itself_to_draw_the_controller(kube_api: ControlPlane) -> None:
    """A kubelet of a broken-into runner node tries to make its Node look like a system
    node; the admission policy refuses, and lets its other label changes through."""
    from kubernetes import client

    admin = kube_api.api_client()
    for manifest in controller_manifests.node_label_guard():
        _create(admin, manifest)
    name = "exposure-runner-node"
    user = f"system:node:{name}"
    _create(
        admin,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "exposure-kubelet"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["nodes"],
                    "verbs": ["get", "patch", "update"],
                }
            ],
        },
    )
    _create(
        admin,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "exposure-kubelet"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "exposure-kubelet",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )
    _create(
        admin,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "warm", "pool": "warm"}},
        },
    )
    kubelet = kube_api.api_client()
    kubelet.set_default_header("Impersonate-User", user)
    kubelet.set_default_header("Impersonate-Group", "system:nodes")
    nodes = client.CoreV1Api(kubelet)
    # The policy is enforced once the API server has loaded it: wait for the first refusal.
    attempts = [
        {"metadata": {"labels": {"runner-platform.io/system": "true"}}},
        {"metadata": {"labels": {"karpenter.sh/nodepool": None}}},
        {"metadata": {"labels": {"karpenter.sh/nodepool": "other"}}},
    ]
    for patch in attempts:
        refused = None
        for _ in range(50):
            try:
                nodes.patch_node(name, patch)
            except client.ApiException as error:
                refused = error
                break
            # Not yet enforced: undo and retry.
            client.CoreV1Api(admin).patch_node(
                name,
                {
                    "metadata": {
                        "labels": {
                            "runner-platform.io/system": None,
                            "karpenter.sh/nodepool": "warm",
                        }
                    }
                },
            )
            time.sleep(0.2)
        assert refused is not None, patch
        assert refused.status == 403
        assert "a node may not change its runner-platform.io/system or karpenter.sh/nodepool" in (
            refused.body
        )
    # The same kubelet may still change a label the controller does not depend on.
    nodes.patch_node(name, {"metadata": {"labels": {"pool": "warm", "team-note": "x"}}})
    stored = client.CoreV1Api(admin).read_node(name).metadata.labels
    assert stored["karpenter.sh/nodepool"] == "warm"
    assert "runner-platform.io/system" not in stored
    # An administrator (not a kubelet) still labels nodes as it needs.
    client.CoreV1Api(admin).patch_node(
        name, {"metadata": {"labels": {"karpenter.sh/nodepool": "gpu"}}}
    )
    assert client.CoreV1Api(admin).read_node(name).metadata.labels["karpenter.sh/nodepool"] == (
        "gpu"
    )
